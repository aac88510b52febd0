"""Blocks removed from a layer that stays, written as zeroed sublayers so plain transformers loads them exactly.

A compact save has no weights for such a block, and ``AutoModelForCausalLM.from_pretrained`` would fill them with
fresh random ones (see ``models.checkpoint``). A block marked ``dense_compatible`` (``remove_blocks(..., export=)``)
is instead saved as the family's own sublayer and norms with every tensor zero. That adds exactly 0 to the residual
in every supported family: zero q/k/v/o (biases too) give zero attention output, zero gate/up/down give zero MLP
output, and Gemma's post-norms map 0 to 0 (``x * rsqrt(mean(x^2) + eps) * (1 + w)`` at ``x = 0``).
"""
from __future__ import annotations

import torch
from torch import nn

from lightning_align.models.blocks import block_modules, decoder_layers, removed_blocks


def zeroed_block_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries (zeros, the model's dtype) for every ``dense_compatible`` removed block of ``model``.

    Shapes and names come from a decoder layer of the model's own class built on the meta device for the block's
    layer index, so they are what ``from_pretrained`` expects for that layer.
    """
    layers = decoder_layers(model)
    names = {id(module): name for name, module in model.named_modules()}
    dtype = next(model.parameters()).dtype
    tensors = {}
    for block in removed_blocks(model, "dense_compatible"):
        layer = layers[block.layer]
        with torch.device("meta"):
            fresh = type(layer)(model.config, block.layer)
        for module_name in block_modules(model, block.kind):
            for key, tensor in getattr(fresh, module_name).state_dict().items():
                tensors[f"{names[id(layer)]}.{module_name}.{key}"] = torch.zeros(tensor.shape, dtype=dtype)
    return tensors
