"""The `align` pipeline end to end on a tiny model: pretrain → sft → reward → mutual_taught → evaluate, then the
frozen-RM ablation from one override (only the changed stage and those after it rerun)."""
from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lightning_align.cli import main
from tests.conftest import TINY_OVERRIDES

SAMPLING = "{max_new_tokens:8,temperature:1.0,top_p:1.0,batch_size:64}"
MT = "stages.mutual_taught"
SMALL_ALIGNMENT = [
    "stages.sft.trainer.max_steps=8", "stages.sft.trainer.val_check_interval=4", "stages.sft.trainer.limit_val_batches=1",
    "stages.sft.data.init_args.num_records=64", "stages.sft.data.init_args.max_length=32",
    "stages.reward.trainer.max_steps=8", "stages.reward.trainer.val_check_interval=4",
    "+stages.reward.trainer.limit_val_batches=1", "stages.reward.data.init_args.num_pairs=64",
    "stages.reward.model.init_args.max_length=32",
    f"{MT}.trainer.max_epochs=2", f"{MT}.model.init_args.max_length=32",
    f"{MT}.data.init_args.policy_prompts=8", f"{MT}.data.init_args.reward_prompts=8",
    f"{MT}.data.init_args.selection_prompts=8", f"{MT}.data.init_args.batch_size=4",
    f"{MT}.trainer.callbacks.0.init_args.num_samples=3", f"{MT}.trainer.callbacks.0.init_args.tau=0.0",
    f"{MT}.trainer.callbacks.0.init_args.sampling={SAMPLING}",
    f"{MT}.trainer.callbacks.0.init_args.fit.epochs=1", f"{MT}.trainer.callbacks.1.init_args.sampling={SAMPLING}",
]


@pytest.mark.slow
def test_align_pipeline_runs_rounds_and_the_frozen_ablation(tmp_path):
    args = ["run", f"run.dir={tmp_path}", "run.name=mt", "pipeline=align", *TINY_OVERRIDES, *SMALL_ALIGNMENT]
    assert main(args) == 0
    run_dir = tmp_path / "mt"
    done = json.loads((run_dir / "state.json").read_text())["done"]
    assert list(done) == ["pretrain", "sft", "reward", "mutual_taught", "evaluate"]
    rounds = json.loads((run_dir / "mutual_taught" / "lightning_align.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and all("m_pairs" in r for r in rounds[1:])
    report = (run_dir / "report.md").read_text()
    assert "## Stage `mutual_taught`" in report and "| round | gold_reward | gold_win_rate |" in report
    assert (run_dir / "mutual_taught" / "rounds.png").stat().st_size > 1000
    AutoModelForCausalLM.from_pretrained(run_dir / "mutual_taught")
    AutoModelForSequenceClassification.from_pretrained(run_dir / "mutual_taught" / "reward_model")

    reward_weights = run_dir / "reward" / "model.safetensors"
    stamp = reward_weights.stat().st_mtime_ns
    assert main(args + [f"{MT}.model.init_args.reward_refresh=false"]) == 0
    assert reward_weights.stat().st_mtime_ns == stamp, "earlier stages must be reused by the ablation"
    frozen = json.loads((run_dir / "mutual_taught" / "lightning_align.json").read_text())["rounds"]
    assert len(frozen) == 3 and not any("m_pairs" in r for r in frozen)
    assert frozen[0] == rounds[0], "both arms start from the same policy, RM and evaluation draws"
