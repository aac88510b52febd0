"""MHA/MLP block view of decoder-only causal LMs: enumerate, skip (mask) and remove (surgery).

BlockPruner (Zhong et al., 2024, arXiv 2406.10594, Sec. 3.1) splits every decoder layer into two residual blocks,
each a sublayer with the norms around it. LLaMA-style layers (llama, mistral, qwen2, qwen3, phi3) norm only the
input: attention = ``input_layernorm`` + ``self_attn``, MLP = ``post_attention_layernorm`` + ``mlp``. Gemma 2/3 also
norm each sublayer's output before the residual add: attention = ``input_layernorm`` + ``self_attn`` +
``post_attention_layernorm``, MLP = ``pre_feedforward_layernorm`` + ``mlp`` + ``post_feedforward_layernorm``.
Dropping a block leaves the residual stream unchanged, so a layer that loses both blocks is the identity.

Block identity: ``Block(layer, kind)`` where ``layer`` indexes ``model.model.layers`` *as it is when you pass the
block in*. The search and the training mask work on the unpruned model, so their blocks are in its original
numbering; ``remove_blocks`` renumbers afterwards, and ``removed_blocks(model)`` reports what is missing in the
numbering of the pruned model (that is what a saved model records, replayable on a model built from its config).

Two ways to drop blocks:
- ``set_skipped`` / ``skipping``: a mask for training or evaluation. Parameters, state-dict keys and optimizer state
  stay as they are; a skipped sublayer still runs but its output is replaced by zeros, so its parameters get no
  gradient and the residual passes through exactly.
- ``remove_blocks``: surgery. Layers that lose both blocks are deleted and the rest renumbered (``layer_idx`` = KV-cache
  slot, ``config.num_hidden_layers``, ``config.layer_types``); in a layer keeping one block the other sublayer becomes
  a parameter-free zero branch and its norms identities. Skip and remove give identical logits. Each stand-in
  remembers how a saved model writes it (``export``, see ``models.checkpoint``).
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
Export = Literal["compact", "dense_compatible"]
SUBLAYER: dict[str, str] = {"attn": "self_attn", "mlp": "mlp"}
_INPUT_NORMED = {"attn": ("input_layernorm", "self_attn"), "mlp": ("post_attention_layernorm", "mlp")}
_SANDWICH_NORMED = {
    "attn": ("input_layernorm", "self_attn", "post_attention_layernorm"),
    "mlp": ("pre_feedforward_layernorm", "mlp", "post_feedforward_layernorm"),
}
# model_type -> the modules of a decoder layer that make up each block (checked against each family's decoder-layer
# forward in transformers 5.24)
FAMILIES: dict[str, dict[str, tuple[str, ...]]] = {
    "llama": _INPUT_NORMED, "mistral": _INPUT_NORMED, "qwen2": _INPUT_NORMED, "qwen3": _INPUT_NORMED,
    "phi3": _INPUT_NORMED, "gemma2": _SANDWICH_NORMED, "gemma3_text": _SANDWICH_NORMED,
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)


@dataclass(frozen=True, order=True)
class Block:
    """One residual block; ordering is residual-stream order (layer, then attn before mlp)."""

    layer: int
    kind: BlockKind

    def __post_init__(self) -> None:
        if self.kind not in SUBLAYER:
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
    """Parameter-free stand-in for a removed attention sublayer: contributes nothing to the residual.

    It still fills its KV-cache slot with a one-channel placeholder as long as the sequence, so every slot keeps the
    sliding/full type its layer has in ``config.layer_types`` and slot 0 still tells the cache the sequence length.
    """

    def __init__(self, layer_idx: int, export: Export = "compact") -> None:
        super().__init__()
        self.layer_idx, self.export = layer_idx, export

    def forward(self, hidden_states: torch.Tensor, *args: Any, cache: Any = None,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
        if cache is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        return torch.zeros_like(hidden_states), None


class RemovedMLP(nn.Module):
    """Parameter-free stand-in for a removed MLP sublayer: contributes nothing to the residual."""

    def __init__(self, export: Export = "compact") -> None:
        super().__init__()
        self.export = export

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def check_model_type(model_type: str | None) -> None:
    """ConfigError for a model family without a block view (also usable on a bare ``config.json``)."""
    if model_type not in FAMILIES:
        supported = ", ".join(SUPPORTED_MODEL_TYPES)
        raise ConfigError("model", f"model type {model_type!r} has no MHA/MLP block view (supported: {supported})")


def block_modules(model: nn.Module, kind: BlockKind) -> tuple[str, ...]:
    """Names of the decoder-layer modules (sublayer and its norms) that make up a ``kind`` block of ``model``."""
    return FAMILIES[model.config.model_type][kind]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported causal LM; ConfigError for a family without a block view."""
    config = getattr(model, "config", None)
    check_model_type(getattr(config, "model_type", None))
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError("model", f"{type(model).__name__} has no decoder layers at model.model.layers")
    return layers


def sublayer(layers: nn.ModuleList, block: Block) -> nn.Module:
    """The attention or MLP module of ``block`` (ConfigError when the layer does not exist)."""
    if block.layer >= len(layers):
        problem = f"block {block} refers to layer {block.layer} but the model has {len(layers)} layers"
        raise ConfigError("blocks", problem)
    return getattr(layers[block.layer], SUBLAYER[block.kind])


def is_removed(layers: nn.ModuleList, block: Block) -> bool:
    return isinstance(sublayer(layers, block), (RemovedAttention, RemovedMLP))


def all_blocks(model: nn.Module) -> list[Block]:
    """Blocks still present in the model, in residual-stream order."""
    layers = decoder_layers(model)
    blocks = [Block(i, kind) for i in range(len(layers)) for kind in ("attn", "mlp")]
    return [b for b in blocks if not is_removed(layers, b)]


def block_parameters(model: nn.Module) -> dict[Block, int]:
    """Parameter count of every present block (its norms + sublayer), in residual-stream order."""
    layers = decoder_layers(model)
    counts = {}
    for block in all_blocks(model):
        modules = [getattr(layers[block.layer], name) for name in block_modules(model, block.kind)]
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


def remove_blocks(model: nn.Module, blocks: Iterable[Block], export: Export = "compact") -> nn.Module:
    """Cut ``blocks`` out of ``model`` in place (numbering as the model is now) and return it.

    Validates every block before touching the model. Any skip mask on surviving blocks is kept. ``export`` says how
    a saved model writes a block removed from a layer that stays (whole removed layers are simply absent).
    """
    layers = decoder_layers(model)
    blocks = sorted(set(blocks))
    for block in blocks:
        if is_removed(layers, block):
            raise ConfigError("blocks", f"block {block} is already removed")
    for block in blocks:
        layer = layers[block.layer]
        for name in block_modules(model, block.kind):
            setattr(layer, name, nn.Identity())
        stand_in = RemovedAttention(block.layer, export) if block.kind == "attn" else RemovedMLP(export)
        setattr(layer, SUBLAYER[block.kind], stand_in)
    keep = [i for i in range(len(layers)) if not all(is_removed(layers, Block(i, k)) for k in SUBLAYER)]
    config = model.config
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in keep]
    model.model.layers = nn.ModuleList(layers[i] for i in keep)
    config.num_hidden_layers = len(keep)
    _renumber_attention(model.model.layers)
    return model


def _renumber_attention(layers: nn.ModuleList) -> None:
    """KV-cache slot = layer index, as in a model built from the pruned config (so slot types follow ``layer_types``)."""
    for index, layer in enumerate(layers):
        if hasattr(layer, "layer_idx"):
            layer.layer_idx = index
        layer.self_attn.layer_idx = index


def removed_blocks(model: nn.Module, export: Export | None = None) -> list[Block]:
    """Blocks missing from layers that still exist, in the model's current numbering (only those saved as
    ``export`` when given).

    Whole removed layers are gone from the config; these partial removals are what a saved model must record so
    that ``remove_blocks`` can replay them on a model built from the saved config.
    """
    layers = decoder_layers(model)
    return [Block(i, k) for i in range(len(layers)) for k in SUBLAYER if is_removed(layers, Block(i, k))
            and export in (None, sublayer(layers, Block(i, k)).export)]


def block_structure(model: nn.Module) -> dict[str, Any]:
    """The ``metadata["structure"]`` entries a saved pruned model needs: empty when only whole layers went.

    Whole-layer removals are already in the saved config (fewer layers), so plain ``from_pretrained`` loads them.
    ``removed_blocks`` are absent from the saved weights; ``zeroed_blocks`` are saved as zeroed sublayers.
    """
    entries = {"removed_blocks": removed_blocks(model, "compact"),
               "zeroed_blocks": removed_blocks(model, "dense_compatible")}
    return {key: [b.to_json() for b in blocks] for key, blocks in entries.items() if blocks}


def replay_removed_blocks(model: nn.Module, records: list[dict[str, Any]]) -> None:
    """Apply a recorded ``removed_blocks`` entry to a model freshly built from the saved config."""
    remove_blocks(model, [Block.from_json(r) for r in records])


def replay_zeroed_blocks(model: nn.Module, records: list[dict[str, Any]]) -> None:
    """Cut a loaded dense-compatible model's zeroed blocks out again, to be saved zeroed again."""
    remove_blocks(model, [Block.from_json(r) for r in records], "dense_compatible")
