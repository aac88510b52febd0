import json
import math

import lightning as L
import pytest
import torch

from tests.conftest import PAIRS, write_pairs
from lightning_align.algorithms.sampling import sequence_logprobs
from lightning_align.data.preference import PreferenceDataModule, collate_pairs
from lightning_align.models.loading import load_model
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.policy import PolicyModule
from lightning_align.modules.reward import RewardModule


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     check_val_every_n_epoch=1000)


def _fit(tmp_path, tiny_lm_dir, steps: int, **kwargs):
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), OptimConfig(lr=3e-3, warmup_steps=0, min_lr_ratio=1.0,
                                                                        weight_decay=0.0), **kwargs)
    data = PreferenceDataModule(path=write_pairs(tmp_path / "pairs.jsonl", PAIRS), val_fraction=0.25, batch_size=4)
    trainer = _trainer(steps)
    start = trainer.validate(module, datamodule=data, verbose=False)[0]
    trainer.fit(module, datamodule=data)
    return module, data, start, trainer.validate(module, datamodule=data, verbose=False)[0]


def test_dpo_starts_at_ln2_and_learns_preferences(tmp_path, tiny_lm_dir, tokenizer):
    module, data, start, end = _fit(tmp_path, tiny_lm_dir, 30, beta=0.5)
    assert start["val/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert start["val/rewards_margin"] == pytest.approx(0.0, abs=1e-5)
    assert end["val/loss"] < start["val/loss"] - 0.1
    assert end["val/rewards_accuracy"] == 1.0
    # Reference log-probs were frozen at setup: they still equal the untouched initial model's.
    initial = load_model(ModelSpec(path=str(tiny_lm_dir)))
    records = data.train_set.records[:3]
    batch = collate_pairs(tokenizer, records, 64)
    with torch.no_grad():
        logps = sequence_logprobs(initial, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert torch.allclose(logps[:3], batch["ref_chosen"], atol=1e-4)
    assert torch.allclose(logps[3:], batch["ref_rejected"], atol=1e-4)


@pytest.mark.parametrize("max_length", [8, 64])
def test_dpo_starts_at_ln2_whatever_the_length(tmp_path, tiny_lm_dir, max_length):
    """The module's `max_length` is the only length: reference and policy score the same truncated tokens."""
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), max_length=max_length)
    data = PreferenceDataModule(path=write_pairs(tmp_path / "pairs.jsonl", PAIRS), val_fraction=0.25, batch_size=4)
    start = _trainer(1).validate(module, datamodule=data, verbose=False)[0]
    assert start["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert next(iter(data.val_dataloader()))["input_ids"].shape[1] <= max_length


def test_reference_is_scored_under_the_trainers_precision(tmp_path, tiny_lm_dir, tokenizer):
    """Under bf16 autocast the reference must come from the same autocast forward as the policy's, or step 0 of DPO
    would already see a policy/reference gap."""
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir)))
    data = PreferenceDataModule(path=write_pairs(tmp_path / "pairs.jsonl", PAIRS), val_fraction=0.25, batch_size=4)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    start = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert start["val/loss"] == pytest.approx(math.log(2), abs=1e-6)
    batch = collate_pairs(tokenizer, data.train_set.records, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logps = sequence_logprobs(module.model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    half = len(data.train_set.records)
    assert torch.equal(logps[:half].float(), batch["ref_chosen"]) and torch.equal(logps[half:].float(),
                                                                                   batch["ref_rejected"])


def test_ipo_starts_at_its_target_squared(tmp_path, tiny_lm_dir):
    _, _, start, end = _fit(tmp_path, tiny_lm_dir, 10, beta=0.5, ipo=True)
    assert start["val/loss"] == pytest.approx(1.0, abs=1e-5)  # (0 - 1/(2*0.5))^2
    assert end["val/loss"] < start["val/loss"]


class _Rows(L.Callback):
    """A callback that keeps round rows, as `MutualTaughtRounds` and `GoldRoundMetrics` do."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def round_rows(self) -> list[dict]:
        return self.rows


def test_export_writes_round_report_and_reward_model(tmp_path, tiny_lm_dir):
    rm_dir = RewardModule(ModelSpec(path=str(tiny_lm_dir))).export(tmp_path / "rm")
    module = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), reward_model=str(rm_dir))
    assert module.rounds == [], "no trainer, no rounds"
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[
        _Rows([{"round": 1, "stopped": False}]),
        _Rows([{"round": 0, "gold_reward": 0.5}, {"round": 1, "gold_reward": 0.625}])])
    out = module.export(tmp_path / "policy")
    report = (out / "report.md").read_text()
    assert "| round | gold_reward | stopped |" in report and "| 1 | 0.625 | False |" in report  # merged by round
    assert (out / "rounds.png").stat().st_size > 0
    assert json.loads((out / "reward_model" / "lightning_align.json").read_text())["kind"] == "reward_model"
    assert json.loads((out / "lightning_align.json").read_text())["rounds"][1]["gold_reward"] == 0.625
