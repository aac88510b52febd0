"""Gradual FFN-width pruning by sensitivity, interleaved with training (IDEA Prune, arXiv 2503.05920).

The paper prunes intermediate neurons of the enlarged model a few at a time while training continues, so capacity
can move onto the survivors. Its exact score is not public; we use the PLATON / LoSparse choice from the same
group: the sensitivity `|θ · ∂L/∂θ|` (first-order estimate of the loss change when θ is zeroed), smoothed by an
exponential moving average over steps and summed per neuron over its `gate_proj`/`up_proj` rows (both halves of a
fused `gate_up_proj`) and its `down_proj` column. The kept width follows a cubic schedule over a pruning window (as in PLATON).

Pruned neurons are *masked* (their input to `down_proj` is multiplied by 0), so parameter and optimizer shapes stay
fixed during the stage; `keep_indices()` then feeds `lightning_align.models.mlp_width.slice_mlp_widths` at stage end.
"""
from __future__ import annotations

import math
from typing import Callable, Literal, Optional

import torch
from torch import nn
from transformers import PreTrainedModel

from lightning_align.errors import ConfigError
from lightning_align.models.mlp_width import input_projections, mlp_modules

Scope = Literal["layer", "global"]


def cubic_width(step: int, start: int, end: int, initial: int, final: int) -> int:
    """Kept width at `step`: `initial` before the window, `final` from `end` on, a cubic descent in between.

    Rounded up, so the width never drops below the cubic curve and reaches `final` exactly at `end`.
    """
    if step < start:
        return initial
    if step >= end:
        return final
    remaining = (1.0 - (step - start) / (end - start)) ** 3
    return final + math.ceil((initial - final) * remaining - 1e-9)


def neuron_sensitivity(mlp: nn.Module) -> torch.Tensor:
    """|θ · ∂L/∂θ| summed per intermediate neuron; needs the gradients of the last backward pass."""
    width = mlp.down_proj.in_features
    score = torch.zeros(width, device=mlp.down_proj.weight.device)
    parts = [(getattr(mlp, name), 1, halves) for name, halves in input_projections(mlp)] + [(mlp.down_proj, 0, 1)]
    for linear, dim, halves in parts:
        if linear.weight.grad is not None:
            per_row = (linear.weight.detach() * linear.weight.grad.detach()).abs().float().sum(dim)
            score += per_row.view(halves, width).sum(0)
    return score


class WidthPruner:
    """Sensitivity EMA, masks and the pruning decision for every decoder layer's FFN neurons.

    `scope="layer"` keeps the same number of neurons in every layer (the saved config stays plain HF);
    `scope="global"` ranks neurons across layers, keeping `target_width * num_layers` in total and at least
    `min_width` per layer (per-layer widths are then recorded in the checkpoint metadata).
    """

    def __init__(self, model: PreTrainedModel, target_width: int, beta: float = 0.85,
                 scope: Scope = "layer", min_width: int = 1) -> None:
        self.mlps = mlp_modules(model)
        widths = {mlp.down_proj.in_features for mlp in self.mlps}
        if len(widths) != 1:
            raise ConfigError("model", f"width pruning starts from one FFN width per layer, got {sorted(widths)}")
        self.initial_width = widths.pop()
        if not 0 < target_width <= self.initial_width:
            raise ConfigError("target_width", f"must be in (0, {self.initial_width}] (the incoming FFN width), "
                              f"got {target_width}")
        if not 0 < min_width <= target_width:
            raise ConfigError("min_width", f"must be in (0, target_width={target_width}], got {min_width}")
        if scope not in ("layer", "global"):
            raise ConfigError("scope", f"must be 'layer' or 'global', got {scope!r}")
        self.target_width, self.beta, self.scope, self.min_width = target_width, beta, scope, min_width
        device = self.mlps[0].down_proj.weight.device
        self.scores = torch.zeros(len(self.mlps), self.initial_width, device=device)
        self.masks = torch.ones(len(self.mlps), self.initial_width, dtype=torch.bool, device=device)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> None:
        """Mask pruned neurons in the forward pass (a pre-hook on each `down_proj`)."""
        self.detach()
        for i, mlp in enumerate(self.mlps):
            self._hooks.append(mlp.down_proj.register_forward_pre_hook(self._mask_hook(i)))

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _mask_hook(self, layer: int):
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (args[0] * self.masks[layer].to(args[0].dtype),) + args[1:]
        return hook

    def accumulate(self, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """Fold the current gradients' sensitivity into the EMA; call after backward, before the optimizer step.

        `reduce` combines the fresh [layers, width] sensitivities of all processes of a distributed run.
        """
        fresh = torch.stack([neuron_sensitivity(mlp) for mlp in self.mlps])
        if reduce is not None:
            fresh = reduce(fresh)
        self.scores.mul_(self.beta).add_(fresh.to(self.scores.device), alpha=1.0 - self.beta)

    def kept_widths(self) -> list[int]:
        return [int(n) for n in self.masks.sum(dim=1)]

    def prune_to(self, width: int) -> int:
        """Mask the least sensitive live neurons until the (mean) kept width is `width`; returns how many went.

        Masks only grow: a pruned neuron never comes back, so the width is monotone along the schedule.
        """
        if self.scope == "layer":
            removed = 0
            for layer in range(len(self.mlps)):
                removed += self._drop(layer, self.kept_widths()[layer] - width)
            return removed
        excess = int(self.masks.sum()) - width * len(self.mlps)
        if excess <= 0:
            return 0
        ranked = self.scores.masked_fill(~self.masks, math.inf)
        for layer, kept in enumerate(self.kept_widths()):
            live = self.scores[layer].masked_fill(~self.masks[layer], -math.inf)
            ranked[layer, live.topk(min(self.min_width, kept)).indices] = math.inf
        victims = ranked.flatten().topk(excess, largest=False).indices
        self.masks.view(-1)[victims] = False
        return excess

    def _drop(self, layer: int, count: int) -> int:
        if count <= 0:
            return 0
        ranked = self.scores[layer].masked_fill(~self.masks[layer], math.inf)
        self.masks[layer, ranked.topk(count, largest=False).indices] = False
        return count

    def keep_indices(self) -> list[torch.Tensor]:
        """Sorted indices of the live neurons of each layer, for `slice_mlp_widths`."""
        return [mask.nonzero().flatten().cpu() for mask in self.masks]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"scores": self.scores.clone(), "masks": self.masks.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.scores.copy_(state["scores"])
        self.masks.copy_(state["masks"])
