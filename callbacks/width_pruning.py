"""`GradualWidthPruning`: remove FFN neurons a few at a time while the prune stage trains, cut them out at its end.

IDEA Prune (arXiv 2503.05920): interleave pruning with training so the survivors absorb the capacity of
what goes. Scores and masks come from `lightning_align.algorithms.width_pruner.WidthPruner`; the kept width follows
its cubic schedule between `start_step` and `end_step` (stage-local optimizer steps). During the stage pruned neurons
are masked, so parameter and Adam-moment shapes never change; when training ends the masks become surgery
(`slice_mlp_widths`), which slices the optimizer's AdamW moments with the same keep indices, so a stage that carries
its optimizer state (`StudentModule(carry_optimizer_state=True)`) hands on moments shaped like the smaller model.

In a multi-process run each step's sensitivities are averaged over the ranks before they enter the EMA, so every
rank keeps the same scores and masks the same neurons (DDP's gradients are averaged already, but a rank must not
depend on that). Under FSDP a rank holds only a shard of each gradient: width pruning is refused there at planning.
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import lightning.pytorch as pl
import torch

from lightning_align.algorithms.width_pruner import Scope, WidthPruner, cubic_width
from lightning_align.errors import ConfigError
from lightning_align.models.mlp_width import mlp_modules, mlp_widths, slice_mlp_widths

log = logging.getLogger(__name__)


class GradualWidthPruning(pl.Callback):
    """Sensitivity EMA every step, cubic pruning every `every_n_steps`, surgery in `on_train_end`.

    The target is an absolute `target_width` (the tiny default: the width the enlarged model is pruned back to) or
    `target_ratio`, a share of the incoming width (a pretrained model's width is only known once it is loaded).
    """

    def __init__(self, start_step: int, end_step: int, target_width: Optional[int] = None,
                 target_ratio: Optional[float] = None, every_n_steps: int = 1, beta: float = 0.85,
                 scope: Scope = "layer", min_width: int = 1) -> None:
        if (target_width is None) == (target_ratio is None):
            raise ConfigError("target_width", "give exactly one of target_width "
                              f"and target_ratio, got {target_width} and {target_ratio}")
        if target_width is not None and target_width <= 0:
            raise ConfigError("target_width", f"must be positive, got {target_width}")
        if target_ratio is not None and not 0 < target_ratio <= 1:
            raise ConfigError("target_ratio", f"must be in (0, 1], got {target_ratio}")
        if not 0 <= start_step < end_step:
            raise ConfigError("end_step",
                              f"the window needs 0 <= start_step < end_step, got [{start_step}, {end_step})")
        if every_n_steps <= 0:
            raise ConfigError("every_n_steps", f"must be positive, got {every_n_steps}")
        if not 0.0 <= beta < 1.0:
            raise ConfigError("beta", f"must be in [0, 1), got {beta}")
        self.target_width, self.target_ratio = target_width, target_ratio
        self.start_step, self.end_step = start_step, end_step
        self.every_n_steps, self.beta, self.scope, self.min_width = every_n_steps, beta, scope, min_width
        self.pruner: WidthPruner | None = None
        self._pending_state: dict[str, torch.Tensor] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.pruner is not None:
            return
        if self.target_ratio is not None:
            self.target_width = max(1, round(self.target_ratio * max(mlp_widths(pl_module.model), default=0)))
        try:
            self.pruner = WidthPruner(pl_module.model, self.target_width, self.beta, self.scope, self.min_width)
        except ConfigError as error:
            raise ConfigError(f"callbacks.GradualWidthPruning.{error.key}", error.problem) from None
        if self._pending_state is not None:
            self.pruner.load_state_dict(self._pending_state)
        self.pruner.attach()

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        reduce = (lambda scores: trainer.strategy.reduce(scores, reduce_op="mean")) if trainer.world_size > 1 else None
        self.pruner.accumulate(reduce)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step >= self.end_step:
            self.pruner.prune_to(self.width_at(step))
        pl_module.log("prune/ffn_width", sum(self.pruner.kept_widths()) / len(self.pruner.mlps),
                      on_step=True, on_epoch=False)

    def width_at(self, step: int) -> int:
        return cubic_width(step, self.start_step, self.end_step, self.pruner.initial_width, self.target_width)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reach the target even if the stage stopped inside the window, then cut the masked neurons out."""
        if self.pruner.prune_to(self.target_width):
            log.warning("training stopped at step %d, before the pruning window ended at %d: pruned to the target "
                        "width in one cut", trainer.global_step, self.end_step)
        self.pruner.detach()
        present = mlp_modules(pl_module.model)  # block removal may have taken some MLPs out already
        keep = [index for mlp, index in zip(self.pruner.mlps, self.pruner.keep_indices())
                if any(mlp is other for other in present)]
        slice_mlp_widths(pl_module.model, keep, trainer.optimizers)

    def state_dict(self) -> dict[str, Any]:
        return self.pruner.state_dict() if self.pruner is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.pruner is None:
            self._pending_state = state_dict
        else:
            self.pruner.load_state_dict(state_dict)
