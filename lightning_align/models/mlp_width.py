"""Structural surgery on FFN width: keep a subset of each decoder layer's intermediate neurons.

A gated MLP computes `down(act(gate(x)) * up(x))`; intermediate neuron `j` owns row `j` of `gate_proj` and `up_proj`
and column `j` of `down_proj`. Phi-3 fuses the two into `gate_up_proj` (gate rows first, then up rows), where neuron
`j` owns rows `j` and `width + j`. Dropping all of a neuron's rows and its column removes it exactly, so a model
whose pruned neurons were masked to zero gives the same logits after slicing. Only families with a block view
(`models.blocks.SUPPORTED_MODEL_TYPES`) are handled; others are refused with a ConfigError. Per-layer widths that differ cannot be
written in a plain HF config; they are recorded as `{"intermediate_sizes": [...]}` in the checkpoint metadata and
replayed by `resize_mlp_widths` before the weights are loaded.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import PreTrainedModel

from lightning_align.models.adam_moments import move_moments
from lightning_align.models.blocks import RemovedMLP, decoder_layers


def mlp_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The MLP of every decoder layer that still has one, in depth order (modules with gate/up/down projections).

    A layer whose MLP block was removed (see `models.blocks`) has no neurons and is left out, so widths and keep
    indices always refer to the present MLPs in depth order.
    """
    return [layer.mlp for layer in decoder_layers(model) if not isinstance(layer.mlp, RemovedMLP)]


def input_projections(mlp: nn.Module) -> list[tuple[str, int]]:
    """(attribute, stacked halves) of the linears whose output rows belong to the neurons: half `h` of a fused
    projection holds neuron `j` in row `h * width + j`."""
    return [("gate_up_proj", 2)] if hasattr(mlp, "gate_up_proj") else [("gate_proj", 1), ("up_proj", 1)]


def mlp_widths(model: PreTrainedModel) -> list[int]:
    return [mlp.down_proj.in_features for mlp in mlp_modules(model)]


def _sliced_linear(linear: nn.Linear, index: torch.Tensor, dim: int,
                   optimizers: Sequence[torch.optim.Optimizer] = ()) -> nn.Linear:
    """A new Linear keeping `index` along the weight's `dim` (0 = output rows, 1 = input columns); each optimizer
    holding the old tensors gets the new ones, with their moments sliced the same way."""
    def select(along: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda tensor: tensor.index_select(along, index.to(tensor.device))

    keep_weight, keep_bias = select(dim), (select(0) if dim == 0 else lambda tensor: tensor)
    weight = keep_weight(linear.weight.detach())
    out_features, in_features = weight.shape
    sliced = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                       device=weight.device, dtype=weight.dtype)
    for name, keep in (("weight", keep_weight), ("bias", keep_bias)):
        old, new = getattr(linear, name), getattr(sliced, name)
        if old is not None:
            new.data.copy_(keep(old.detach()))
            new.requires_grad_(old.requires_grad)
            move_moments(optimizers, old, new, keep)
    return sliced


def slice_mlp(mlp: nn.Module, index: torch.Tensor, optimizers: Sequence[torch.optim.Optimizer] = ()) -> nn.Module:
    """Keep intermediate neurons `index` of one gated MLP, in place (sorted, so the kept neurons keep their order);
    the AdamW moments of `optimizers` are sliced with the weights."""
    index = torch.as_tensor(index, dtype=torch.long).sort().values
    width = mlp.down_proj.in_features
    for name, halves in input_projections(mlp):
        rows = torch.cat([index + half * width for half in range(halves)])
        setattr(mlp, name, _sliced_linear(getattr(mlp, name), rows, 0, optimizers))
    mlp.down_proj = _sliced_linear(mlp.down_proj, index, 1, optimizers)
    mlp.intermediate_size = int(index.numel())
    return mlp


def slice_mlp_widths(model: PreTrainedModel, keep: Sequence[torch.Tensor],
                     optimizers: Sequence[torch.optim.Optimizer] = ()) -> PreTrainedModel:
    """Keep intermediate neurons `keep[i]` (sorted indices) of layer `i`, in place; returns the model.

    `optimizers` that train the model keep training it: their AdamW moments are sliced with the same indices
    (`models.adam_moments.move_moments`), so the surgery never separates a weight from its moments.

    When every layer ends with the same width, `config.intermediate_size` is set to it so the saved model is a plain
    HF checkpoint; otherwise the config keeps its original width and `width_structure` must go into the metadata.
    """
    mlps = mlp_modules(model)
    if len(keep) != len(mlps):
        raise ValueError(f"got {len(keep)} index sets for {len(mlps)} decoder layers")
    for mlp, index in zip(mlps, keep):
        slice_mlp(mlp, index, optimizers)
    widths = set(mlp_widths(model))
    if len(widths) == 1:
        model.config.intermediate_size = widths.pop()
    return model


def resize_mlp_widths(model: PreTrainedModel, sizes: Sequence[int]) -> PreTrainedModel:
    """Give layer `i` an MLP of width `sizes[i]` (its first neurons), so a checkpoint with those shapes can load."""
    return slice_mlp_widths(model, [torch.arange(size) for size in sizes])


def width_structure(model: PreTrainedModel) -> dict[str, list[int]]:
    """Metadata `structure` entry needed to rebuild this model: empty when the config already says the width."""
    widths = mlp_widths(model)
    if all(width == getattr(model.config, "intermediate_size", None) for width in widths):
        return {}
    return {"intermediate_sizes": widths}
