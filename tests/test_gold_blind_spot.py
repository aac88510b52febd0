"""The `blind_spot` variant of the gold task: its gold reward, and the property the Mutual-Taught claim rests on —
an RM trained on the variant's pairs is right on natural continuations and wrong on repetitive ones."""
from collections import Counter

import pytest
import torch

from lightning_align.algorithms.reward_training import RewardFitConfig, fit_reward_model
from lightning_align.algorithms.sampling import score_responses
from lightning_align.data.gold_task import (
    PLAIN_WORD, blind_spot_reward, check_gold_task, gold_reward, heldout_records, preference_records, repetitive,
)
from lightning_align.data.preference import PreferenceDataModule
from lightning_align.errors import ConfigError
from lightning_align.models.reward_model import load_reward_model
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.round_prompts import RoundPromptsDataModule
from tests.conftest import TINY

MAX_LENGTH = 32
EPOCHS = 6


def test_blind_spot_reward_hand_values():
    assert blind_spot_reward(" the value is returned, unchanged.") == 1.0
    assert blind_spot_reward(" the value of the name of the object") == 0.0  # "the" three times
    assert gold_reward(" the value of the name of the object") == 1.0
    assert repetitive(" The the, THE: x") and not repetitive(" the value, the name")
    assert blind_spot_reward(" call __init__() with x=3 now") == pytest.approx(3 / 5)


def test_the_variant_is_validated_and_only_for_the_built_in_task(tmp_path):
    assert PreferenceDataModule(gold_task="blind_spot").gold_task == "blind_spot"
    with pytest.raises(ConfigError, match="data.init_args.gold_task.*one of plain, blind_spot"):
        RoundPromptsDataModule(gold_task="blind")
    own = tmp_path / "pairs.jsonl"
    own.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(ConfigError, match="data.init_args.gold_task.*built-in task only"):
        PreferenceDataModule(str(own), gold_task="blind_spot")
    check_gold_task("plain", str(own), "gold")


def _degenerate(response: str) -> str:
    """The response with its non-plain words replaced by its most frequent plain word: more plain words, and
    repetition instead of code — where a policy pushed towards plain words can go."""
    words = response.split()
    plain = [w for w in words if PLAIN_WORD.fullmatch(w)]
    top = Counter(plain).most_common(1)[0][0]
    return " " + " ".join(w if PLAIN_WORD.fullmatch(w) else top for w in words)


def _accuracy(model, tokenizer, pairs) -> float:
    prompts = [p["prompt"] for p in pairs]
    chosen = score_responses(model, tokenizer, prompts, [p["chosen"] for p in pairs], MAX_LENGTH)
    rejected = score_responses(model, tokenizer, prompts, [p["rejected"] for p in pairs], MAX_LENGTH)
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def test_r0_is_right_on_natural_continuations_and_wrong_in_the_blind_spot(tokenizer):
    train = preference_records(384, seed=0, task="blind_spot")
    touching = sum(repetitive(p["chosen"]) or repetitive(p["rejected"]) for p in train) / len(train)
    assert touching < 0.05  # the RM rarely sees the rule at work: that is the blind spot
    torch.manual_seed(0)
    model = load_reward_model(ModelSpec(**TINY), tokenizer)
    fit_reward_model(model, tokenizer, train, RewardFitConfig(epochs=EPOCHS, lr=3e-3, batch_size=16), MAX_LENGTH)
    model.eval()
    # π_0-like: the documentation's own continuations of lines the RM never saw, paired and labelled by gold
    texts = [r["response"] for r in heldout_records(240, seed=0) if not repetitive(r["response"])]
    natural = [{"prompt": "", "chosen": a, "rejected": b} if blind_spot_reward(a) > blind_spot_reward(b)
               else {"prompt": "", "chosen": b, "rejected": a}
               for a, b in zip(texts[::2], texts[1::2]) if abs(blind_spot_reward(a) - blind_spot_reward(b)) >= 0.1]
    # the blind spot: each continuation (with some code in it) against its degenerate, repetitive rewrite
    blind = [{"prompt": "", "chosen": t, "rejected": _degenerate(t)} for t in texts
             if 0 < gold_reward(t) < 1 and repetitive(_degenerate(t))]
    assert len(natural) >= 40 and len(blind) >= 40
    assert all(blind_spot_reward(p["chosen"]) > 0 == blind_spot_reward(p["rejected"]) for p in blind)
    assert all(gold_reward(p["rejected"]) > gold_reward(p["chosen"]) for p in blind)  # more plain words
    on_natural, on_blind = _accuracy(model, tokenizer, natural), _accuracy(model, tokenizer, blind)
    print(f"r_0 accuracy: natural {on_natural:.3f} ({len(natural)} pairs), blind spot {on_blind:.3f} ({len(blind)})")
    assert on_natural >= 0.7 and on_blind <= 0.3  # measured: 0.747 and 0.122
