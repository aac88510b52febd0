"""The packaged default pipeline end to end on a tiny model: all three methods in one run."""
from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM

from benchmarks.enlarge_prune_compare import overrides
from lightning_align.cli import main
from tests.test_mutual_taught_pipeline import SMALL_ALIGNMENT


@pytest.mark.slow
def test_default_pipeline_end_to_end(tmp_path):
    tiny = [o for o in overrides("enlarge_prune", tmp_path, total=16, quick=True) if not o.startswith("pipeline=")]
    tiny += ["run.name=full", "stages.evaluate_policy.data.init_args.block_size=32",
             "stages.evaluate_policy.trainer.limit_val_batches=2"]
    assert main(["run", *tiny, *SMALL_ALIGNMENT]) == 0
    run_dir = tmp_path / "full"
    done = json.loads((run_dir / "state.json").read_text())["done"]
    assert list(done) == ["enlarge", "prune", "recover", "evaluate", "sft", "reward", "mutual_taught",
                          "evaluate_policy"]
    enlarged = AutoModelForCausalLM.from_pretrained(run_dir / "enlarge").config.intermediate_size
    pruned = AutoModelForCausalLM.from_pretrained(run_dir / "recover").config.intermediate_size
    assert (enlarged, pruned) == (84, 32), "the FFN is pruned from the enlarged width to the target width"
    assert done["recover"]["metrics"]["train/global_step"] == 15, "one step counter across the shared schedule"
    rounds = json.loads((run_dir / "mutual_taught" / "lightning_align.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert "## Mutual-Taught rounds" in (run_dir / "report.md").read_text()
