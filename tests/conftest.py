"""Tiny real models and a tiny byte-level BPE tokenizer, built in seconds, shared by the tests."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from lightning_align.models.loading import build_llama
from lightning_align.models.spec import ModelSpec
from lightning_align.models.tokenizer import train_bpe

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a class defines attributes and methods for its instances",
    "the for statement iterates over the items of a sequence",
    "Exceptions are raised by the raise statement: raise ValueError(x)",
    "numbers like 3.14 and 42 are literals; names like my_var are identifiers",
] * 4

TINY = ModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return train_bpe(TEXTS, 300)


@pytest.fixture
def tiny_lm(tokenizer) -> LlamaForCausalLM:
    return build_llama(TINY, tokenizer).eval()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, tokenizer):
    """A tiny causal LM saved as a model directory, as a previous stage would hand it on."""
    from lightning_align.models.checkpoint import save_model_dir

    return save_model_dir(build_llama(TINY, tokenizer), tokenizer, tmp_path_factory.mktemp("lm") / "model")


def write_pairs(path, records) -> str:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# Separable by tokens alone: chosen responses are plain words, rejected ones carry digits and symbols.
PAIRS = [{"prompt": p, "chosen": c, "rejected": r}
         for p in ("the quick", "a class", "the for")
         for c, r in ((" brown fox jumps", " 3.14 42 my_var"), (" over the lazy dog", " ValueError(x) 42"),
                      (" defines attributes", " raise 3.14:"), (" iterates over items", " my_var(42)"))]
