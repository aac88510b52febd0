"""Stop a stage at the first non-finite training loss, and before export if any weight is non-finite."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from lightning_align.errors import NonFiniteError


def _loss(outputs: Any) -> torch.Tensor | None:
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"]
    return None


class StopOnNonFinite(L.Callback):
    """Raise `NonFiniteError` (stage, step, value) instead of training on, and exporting, NaN.

    A diverged step makes every later weight NaN while the loop carries on and the stage exports and is marked done,
    so a re-run never retries it. All ranks agree on the decision (one reduced flag per step), so under DDP every
    rank stops at the same step instead of one waiting forever in the next all-reduce. The weight check at the end
    covers the last optimizer step, whose loss was computed before it.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = _loss(outputs)
        value = float(loss.detach().float().mean()) if loss is not None else 0.0
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            raise NonFiniteError("train/loss", value, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bad = next(((name, p) for name, p in pl_module.named_parameters() if not torch.isfinite(p).all()), None)
        if trainer.strategy.reduce_boolean_decision(bad is not None, all=False):
            name, param = bad if bad is not None else ("a weight on another rank", torch.tensor(math.nan))
            flat = param.detach().float().flatten()
            raise NonFiniteError(f"weight {name}", float(flat[~torch.isfinite(flat)][0]), trainer.global_step)
