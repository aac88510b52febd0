"""The Mutual-Taught stage on tiny models: rounds, M-step refresh, frozen-RM ablation, the τ stop, config errors."""
import lightning as L
import pytest
import torch

from lightning_align.algorithms.generation_strategies import self_aggregate
from lightning_align.algorithms.reward_training import RewardFitConfig
from lightning_align.algorithms.sampling import SamplingConfig
from lightning_align.callbacks.gold_round_metrics import GoldRoundMetrics
from lightning_align.callbacks.preference_refresh import PreferenceRefresh
from lightning_align.callbacks.reward_refresh import RewardRefresh
from lightning_align.data.preference import PreferenceDataModule
from lightning_align.modules.round_prompts import RoundPromptsDataModule
from lightning_align.errors import ConfigError
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.policy import PolicyModule
from lightning_align.modules.reward import RewardModule

SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=1.0)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tiny_lm_dir):
    module = RewardModule(ModelSpec(path=str(tiny_lm_dir)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.nn.init.normal_(module.model.score.weight, std=0.5)
    return module.export(tmp_path_factory.mktemp("rm") / "r0")


def _run(tiny_lm_dir, rm_dir, rounds: int, tau: float = 0.0, refresh: bool = True, callbacks=None):
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), OptimConfig(lr=5e-3, warmup_steps=0, min_lr_ratio=1.0),
                          beta=0.5, max_length=32, reward_model=str(rm_dir), reward_refresh=refresh)
    data = RoundPromptsDataModule(policy_prompts=8, reward_prompts=8, selection_prompts=8, batch_size=4)
    callbacks = callbacks or [PreferenceRefresh(num_samples=3, sampling=SAMPLING, tau=tau, checkpoints=2),
                              RewardRefresh(RewardFitConfig(epochs=1, batch_size=8), SAMPLING),
                              GoldRoundMetrics(sampling=SAMPLING)]
    trainer = L.Trainer(max_epochs=rounds, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=callbacks)
    initial = {k: v.clone() for k, v in module.model.state_dict().items()}
    r0 = {k: v.clone() for k, v in module.reward_model.state_dict().items()}
    trainer.fit(module, datamodule=data)
    return module, initial, r0


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


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
    module, initial, r0 = _run(tiny_lm_dir, rm_dir, rounds=2, tau=1.01)
    assert [r["round"] for r in module.rounds] == [0, 1] and module.rounds[1]["stopped"] is True
    assert _same(module.model.state_dict(), initial)
    assert _same(module.reward_model.state_dict(), r0)


class _KeepSnapshots(L.Callback):
    """Runs before `PreferenceRefresh` at round end, so it sees the snapshots the round selects from."""

    def __init__(self, refresh: PreferenceRefresh) -> None:
        self.refresh, self.kept = refresh, []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.kept.append(([dict(state) for state in self.refresh._candidates], dict(self.refresh._start_state)))


def test_policy_snapshots_live_on_the_cpu_and_the_selected_one_is_restored(tiny_lm_dir, rm_dir):
    refresh = PreferenceRefresh(num_samples=3, sampling=SAMPLING, tau=0.0, checkpoints=2)
    keep = _KeepSnapshots(refresh)
    module, _, _ = _run(tiny_lm_dir, rm_dir, rounds=1, refresh=False, callbacks=[keep, refresh])
    ((candidates, start),) = keep.kept
    assert len(candidates) == 2
    for state in [*candidates, start]:
        assert all(tensor.device.type == "cpu" for tensor in state.values())
    model = module.model.state_dict()
    assert all(start[k].data_ptr() != model[k].data_ptr() for k in model), "a snapshot is a copy, not a view"
    assert _same(model, candidates[module.rounds[-1]["checkpoint"] - 1])


def test_gold_metrics_score_exactly_the_pairs_the_reward_stage_held_out(tmp_path, tiny_lm_dir):
    reward, pairs = RewardModule(ModelSpec(path=str(tiny_lm_dir)), max_length=32), PreferenceDataModule(num_pairs=40)
    with torch.random.fork_rng():  # a fresh zero head would rank every response equally
        torch.manual_seed(0)
        torch.nn.init.normal_(reward.model.score.weight, std=0.5)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False).validate(
        reward, datamodule=pairs, verbose=False)
    gold = GoldRoundMetrics(sampling=SAMPLING)
    module, _, _ = _run(tiny_lm_dir, reward.export(tmp_path / "rm"), rounds=1, refresh=False,
                        callbacks=[PreferenceRefresh(num_samples=3, sampling=SAMPLING, tau=0.0), gold])
    as_tuples = lambda records: [(r["prompt"], r["chosen"], r["rejected"]) for r in records]  # noqa: E731
    heldout = as_tuples(gold.heldout)
    assert heldout == as_tuples(pairs.val_set.records) and len(heldout) == 4
    assert not set(heldout) & set(as_tuples(pairs.train_set.records))
    assert 0.0 <= module.rounds[1]["rm_accuracy_heldout"] <= 1.0


def test_reward_refresh_must_follow_preference_refresh(tiny_lm_dir, rm_dir):
    with pytest.raises(ConfigError, match="trainer.callbacks.*after PreferenceRefresh"):
        _run(tiny_lm_dir, rm_dir, rounds=1, callbacks=[RewardRefresh(), PreferenceRefresh()])


def test_self_aggregation_adds_the_gsa_answer_to_the_ranked_pool(tiny_lm_dir, rm_dir):
    callback = PreferenceRefresh(num_samples=3, sampling=SAMPLING, self_aggregation=True)
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), reward_model=str(rm_dir))
    prompts = ["the quick", "a class defines"]
    pool = callback.candidate_pool(module, prompts, 0)
    samples = PreferenceRefresh(num_samples=3, sampling=SAMPLING).candidate_pool(module, prompts, 0)
    assert [group[:3] for group in pool] == samples
    assert [group[3] for group in pool] == self_aggregate(module.model, module.tokenizer, prompts, samples, SAMPLING)
    with_gsa, _, _ = _run(tiny_lm_dir, rm_dir, rounds=1, callbacks=[
        callback, RewardRefresh(RewardFitConfig(epochs=1, batch_size=8), SAMPLING),
        GoldRoundMetrics(sampling=SAMPLING)])
    assert 0.0 <= with_gsa.rounds[1]["e_gsa_chosen"] <= 1.0 and with_gsa.rounds[1]["e_pairs"] > 0
    with pytest.raises(ConfigError, match="aggregation_template"):
        PreferenceRefresh(self_aggregation=True, aggregation_template="{candidates} only")
