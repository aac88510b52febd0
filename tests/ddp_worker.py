"""Stages under DDP (2 gloo processes on CPU), run by tests/test_distributed.py; every rank writes `<out>/rank<r>.json`.

`python -m tests.ddp_worker prune <out dir> <corpus>`: a prune stage with both reshaping callbacks; a rank writes
what it removed. `python -m tests.ddp_worker rounds <out dir> <policy dir> <reward model dir>`: one Mutual-Taught
round; a rank writes the round table and digests of the final policy and reward model.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

from lightning_align.callbacks.block_removal import IterativeBlockRemoval
from lightning_align.callbacks.mutual_taught_rounds import MutualTaughtRounds
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


def digest(state: dict[str, torch.Tensor]) -> str:
    """Bitwise fingerprint of a state dict."""
    sha = hashlib.sha256()
    for key in sorted(state):
        sha.update(key.encode())
        sha.update(state[key].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


class RecordRounds(L.Callback):
    """At the end of training: the pairs this rank trained on, its round table and what the round left in the module."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.batches: list[list[list[int]]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict,
                             batch_idx: int) -> None:
        self.batches.append(batch["input_ids"].tolist())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rounds = next(c for c in trainer.callbacks if isinstance(c, MutualTaughtRounds))
        record = {"rows": rounds.round_rows(), "batches": self.batches, "policy": digest(pl_module.model.state_dict()),
                  "reward_model": digest(pl_module.reward_model.state_dict())}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def two_ranks(strategy: str, callbacks: list[dict], **limits: int) -> dict:
    """A trainer section: 2 gloo processes on CPU, no logger, no validation, `callbacks` in that order."""
    return {"accelerator": "cpu", "devices": 2, "strategy": strategy, "logger": False, "enable_progress_bar": False,
            "enable_model_summary": False, "limit_val_batches": 0, "callbacks": callbacks, **limits}


def rounds_config(out: str, policy: str, reward_model: str) -> dict:
    sampling = {"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0}
    return {
        "trainer": two_ranks("ddp", [
            {"class_path": "lightning_align.callbacks.mutual_taught_rounds.MutualTaughtRounds",
             "init_args": {"num_samples": 3, "sampling": sampling, "tau": 0.0, "checkpoints": 2,
                           "fit": {"epochs": 1, "batch_size": 8}}},
            {"class_path": "tests.ddp_worker.RecordRounds", "init_args": {"out": out}}], max_epochs=1),
        "model": {"class_path": "lightning_align.modules.policy.PolicyModule",
                  "init_args": {"model": {"path": policy}, "reward_model": reward_model, "beta": 0.5,
                                "max_length": 32, "optim": {"lr": 5.0e-3, "warmup_steps": 0, "min_lr_ratio": 1.0}}},
        "data": {"class_path": "lightning_align.modules.round_prompts.RoundPromptsDataModule",
                 "init_args": {"policy_prompts": 8, "reward_prompts": 8, "selection_prompts": 8, "batch_size": 2}},
    }


def prune_config(out: str, corpus: str) -> dict:
    window = {"start_step": 0, "end_step": 6, "every_n_steps": 2}
    return {
        "trainer": two_ranks("ddp_find_unused_parameters_true", [
            {"class_path": "lightning_align.callbacks.width_pruning.GradualWidthPruning",
             "init_args": {"target_width": TARGET_WIDTH, **window}},
            {"class_path": "lightning_align.callbacks.block_removal.IterativeBlockRemoval",
             "init_args": {"num_blocks": 2, "calibration_batches": 2, **window}},
            {"class_path": "tests.ddp_worker.RecordStructure", "init_args": {"out": out}}], max_steps=8),
        "model": {"class_path": "lightning_align.modules.student.StudentModule",
                  "init_args": {"model": SPEC, "optim": {"lr": 1.0e-2}}},
        "data": {"class_path": "lightning_align.data.lm_datamodule.LMDataModule",
                 "init_args": {"corpus": corpus, "block_size": 16, "batch_size": 4}},
    }


if __name__ == "__main__":
    kind, out_dir, *inputs = sys.argv[1:]
    config = (prune_config if kind == "prune" else rounds_config)(out_dir, *inputs)
    fit(StageContext(kind, config, None, Path(out_dir) / "model", Path(out_dir)))
