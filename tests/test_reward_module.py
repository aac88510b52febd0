import math

import lightning as L
import pytest
import torch

from tests.conftest import PAIRS, write_pairs
from lightning_align.algorithms.reward_training import RewardFitConfig, fit_reward_model, pair_rewards
from lightning_align.algorithms.sampling import score_responses
from lightning_align.data.preference import PreferenceDataModule, collate_pairs
from lightning_align.errors import DataError
from lightning_align.models.reward_model import load_reward_model
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.reward import RewardModule


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     check_val_every_n_epoch=1000)


def test_fresh_head_scores_zero_and_reads_last_real_token(tiny_lm_dir, tokenizer):
    rm = load_reward_model(ModelSpec(path=str(tiny_lm_dir)), tokenizer)
    batch = collate_pairs(tokenizer, PAIRS[:2], 64)
    assert torch.equal(torch.cat(pair_rewards(rm, batch)), torch.zeros(4))
    torch.nn.init.normal_(rm.score.weight)
    batched = score_responses(rm, tokenizer, ["the quick", "a"], [" brown fox jumps over", " x"], 64)
    alone = score_responses(rm, tokenizer, ["a"], [" x"], 64)
    assert batched[1] == pytest.approx(alone[0], abs=1e-5)


def test_reward_module_learns_pairs_and_export_reloads(tmp_path, tiny_lm_dir, tokenizer):
    path = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
    module = RewardModule(ModelSpec(path=str(tiny_lm_dir)), OptimConfig(lr=1e-2, warmup_steps=0, min_lr_ratio=1.0))
    data = PreferenceDataModule(path=path, val_fraction=0.25, batch_size=4, seed=0)
    trainer = _trainer(30)
    start = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert start["val/loss"] == pytest.approx(math.log(2), abs=1e-4)
    trainer.fit(module, datamodule=data)
    end = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert end["rm/accuracy"] == 1.0 and end["rm/margin"] > 0.5
    out = module.export(tmp_path / "rm")
    reloaded = load_reward_model(ModelSpec(path=str(out)), tokenizer)
    batch = collate_pairs(tokenizer, PAIRS, 64)
    module.model.eval()
    assert torch.allclose(torch.cat(pair_rewards(reloaded, batch)), torch.cat(pair_rewards(module.model, batch)))


def test_fit_reward_model_loop_learns(tiny_lm_dir, tokenizer):
    rm = load_reward_model(ModelSpec(path=str(tiny_lm_dir)), tokenizer)
    stats = fit_reward_model(rm, tokenizer, PAIRS, RewardFitConfig(epochs=8, lr=1e-2, batch_size=4), 64)
    assert stats["accuracy"] == 1.0
    chosen, rejected = pair_rewards(rm, collate_pairs(tokenizer, PAIRS, 64))
    assert bool((chosen > rejected).all())


def test_malformed_record_names_file_and_line(tmp_path, tiny_lm_dir):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n')
    module = RewardModule(ModelSpec(path=str(tiny_lm_dir)))
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'rejected' is missing \(standard preference format\)"):
        _trainer(1).fit(module, datamodule=PreferenceDataModule(path=str(path)))
