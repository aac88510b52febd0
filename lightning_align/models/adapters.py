"""LoRA / QLoRA through PEFT: adapters attached when a module loads the model it trains, merged away on export.

Every module trains `prepare_for_training(load(spec))` and exports through `export_model_dir`, so a stage's output is
a plain Hugging Face directory whatever the spec asked for: the next stage, `load_pretrained` and plain transformers
read it without PEFT.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.spec import ModelSpec

ADAPTER_DIR = "adapter"  # where `keep_adapters` saves the adapter alone, inside the stage's output directory
BaseLoader = Callable[[ModelSpec, PreTrainedTokenizerBase], PreTrainedModel]


def prepare_for_training(model: PreTrainedModel, spec: ModelSpec, heads: Sequence[str] = ()) -> PreTrainedModel:
    """Apply the spec's gradient checkpointing and adapters; without `spec.lora` the whole model trains.

    `heads` are modules that train in full next to the adapters (a reward model's freshly initialised `score`).
    A quantized base is first prepared the QLoRA way (norms in fp32, input gradients on for checkpointing).
    """
    if spec.lora is None:
        if spec.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model
    if spec.quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # a frozen embedding would otherwise cut the recomputed graph
    lora = spec.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules) if lora.target_modules else "all-linear",
                        modules_to_save=list(heads) or None)
    return get_peft_model(model, config)


def merged(model: PreTrainedModel, spec: ModelSpec, load_base: BaseLoader,
           tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The model to save: `model` itself, or for an adapter model its adapters merged into a freshly loaded
    full-precision copy of the base (for QLoRA the base's original weights, not their 4/8-bit rounding); the
    training model is left as it is."""
    if not isinstance(model, PeftModel):
        return model
    base = load_base(replace(spec, quantization=None, lora=None, gradient_checkpointing=False), tokenizer)
    fresh = get_peft_model(base, copy.deepcopy(model.peft_config["default"]))
    set_peft_model_state_dict(fresh, {k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()})
    return fresh.merge_and_unload()


def export_model_dir(model: PreTrainedModel, spec: ModelSpec, load_base: BaseLoader,
                     tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, metadata: dict[str, Any] | None = None,
                     files: dict[str, str | bytes] | None = None) -> Path:
    """`save_model_dir` of the merged model; with `lora.keep_adapters` the adapter (PEFT format) goes to `adapter/`.

    An IFPruning model (the LLM with its sparsity predictor) is saved with its predictor, whatever stage loaded it.
    """
    if hasattr(model, "save_with_predictor"):
        return model.save_with_predictor(out_dir, tokenizer, metadata, files)
    out = save_model_dir(merged(model, spec, load_base, tokenizer), tokenizer, out_dir, metadata, files)
    if spec.lora is not None and spec.lora.keep_adapters:
        model.save_pretrained(out / ADAPTER_DIR)
    return out
