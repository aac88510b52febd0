"""Tiny randomly initialised decoders of each family with a block view, for fast tests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

VOCAB = 101
# every family with a block view; gemma2/gemma3_text alternate sliding-window and full attention layers
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]
SLIDING_WINDOW = 4


def tiny_decoder(
    model_type: str = "llama", layers: int = 3, seed: int = 0, tie: bool = False, vocab: int = VOCAB
) -> PreTrainedModel:
    """A fp32 decoder with hidden 32, 4 heads (2 KV heads), eval mode; weights drawn from ``seed``."""
    family = {}
    if model_type.startswith("gemma"):
        family = {"sliding_window": SLIDING_WINDOW,
                  "layer_types": [("sliding_attention", "full_attention")[i % 2] for i in range(layers)]}
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **family,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def token_batch(batch: int = 3, length: int = 12, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=generator)


@pytest.fixture(scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread: block-by-block searches issue thousands of tiny ops, and on a shared CPU every
    multi-threaded op waits for a descheduled worker (measured: 21 s with 2 threads vs 0.1 s with 1 for one test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
