"""The optimizer + LR schedule every LightningModule of the project uses, configured by one dataclass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from jsonargparse.typing import (
    ClosedUnitInterval, NonNegativeFloat, NonNegativeInt, PositiveFloat, restricted_number_type,
)

from lightning_align.algorithms.schedule import warmup_cosine

# Adam's moment decay: 1 would never update a moment and divide its bias correction by zero (torch refuses it late).
MomentDecay = restricted_number_type("MomentDecay", float, [(">=", 0.0), ("<", 1.0)], join="and")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW (torch) or bitsandbytes' 8-bit AdamW, with linear warm-up then cosine decay to `min_lr_ratio` x lr.

    `adamw8bit` keeps the two Adam moments in 8 bits (about 75% less optimizer memory); bitsandbytes runs it on CPU too.
    """

    name: Literal["adamw", "adamw8bit"] = "adamw"
    lr: PositiveFloat = 3e-3
    weight_decay: NonNegativeFloat = 0.1
    beta1: MomentDecay = 0.9
    beta2: MomentDecay = 0.95
    warmup_steps: NonNegativeInt = 20
    min_lr_ratio: ClosedUnitInterval = 0.1


def _param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """No weight decay on norms and biases (1-D tensors), the usual choice for transformers."""
    decay, no_decay = [], []
    for _, param in named:
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig,
                    total_steps: int) -> dict:
    """Return what `configure_optimizers` returns: the optimizer and a per-step warm-up + cosine scheduler."""
    # plain floats: the config's constrained float types would go into the optimizer's state, and Lightning reads a
    # checkpoint back with `torch.load(weights_only=True)`, which refuses them
    groups = _param_groups(named_parameters, float(cfg.weight_decay))
    betas = (float(cfg.beta1), float(cfg.beta2))
    if cfg.name == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(groups, lr=float(cfg.lr), betas=betas)
    else:
        optimizer = torch.optim.AdamW(groups, lr=float(cfg.lr), betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
