"""Run by tests/test_distributed.py as `python -m tests.ddp_worker <out dir> <corpus>`: a prune stage with both
reshaping callbacks under DDP (2 gloo processes on CPU). Every rank writes what it removed to `<out>/rank<r>.json`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L

from lightning_align.callbacks.block_removal import IterativeBlockRemoval
from lightning_align.callbacks.width_pruning import GradualWidthPruning
from lightning_align.stages.context import StageContext
from lightning_align.stages.lightning_stage import fit

SPEC = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64)
TARGET_WIDTH = 40


class RecordStructure(L.Callback):
    """After the pruning callbacks' `on_train_end`: this rank's kept neurons, removal order and calibration tokens."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        width = next(c for c in trainer.callbacks if isinstance(c, GradualWidthPruning))
        blocks = next(c for c in trainer.callbacks if isinstance(c, IterativeBlockRemoval))
        record = {"keep": [index.tolist() for index in width.pruner.keep_indices()],
                  "order": [block.to_json() for block in blocks.order],
                  "calibration": [batch.tolist() for batch in blocks.calibration]}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def stage_config(out: str, corpus: str) -> dict:
    window = {"start_step": 0, "end_step": 6, "every_n_steps": 2}
    return {
        "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp_find_unused_parameters_true", "max_steps": 8, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
                    "callbacks": [
                        {"class_path": "lightning_align.callbacks.width_pruning.GradualWidthPruning",
                         "init_args": {"target_width": TARGET_WIDTH, **window}},
                        {"class_path": "lightning_align.callbacks.block_removal.IterativeBlockRemoval",
                         "init_args": {"num_blocks": 2, "calibration_batches": 2, **window}},
                        {"class_path": "tests.ddp_worker.RecordStructure", "init_args": {"out": out}}]},
        "model": {"class_path": "lightning_align.modules.student.StudentModule",
                  "init_args": {"model": SPEC, "optim": {"lr": 1.0e-2}}},
        "data": {"class_path": "lightning_align.data.lm_datamodule.LMDataModule",
                 "init_args": {"corpus": corpus, "block_size": 16, "batch_size": 4}},
    }


if __name__ == "__main__":
    out_dir, corpus_file = sys.argv[1], sys.argv[2]
    fit(StageContext("prune", stage_config(out_dir, corpus_file), None, Path(out_dir) / "model", Path(out_dir)))
