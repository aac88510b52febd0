"""MHA/MLP block view of LLaMA-family decoders: enumerate, skip (mask) and remove (surgery).

BlockPruner (Zhong et al., 2024, arXiv 2406.10594, Sec. 3.1) splits every decoder layer into two residual blocks:
the attention block of layer i is ``input_layernorm`` + ``self_attn`` and the MLP block is
``post_attention_layernorm`` + ``mlp``. Dropping a block leaves the residual stream unchanged, so a layer that
loses both blocks is the identity.

Block identity: ``Block(layer, kind)`` where ``layer`` indexes ``model.model.layers`` *as it is when you pass the
block in*. The search and the training mask work on the unpruned model, so their blocks are in its original
numbering; ``remove_blocks`` renumbers afterwards, and ``removed_blocks(model)`` reports what is missing in the
numbering of the pruned model (that is what a saved model records, replayable on a model built from its config).

Two ways to drop blocks:
- ``set_skipped`` / ``skipping``: a mask for training or evaluation. Parameters, state-dict keys and optimizer state
  stay as they are; a skipped sublayer still runs but its output is replaced by zeros, so its parameters get no
  gradient and the residual passes through exactly.
- ``remove_blocks``: surgery. Layers that lose both blocks are deleted and the rest renumbered (attention
  ``layer_idx`` for the KV cache, ``config.num_hidden_layers``, ``config.layer_types``); in a layer keeping one block
  the other sublayer becomes a parameter-free zero branch and its norm an identity. Skip and remove give identical
  logits.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from lightning_align.errors import ConfigError

BlockKind = Literal["attn", "mlp"]
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_PARTS: dict[str, tuple[str, str]] = {
    "attn": ("input_layernorm", "self_attn"),
    "mlp": ("post_attention_layernorm", "mlp"),
}


@dataclass(frozen=True, order=True)
class Block:
    """One residual block; ordering is residual-stream order (layer, then attn before mlp)."""

    layer: int
    kind: BlockKind

    def __post_init__(self) -> None:
        if self.kind not in _PARTS:
            raise ConfigError("block.kind", f"must be 'attn' or 'mlp', got {self.kind!r}")
        if self.layer < 0:
            raise ConfigError("block.layer", f"must be >= 0, got {self.layer}")

    @property
    def position(self) -> int:
        """Index in the residual stream: block p reads the output of block p - 1."""
        return 2 * self.layer + (self.kind == "mlp")

    def __str__(self) -> str:
        return f"{self.kind}{self.layer}"

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "kind": self.kind}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Block:
        return cls(int(record["layer"]), record["kind"])


class RemovedAttention(nn.Module):
    """Parameter-free stand-in for a removed attention sublayer: contributes nothing to the residual."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    """Parameter-free stand-in for a removed MLP sublayer: contributes nothing to the residual."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


_REMOVED: dict[str, type[nn.Module]] = {"attn": RemovedAttention, "mlp": RemovedMLP}


def check_model_type(model_type: str | None) -> None:
    """ConfigError for a model family without a block view (also usable on a bare ``config.json``)."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        raise ConfigError("model", f"model type {model_type!r} has no MHA/MLP block view (supported: {supported})")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported causal LM; ConfigError for a family without a block view."""
    config = getattr(model, "config", None)
    check_model_type(getattr(config, "model_type", None))
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError("model", f"{type(model).__name__} has no decoder layers at model.model.layers")
    layer_types = getattr(config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise ConfigError("model", f"mixed attention layer types {sorted(set(layer_types))} are not supported")
    return layers


def sublayer(layers: nn.ModuleList, block: Block) -> nn.Module:
    """The attention or MLP module of ``block`` (ConfigError when the layer does not exist)."""
    if block.layer >= len(layers):
        problem = f"block {block} refers to layer {block.layer} but the model has {len(layers)} layers"
        raise ConfigError("blocks", problem)
    return getattr(layers[block.layer], _PARTS[block.kind][1])


def is_removed(layers: nn.ModuleList, block: Block) -> bool:
    return isinstance(sublayer(layers, block), (RemovedAttention, RemovedMLP))


def all_blocks(model: nn.Module) -> list[Block]:
    """Blocks still present in the model, in residual-stream order."""
    layers = decoder_layers(model)
    blocks = [Block(i, kind) for i in range(len(layers)) for kind in ("attn", "mlp")]
    return [b for b in blocks if not is_removed(layers, b)]


def block_parameters(model: nn.Module) -> dict[Block, int]:
    """Parameter count of every present block (its norm + sublayer), in residual-stream order."""
    layers = decoder_layers(model)
    counts = {}
    for block in all_blocks(model):
        norm_name, sub_name = _PARTS[block.kind]
        layer = layers[block.layer]
        modules = (getattr(layer, norm_name), getattr(layer, sub_name))
        counts[block] = sum(p.numel() for m in modules for p in m.parameters())
    return counts


def count_parameters(model: nn.Module) -> int:
    """All parameters of the model, tied weights counted once (the denominator of the pruning ratio)."""
    return sum(p.numel() for p in model.parameters())


def _zero_skipped_output(module: nn.Module, args: tuple, output: Any) -> Any:
    if not getattr(module, "block_skipped", False):
        return None
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]),) + tuple(None for _ in output[1:])
    return torch.zeros_like(output)


def set_skipped(model: nn.Module, blocks: Iterable[Block]) -> None:
    """Mask exactly ``blocks`` (replacing any earlier mask); shapes, parameters and optimizer state are untouched.

    The mask lives on the sublayers themselves (``block_skipped`` flag read by a forward hook registered once per
    sublayer), so ``skipped_blocks`` derives it back and a deep copy of the model carries it.
    """
    layers = decoder_layers(model)
    wanted = set(blocks)
    for block in wanted:
        if is_removed(layers, block):
            raise ConfigError("blocks", f"block {block} is already removed and cannot be skipped")
    for block in all_blocks(model):
        module = sublayer(layers, block)
        if not hasattr(module, "block_skipped"):
            module.register_forward_hook(_zero_skipped_output)
        module.block_skipped = block in wanted


def skipped_blocks(model: nn.Module) -> frozenset[Block]:
    layers = decoder_layers(model)
    return frozenset(b for b in all_blocks(model) if getattr(sublayer(layers, b), "block_skipped", False))


@contextmanager
def skipping(model: nn.Module, blocks: Iterable[Block]) -> Iterator[nn.Module]:
    """Temporarily skip ``blocks`` (on top of nothing else), restoring the previous mask on exit."""
    previous = skipped_blocks(model)
    set_skipped(model, blocks)
    try:
        yield model
    finally:
        set_skipped(model, previous)


def remove_blocks(model: nn.Module, blocks: Iterable[Block]) -> nn.Module:
    """Cut ``blocks`` out of ``model`` in place (numbering as the model is now) and return it.

    Validates every block before touching the model. Any skip mask on surviving blocks is kept.
    """
    layers = decoder_layers(model)
    blocks = sorted(set(blocks))
    for block in blocks:
        if is_removed(layers, block):
            raise ConfigError("blocks", f"block {block} is already removed")
    for block in blocks:
        norm_name, sub_name = _PARTS[block.kind]
        layer = layers[block.layer]
        setattr(layer, norm_name, nn.Identity())
        setattr(layer, sub_name, _REMOVED[block.kind]())
    keep = [i for i in range(len(layers)) if not all(is_removed(layers, Block(i, k)) for k in _PARTS)]
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    model.model.layers = nn.ModuleList(layers[i] for i in keep)
    config.num_hidden_layers = len(keep)
    _renumber_attention(model.model.layers)
    return model


def _renumber_attention(layers: nn.ModuleList) -> None:
    """Give surviving attention modules consecutive KV-cache slots.

    Dense numbering over attention-bearing layers keeps cache slot 0 filled, which the cache uses to tell the
    sequence length during generation.
    """
    slot = 0
    for index, layer in enumerate(layers):
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = index
        if not isinstance(layer.self_attn, RemovedAttention):
            layer.self_attn.layer_idx = slot
            slot += 1


def removed_blocks(model: nn.Module) -> list[Block]:
    """Blocks missing from layers that still exist, in the model's current numbering.

    Whole removed layers are gone from the config; these partial removals are what a saved model must record so
    that ``remove_blocks`` can replay them on a model built from the saved config.
    """
    layers = decoder_layers(model)
    return [Block(i, k) for i in range(len(layers)) for k in ("attn", "mlp") if is_removed(layers, Block(i, k))]


def block_structure(model: nn.Module) -> dict[str, Any]:
    """The ``metadata["structure"]`` entry a saved pruned model needs: empty when only whole layers went.

    Whole-layer removals are already in the saved config (fewer layers), so plain ``from_pretrained`` loads them.
    """
    partial = removed_blocks(model)
    return {"removed_blocks": [b.to_json() for b in partial]} if partial else {}


def replay_removed_blocks(model: nn.Module, records: list[dict[str, Any]]) -> None:
    """Apply a recorded ``removed_blocks`` entry to a model freshly built from the saved config."""
    remove_blocks(model, [Block.from_json(r) for r in records])
