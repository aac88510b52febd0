"""Turn a `ModelSpec` into a model and tokenizer: load a local directory or build the tiny default."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from lightning_align.errors import ConfigError
from lightning_align.models.checkpoint import load_pretrained
from lightning_align.models.spec import ModelSpec
from lightning_align.models.tokenizer import embedded_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _model_dir(spec: ModelSpec) -> Path:
    path = Path(spec.path)  # type: ignore[arg-type]
    if not (path / "config.json").is_file():
        raise ConfigError("model.path", f"'{path}' is not a Hugging Face model directory (no config.json)")
    return path


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The directory's own tokenizer, or the embedded BPE for a built model; always with a pad token, and without a
    chat template when `spec.chat_template` is False (the embedded BPE has none)."""
    if spec.path is None:
        return embedded_tokenizer(spec.built_sizes()["vocab_size"])
    tokenizer = AutoTokenizer.from_pretrained(_model_dir(spec), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not spec.chat_template:
        tokenizer.chat_template = None
    return tokenizer


def quantization_config(spec: ModelSpec) -> BitsAndBytesConfig | None:
    """bitsandbytes loading for frozen models (reference policy, reward model); runs on CPU and CUDA."""
    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if spec.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=DTYPES[spec.dtype],
                                  bnb_4bit_quant_type="nf4")
    return None


def build_llama(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A freshly initialised LLaMA of the spec's sizes; the seed makes the initial weights reproducible."""
    config = LlamaConfig(
        **{**spec.built_sizes(), "vocab_size": len(tokenizer)},
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(config)
    return model.to(DTYPES[spec.dtype])


def load_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """Load `spec.path` (offline; quantized when asked) or build the tiny LLaMA the spec describes."""
    if spec.path is None:
        if spec.quantization:
            raise ConfigError("model.quantization", "quantization applies to loaded models; set model.path")
        return build_llama(spec, tokenizer if tokenizer is not None else load_tokenizer(spec))
    kwargs = {"dtype": DTYPES[spec.dtype]}
    quant = quantization_config(spec)
    if quant is not None:
        kwargs["quantization_config"] = quant
    return load_pretrained(_model_dir(spec), **kwargs)
