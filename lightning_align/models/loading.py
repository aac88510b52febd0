"""Turn a `ModelSpec` into a model and tokenizer: load a local directory or build the tiny default."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import torch
from transformers import AutoTokenizer, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from lightning_align.errors import ConfigError
from lightning_align.models.checkpoint import load_pretrained, read_metadata
from lightning_align.models.spec import ModelSpec
from lightning_align.models.tokenizer import embedded_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_dir_problem(path: Path, tokenizer: bool = True) -> str | None:
    """Why `path` cannot be loaded as a model directory (with its tokenizer when `tokenizer`), from file names alone
    so planning can ask; None when it can."""
    if not path.exists():
        return "does not exist"
    if not path.is_dir():
        return "is a file, not a model directory"
    if not any(path.iterdir()):
        return "is an empty directory (no config.json)"
    if not (path / "config.json").is_file():
        return "is not a Hugging Face model directory (no config.json)"
    try:
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except ValueError:  # malformed JSON or bytes that are not UTF-8
        return "has a config.json that is not valid JSON"
    if tokenizer and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return "has no tokenizer (tokenizer.json or tokenizer_config.json)"
    return None


def _model_dir(spec: ModelSpec) -> Path:
    path = Path(spec.path)  # type: ignore[arg-type]
    problem = model_dir_problem(path, tokenizer=False)
    if problem is not None:
        raise ConfigError("model.path", f"'{path}' {problem}")
    return path


REMOTE_CODE_KEY = "model.trust_remote_code"


@contextmanager
def remote_code_refused(model_dir: Path, key: str = REMOTE_CODE_KEY, can_trust: bool = True) -> Iterator[None]:
    """Name the key when transformers refuses a directory that needs its own Python code (with
    `trust_remote_code=False` it raises instead of asking at the terminal); `can_trust` says whether `key` is the
    option that allows it."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        remedy = f"set {key}=true only if you trust that code" if can_trust else "that code is never run here"
        raise ConfigError(key, f"'{model_dir}' needs to run the Python code it ships (config.json auto_map); "
                          f"{remedy}") from None


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The directory's own tokenizer, or the embedded BPE for a built model; always with a pad token, and without a
    chat template when `spec.chat_template` is False (the embedded BPE has none)."""
    if spec.path is None:
        return embedded_tokenizer(spec.built_sizes()["vocab_size"])
    model_dir = _model_dir(spec)
    with remote_code_refused(model_dir):
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True,
                                                  trust_remote_code=spec.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not spec.chat_template:
        tokenizer.chat_template = None
    return tokenizer


def quantization_config(quantization: Optional[str], dtype: str, model_dir: Path, key: str
                        ) -> BitsAndBytesConfig | None:
    """bitsandbytes loading (runs on CPU and CUDA) for a frozen model or a QLoRA base.

    A directory with a recorded structure (pruned blocks or widths) is refused: its weights are loaded into a model
    rebuilt by `load_pretrained`, not by transformers' quantizing loader, so they would stay full precision.
    """
    if quantization is None:
        return None
    if read_metadata(model_dir).get("structure"):
        raise ConfigError(key, f"'{model_dir}' was structurally pruned (lightning_align.json 'structure'), which "
                          "quantized loading does not support; drop the quantization")
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=DTYPES[dtype], bnb_4bit_quant_type="nf4")


def load_dir(model_dir: Path, dtype: str = "float32", quantization: Optional[str] = None,
             key: str = "model.quantization", trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM from a model directory, in `dtype`, quantized when asked (`key` names the option on refusal)."""
    quant = quantization_config(quantization, dtype, model_dir, key)
    with remote_code_refused(model_dir):
        return load_pretrained(model_dir, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                               **({} if quant is None else {"quantization_config": quant}))


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
    return load_dir(_model_dir(spec), spec.dtype, spec.quantization, trust_remote_code=spec.trust_remote_code)
