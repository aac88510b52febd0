"""What model a stage starts from: a local Hugging Face directory, or a tiny LLaMA built from sizes."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional

from jsonargparse.typing import ClosedUnitInterval, PositiveFloat, PositiveInt
from omegaconf import OmegaConf

from lightning_align.errors import ConfigError

SIZE_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings")
# The embedded tiny default's sizes are declared once, in conf/model/tiny_llama.yaml; a built spec takes every size
# it leaves unset from there, so a stage run alone builds the same model as the pipeline.
BUILT_DEFAULTS: dict[str, Any] = {
    key: value for key, value in OmegaConf.to_container(
        OmegaConf.load(Path(__file__).parents[1] / "conf" / "model" / "tiny_llama.yaml")).items()
    if key in SIZE_KEYS
}

Quantization = Literal["8bit", "4bit"]  # bitsandbytes int8 (LLM.int8()) or 4-bit NF4


@dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters (LoRA, Hu et al. 2021) on the linear layers named in `target_modules` (None: every linear
    layer but the output head). Only adapters (and a reward model's scalar head) train; the update is scaled by
    `alpha / r`. Export merges them into the base weights, so the saved directory is a plain Hugging Face model;
    `keep_adapters` also saves the adapter alone (PEFT format) under `adapter/`."""

    r: PositiveInt = 8
    alpha: PositiveFloat = 16.0
    dropout: ClosedUnitInterval = 0.05
    target_modules: Optional[tuple[str, ...]] = None
    keep_adapters: bool = False


@dataclass(frozen=True)
class ModelSpec:
    """The model a stage trains: one to load (`path`) or to build (the size fields).

    The built model is a LLaMA-architecture `LlamaForCausalLM`; its tokenizer is a byte-level BPE trained on the
    embedded corpus with `vocab_size` entries, so the size fields fully determine a reproducible model. A loaded
    model keeps its own sizes: a spec with `path` and any size is refused, because the sizes would otherwise be
    ignored silently (or, for a width target derived from them, destroy the pretrained model).

    `lora` trains adapters instead of the full model. `quantization` loads the base through bitsandbytes and is
    only accepted with `lora` (QLoRA): full training of 8/4-bit weights does not work (bitsandbytes layers have no
    trainable weight, so only the embeddings would learn). Frozen models (KD teacher, scoring reward model) have
    their own quantization options. `gradient_checkpointing` recomputes activations in the backward pass.
    """

    path: Optional[str] = None
    vocab_size: Optional[PositiveInt] = None
    hidden_size: Optional[PositiveInt] = None
    intermediate_size: Optional[PositiveInt] = None
    num_hidden_layers: Optional[PositiveInt] = None
    num_attention_heads: Optional[PositiveInt] = None
    num_key_value_heads: Optional[PositiveInt] = None
    max_position_embeddings: Optional[PositiveInt] = None
    tie_word_embeddings: Optional[bool] = None
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Optional[Quantization] = None
    lora: Optional[LoraSpec] = None
    gradient_checkpointing: bool = False
    chat_template: bool = True
    """Encode prompts through the tokenizer's chat template (if it has one). False drops the template, e.g. to train
    an instruct model on raw text; the saved tokenizer then has none either, so later stages follow."""
    trust_remote_code: bool = False
    """Let transformers import and run the Python files a model directory ships (its `config.json` `auto_map`) to
    build the model and tokenizer. Off unless set: that code runs with the user's rights; set it only for a
    directory whose code you have read."""

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if f.name in SIZE_KEYS and getattr(self, f.name) is not None]
        if self.path is not None and given:
            raise ConfigError(given[0], f"sizes build a new model, but 'path' loads one that keeps its own sizes "
                              f"(enlarging or reshaping a pretrained model is not supported); drop "
                              f"{', '.join(given)} or use model=pretrained / pipeline=pretrained_*")
        if self.path is None:
            self._check_heads(self.built_sizes())
        if self.quantization is not None and self.lora is None:
            raise ConfigError("quantization", f"a {self.quantization} model cannot be fully trained (only its "
                              "embeddings would learn); add lora (QLoRA) or drop quantization")

    @staticmethod
    def _check_heads(sizes: dict[str, Any]) -> None:
        """Shapes LLaMA attention needs: whole heads of hidden_size (else the projections silently drop the rest),
        query heads in equal groups per key/value head (grouped-query attention), an even head size (rotary)."""
        heads, kv_heads, hidden = sizes["num_attention_heads"], sizes["num_key_value_heads"], sizes["hidden_size"]
        if heads % kv_heads:
            raise ConfigError("num_key_value_heads", f"must divide num_attention_heads ({heads}), got {kv_heads}")
        if hidden % heads or (hidden // heads) % 2:
            raise ConfigError("num_attention_heads", f"must split hidden_size ({hidden}) into heads of an even size, "
                              f"got {heads} heads")

    def built_sizes(self) -> dict[str, Any]:
        """Every size of the model to build: the spec's own, and the tiny default's where it sets none."""
        return {key: BUILT_DEFAULTS[key] if getattr(self, key) is None else getattr(self, key) for key in SIZE_KEYS}
