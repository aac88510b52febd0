"""The Mutual-Taught stage on tiny models: rounds, the M-step from r_0, frozen-RM ablation, the τ stop, checkpoint
selection, reference log-probs, an exact mid-round resume, config errors."""
import copy
import shutil
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_align.algorithms.mutual_taught as mutual_taught
from lightning_align.algorithms.generation_strategies import self_aggregate
from lightning_align.algorithms.mutual_taught import (
    SELECTION, RoundConfig, candidate_pool, e_step_pairs, round_generator, selection_scores, start_round, win_rate,
)
from lightning_align.algorithms.reward_training import RewardFitConfig
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, score_responses, sequence_logprobs
from lightning_align.callbacks.gold_round_metrics import GoldRoundMetrics
from lightning_align.callbacks.mutual_taught_rounds import MutualTaughtRounds
from lightning_align.data.gold_task import gold_reward
from lightning_align.data.preference import PreferenceDataModule, collate_pairs
from lightning_align.errors import ConfigError
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.policy import PolicyModule
from lightning_align.modules.reward import TRAIN_PAIRS, RewardModule, read_saved_pairs
from lightning_align.modules.round_prompts import RoundPromptsDataModule
from tests.conftest import PAIRS, write_pairs

SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1.0)
FIT = RewardFitConfig(epochs=1, batch_size=8)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_lm_dir):
    module = RewardModule(ModelSpec(path=str(tiny_lm_dir)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.nn.init.normal_(module.model.score.weight, std=0.5)
    return module.export(tmp_path_factory.mktemp("rm") / "r0")


def _rounds(tau: float = 0.0, **kwargs) -> MutualTaughtRounds:
    return MutualTaughtRounds(num_samples=3, sampling=SAMPLING, tau=tau, checkpoints=2, fit=FIT, **kwargs)


def _module(tiny_lm_dir, rm_dir, refresh: bool = True, **kwargs) -> PolicyModule:
    return PolicyModule(ModelSpec(path=str(tiny_lm_dir)), OptimConfig(lr=5e-3, warmup_steps=0, min_lr_ratio=1.0),
                        beta=0.5, max_length=32, reward_model=str(rm_dir), reward_refresh=refresh, **kwargs)


def _run(tiny_lm_dir, rm_dir, rounds: int, tau: float = 0.0, refresh: bool = True, callbacks=None,
         batch_size: int = 4, ckpt_path=None, module=None):
    module = module or _module(tiny_lm_dir, rm_dir, refresh)
    data = RoundPromptsDataModule(policy_prompts=8, reward_prompts=8, selection_prompts=8, batch_size=batch_size)
    callbacks = callbacks or [_rounds(tau), GoldRoundMetrics(sampling=SAMPLING)]
    trainer = L.Trainer(max_epochs=rounds, accelerator="cpu", logger=False, enable_checkpointing=any(
                        isinstance(cb, ModelCheckpoint) for cb in callbacks), enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks)
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    r0 = {k: v.clone() for k, v in module.reward_model.state_dict().items()}
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, initial, r0


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_two_rounds_refresh_the_reward_model(tiny_lm_dir, rm_dir):
    module, initial, r0 = _run(tiny_lm_dir, rm_dir, rounds=2)
    assert [r["round"] for r in module.rounds] == [0, 1, 2]
    for row in module.rounds[1:]:
        assert row["stopped"] is False and row["e_pairs"] > 0 and row["m_pairs"] >= 0
        assert 0.0 <= row["gold_reward"] <= 1.0 and 0.0 <= row["rm_win_rate"] <= 1.0
    assert not _same(module.model.state_dict(), initial)
    assert not _same(module.reward_model.state_dict(), r0)
    assert not any(p.requires_grad for p in module.reward_model.parameters())


def test_frozen_reward_ablation_keeps_r0(tiny_lm_dir, rm_dir):
    module, initial, r0 = _run(tiny_lm_dir, rm_dir, rounds=1, refresh=False)
    assert _same(module.reward_model.state_dict(), r0)
    assert not _same(module.model.state_dict(), initial)
    assert "m_pairs" not in module.rounds[1] and "e_gsa_chosen" not in module.rounds[1]


def test_tau_stop_returns_previous_policy_and_reward_model(tiny_lm_dir, rm_dir):
    module, initial, r0 = _run(tiny_lm_dir, rm_dir, rounds=2, tau=1.0)
    assert [r["round"] for r in module.rounds] == [0, 1] and module.rounds[1]["stopped"] is True
    assert module.rounds[1]["rm_win_rate"] < 1.0
    assert _same(module.model.state_dict(), initial)
    assert _same(module.reward_model.state_dict(), r0)


class _Watch(L.Callback):
    """Placed before `MutualTaughtRounds`: sees π_{t-1} at each round start, the round's annotated pairs at its first
    batch, and the snapshots and r_{t-1} the round selects with at its end."""

    def __init__(self, rounds: MutualTaughtRounds) -> None:
        self.rounds, self.starts, self.pairs, self.ends = rounds, [], [], []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.starts.append({k: v.clone() for k, v in pl_module.model.state_dict().items()})

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.pairs.append(copy.deepcopy(self.rounds._start.pairs))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.ends.append(([dict(state) for state in self.rounds._snapshots], dict(self.rounds._start_state),
                          self.rounds._start.baseline, pl_module.reward_model))


def test_reference_log_probs_are_those_of_the_previous_rounds_policy(tiny_lm_dir, rm_dir):
    rounds = _rounds()
    watch = _Watch(rounds)
    module, initial, _ = _run(tiny_lm_dir, rm_dir, rounds=2, callbacks=[watch, rounds])
    previous = watch.starts[1]  # π_1, selected at the end of round 1
    assert not _same(previous, initial)
    model = copy.deepcopy(module.model)
    model.load_state_dict(previous)
    model.eval()
    pairs = watch.pairs[1]
    batch = collate_pairs(module.tokenizer, pairs, module.max_length)
    with torch.no_grad():
        logps = sequence_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    expected = [r["ref_chosen"] for r in pairs] + [r["ref_rejected"] for r in pairs]
    assert logps.tolist() == pytest.approx(expected, abs=1e-4)


def test_the_m_step_starts_from_r0(tiny_lm_dir, rm_dir, monkeypatch):
    fit, starts = mutual_taught.fit_reward_model, []

    def recording_fit(model, *args):
        starts.append({k: v.clone() for k, v in model.state_dict().items()})
        return fit(model, *args)

    monkeypatch.setattr(mutual_taught, "fit_reward_model", recording_fit)
    module, _, r0 = _run(tiny_lm_dir, rm_dir, rounds=2, callbacks=[_rounds()])
    assert len(starts) == 2 and all(_same(start, r0) for start in starts)
    assert not _same(module.reward_model.state_dict(), r0), "r_1 ranked round 2, yet r_2 was refitted from r_0"


def test_snapshots_live_on_the_cpu_and_the_best_win_rate_one_is_restored(tiny_lm_dir, rm_dir):
    rounds = _rounds()
    watch = _Watch(rounds)
    module, _, _ = _run(tiny_lm_dir, rm_dir, rounds=1, refresh=False, callbacks=[watch, rounds], batch_size=2)
    ((snapshots, start, baseline, reward_model),) = watch.ends
    assert len(snapshots) == 2
    for state in [*snapshots, start]:
        assert all(tensor.device.type == "cpu" for tensor in state.values())
    current = module.model.state_dict()
    assert all(start[k].data_ptr() != current[k].data_ptr() for k in current), "a snapshot is a copy, not a view"
    model, config = copy.deepcopy(module.model), RoundConfig(3, SAMPLING, 0.0, module.max_length, 0)
    selection = module.trainer.datamodule.splits.selection
    rates = []
    for state in snapshots:
        model.load_state_dict(state)
        rates.append(win_rate(selection_scores(model, reward_model, module.tokenizer, selection, config, 0), baseline))
    best = max(range(len(rates)), key=lambda i: (rates[i], -i))
    (row,) = module.rounds  # no gold metrics here: round 1 only
    assert row["checkpoint"] == best + 1 and row["rm_win_rate"] == rates[best]
    assert _same(current, snapshots[best])


def test_a_mid_round_checkpoint_resumes_to_the_same_round_table(tmp_path, tiny_lm_dir, rm_dir):
    def callbacks(saving: bool = False):
        checkpoints = [ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=1, save_top_k=-1),
                       ModelCheckpoint(tmp_path, "end-{epoch}", every_n_epochs=1, save_top_k=-1)] if saving else []
        return [_rounds(), GoldRoundMetrics(sampling=SAMPLING), *checkpoints]

    whole, _, _ = _run(tiny_lm_dir, rm_dir, rounds=2, callbacks=callbacks(saving=True), batch_size=2)
    assert [r["round"] for r in whole.rounds] == [0, 1, 2]
    # 4 batches a round, snapshots after the 2nd and 4th: step 5 is before round 2's first snapshot, step 6 after
    # it; steps 4 and 8 are the last batches of rounds 1 and 2 (their ends still to run), end-epoch=0 after round 1
    for name in ("step=5", "step=6", "step=4", "step=8", "end-epoch=0"):
        resumed, _, _ = _run(tiny_lm_dir, rm_dir, rounds=2, callbacks=callbacks(), batch_size=2,
                             ckpt_path=tmp_path / f"{name}.ckpt")
        assert repr(resumed.rounds) == repr(whole.rounds), name  # exact, NaN included (no fresh pairs here)
        assert _same(resumed.model.state_dict(), whole.model.state_dict())
        assert _same(resumed.reward_model.state_dict(), whole.reward_model.state_dict())


def test_gold_metrics_score_exactly_the_pairs_the_reward_stage_held_out(tmp_path, tiny_lm_dir):
    reward, pairs = RewardModule(ModelSpec(path=str(tiny_lm_dir)), max_length=32), PreferenceDataModule(num_pairs=40)
    with torch.random.fork_rng():  # a fresh zero head would rank every response equally
        torch.manual_seed(0)
        torch.nn.init.normal_(reward.model.score.weight, std=0.5)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        reward, datamodule=pairs, verbose=False)
    gold, exported = GoldRoundMetrics(sampling=SAMPLING), reward.export(tmp_path / "rm")
    module, _, _ = _run(tiny_lm_dir, exported, rounds=1, refresh=False, callbacks=[_rounds(), gold])
    as_tuples = lambda records: [(r["prompt"], r["chosen"], r["rejected"]) for r in records]  # noqa: E731
    assert as_tuples(read_saved_pairs(exported, TRAIN_PAIRS)) == as_tuples(pairs.train_set.records)
    heldout = as_tuples(gold.heldout)
    assert heldout == as_tuples(pairs.val_set.records) and len(heldout) == 4
    assert not set(heldout) & set(as_tuples(pairs.train_set.records))
    assert 0.0 <= module.rounds[1]["rm_accuracy_heldout"] <= 1.0


def test_gold_metrics_must_follow_the_rounds_and_arguments_are_range_checked(tiny_lm_dir, rm_dir):
    with pytest.raises(ConfigError, match="trainer.callbacks.*follow MutualTaughtRounds"):
        _run(tiny_lm_dir, rm_dir, rounds=1, callbacks=[GoldRoundMetrics(), _rounds()])
    for kwargs, key in [({"num_samples": 1}, "num_samples"), ({"tau": 1.5}, "tau"), ({"checkpoints": 0}, "checkpoints"),
                        ({"self_aggregation": True, "aggregation_template": "{candidates} only"},
                         "aggregation_template")]:
        with pytest.raises(ConfigError, match=key):
            MutualTaughtRounds(**kwargs)


def test_self_aggregation_adds_the_gsa_answer_to_the_ranked_pool(tiny_lm_dir, rm_dir):
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), reward_model=str(rm_dir))
    prompts = ["the quick", "a class defines"]
    plain = RoundConfig(3, SAMPLING, 0.0, module.max_length, 0)
    with_gsa = RoundConfig(3, SAMPLING, 0.0, module.max_length, 0,
                           aggregation_template=MutualTaughtRounds().aggregation_template)
    pool = candidate_pool(module.model, module.tokenizer, prompts, with_gsa, 0)
    samples = candidate_pool(module.model, module.tokenizer, prompts, plain, 0)
    assert [group[:3] for group in pool] == samples
    assert [group[3] for group in pool] == self_aggregate(module.model, module.tokenizer, prompts, samples, SAMPLING)
    ran, _, _ = _run(tiny_lm_dir, rm_dir, rounds=1, callbacks=[_rounds(self_aggregation=True),
                                                               GoldRoundMetrics(sampling=SAMPLING)])
    assert 0.0 <= ran.rounds[1]["e_gsa_chosen"] <= 1.0 and ran.rounds[1]["e_pairs"] > 0


def test_the_oracle_ranker_ranks_by_gold_not_by_the_reward_model(tiny_lm_dir, rm_dir):
    module = _module(tiny_lm_dir, rm_dir)
    data = RoundPromptsDataModule(policy_prompts=8, reward_prompts=8, selection_prompts=8)
    data.trainer = L.Trainer(max_epochs=1, logger=False)
    data.setup("fit")
    vowels = lambda response: float(sum(c in "aeiou" for c in response))  # noqa: E731  a stand-in gold reward
    oracle = RoundConfig(4, SAMPLING, 0.0, module.max_length, 0, gold=vowels)
    prompts = data.splits.policy[0]
    pool = candidate_pool(module.model, module.tokenizer, prompts, oracle, 0)
    by_gold = e_step_pairs(prompts, pool, [[vowels(r) for r in group] for group in pool])
    by_rm = e_step_pairs(prompts, pool, [score_responses(module.reward_model, module.tokenizer, [p] * len(group),
                                                         group, module.max_length) for p, group in zip(prompts, pool)])
    assert by_gold != by_rm, "the test needs an RM that ranks differently from the stand-in gold reward"
    start = start_round(module.model, module.reward_model, module.tokenizer, data.splits, 0, oracle)
    assert start.pairs == by_gold and all(vowels(p["chosen"]) > vowels(p["rejected"]) for p in start.pairs)
    selection = sample_responses(module.model, module.tokenizer, data.splits.selection, 1, SAMPLING,
                                 round_generator(0, 0, SELECTION))
    assert start.baseline == [vowels(group[0]) for group in selection]


def test_the_oracle_arm_wires_the_tasks_gold_reward_and_is_refused_without_one(tmp_path, tiny_lm_dir, rm_dir):
    rounds, oracle = _rounds(), _module(tiny_lm_dir, rm_dir, refresh=False, ranker="gold")
    rounds.setup(SimpleNamespace(datamodule=RoundPromptsDataModule()), oracle, "fit")
    assert rounds.config.gold is gold_reward and rounds.config.fit is None
    with pytest.raises(ConfigError, match="model.init_args.ranker.*reward_refresh: false"):
        _module(tiny_lm_dir, rm_dir, refresh=True, ranker="gold")
    with pytest.raises(ConfigError, match="model.init_args.ranker"):
        PolicyModule.check_arguments(beta=0.1, reward_refresh=False, reward_quantization=None, ranker="oracle")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "my own"}\n')
    with pytest.raises(ConfigError, match="model.init_args.ranker.*gold reward"):
        rounds.setup(SimpleNamespace(datamodule=RoundPromptsDataModule(str(prompts))), oracle, "fit")


def test_replay_adds_exactly_r0s_training_pairs_to_the_m_step(tmp_path, tiny_lm_dir, rm_dir, monkeypatch):
    fit, seen = mutual_taught.fit_reward_model, []

    def recording_fit(model, tokenizer, records, *args):
        seen.append([dict(r) for r in records])
        return fit(model, tokenizer, records, *args)

    monkeypatch.setattr(mutual_taught, "fit_reward_model", recording_fit)
    replaying = shutil.copytree(rm_dir, tmp_path / "r0")
    write_pairs(replaying / TRAIN_PAIRS, PAIRS)
    plain, _, _ = _run(tiny_lm_dir, rm_dir, rounds=1, callbacks=[_rounds()])
    replayed, _, _ = _run(tiny_lm_dir, replaying, rounds=1, callbacks=[_rounds(replay_reward_pairs=True)])
    without, with_replay = seen
    assert with_replay == without + PAIRS
    assert replayed.rounds[0]["replay_pairs"] == len(PAIRS) and "replay_pairs" not in plain.rounds[0]
    with pytest.raises(ConfigError, match="replay_reward_pairs.*train_pairs.jsonl"):
        _run(tiny_lm_dir, rm_dir, rounds=1, callbacks=[_rounds(replay_reward_pairs=True)])
    with pytest.raises(ConfigError, match="replay_reward_pairs.*reward_refresh: false"):
        _run(tiny_lm_dir, replaying, rounds=1, refresh=False, callbacks=[_rounds(replay_reward_pairs=True)])
