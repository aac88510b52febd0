"""`SharedSchedule`: the optimizer LR follows one run-wide warm-up + cosine curve, whatever stage is training.

IDEA Prune (arXiv 2503.05920) keeps enlarge, prune and recover on one cosine annealing schedule; every
stage that shares it declares the same `budgets` and names itself in `stage`. A stage whose budget dict holds only
itself, or that sets `per_stage`, gets a schedule of its own: the naive pipeline (warm-up again after pruning).
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lightning_align.algorithms.schedule import RunSchedule
from lightning_align.errors import ConfigError


class SharedSchedule(pl.Callback):
    """Sets `lr = base_lr × multiplier(stage, trainer.global_step)` before every optimizer step.

    It overrides whatever per-stage scheduler the module configured (that one only runs after each step, and this
    callback sets the LR again before the next). The base LRs are the optimizer's initial LRs when this stage first
    starts; they and the schedule go into the Lightning checkpoint, so a resumed stage continues the same curve (the
    global step is derived from the stage offset and `trainer.global_step`, which Lightning restores).
    """

    def __init__(self, budgets: dict[str, int], stage: str, warmup_steps: int, min_lr_ratio: float = 0.1,
                 per_stage: bool = False) -> None:
        if stage not in budgets:
            raise ConfigError("stage", f"'{stage}' has no budget in {dict(budgets)}")
        self.schedule = RunSchedule({stage: budgets[stage]} if per_stage else dict(budgets), warmup_steps, min_lr_ratio)
        self.stage = stage
        names = list(budgets)
        self.offset = sum(budgets[name] for name in names[:names.index(stage)])  # run-wide position, for plots
        self.base_lrs: list[float] | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.base_lrs is None:
            self.base_lrs = [group.get("initial_lr", group["lr"])
                             for optimizer in trainer.optimizers for group in optimizer.param_groups]
        self._apply(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        lr = self._apply(trainer)
        pl_module.log("train/lr", lr, on_step=True, on_epoch=False)
        pl_module.log("train/global_step", float(self.offset + trainer.global_step), on_step=True, on_epoch=False)

    def _apply(self, trainer: pl.Trainer) -> float:
        """Set every param group's LR for the coming optimizer step; returns the first group's LR."""
        multiplier = self.schedule.multiplier(self.stage, trainer.global_step)
        groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
        for group, base_lr in zip(groups, self.base_lrs or []):
            group["lr"] = base_lr * multiplier
        return groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"budgets": self.schedule.budgets, "stage": self.stage, "warmup_steps": self.schedule.warmup_steps,
                "min_lr_ratio": self.schedule.min_lr_ratio, "base_lrs": self.base_lrs}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {key: state_dict[key] for key in ("budgets", "stage", "warmup_steps", "min_lr_ratio")}
        if saved != {key: value for key, value in self.state_dict().items() if key in saved}:
            raise ConfigError("callbacks.SharedSchedule", f"the checkpoint was trained under another schedule {saved}; "
                              "resume with the same budgets, stage, warmup_steps and min_lr_ratio")
        self.base_lrs = state_dict["base_lrs"]
