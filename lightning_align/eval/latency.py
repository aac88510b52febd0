"""Forward and generation latency of models on one fixed input, measured side by side."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn


@torch.inference_mode()
def forward_latency_ms(
    models: list[nn.Module], tokens: torch.Tensor, repeats: int = 10, warmup: int = 2, threads: int | None = None
) -> list[float]:
    """Median wall time (ms) of one forward per model.

    Runs alternate between the models so that load from other processes hits them alike. ``threads`` sets torch's
    intra-op threads for the measurement only (restored after): on a shared CPU, multi-threaded timings mostly
    measure waits for descheduled workers (seen: 1.3-1.9 s vs 48 ms single-threaded for the same forward).
    """
    def forward(model: nn.Module, device: torch.device) -> None:
        model(input_ids=tokens.to(device), use_cache=False)

    return _alternating_medians(models, forward, repeats, warmup, threads)


@torch.inference_mode()
def generation_latency_ms_per_token(
    models: list[nn.Module], prompt: torch.Tensor, new_tokens: int, repeats: int = 5, warmup: int = 1,
    threads: int | None = None,
) -> list[float]:
    """Median wall time (ms) per generated token of greedy, KV-cached decoding of exactly `new_tokens` tokens
    after `prompt` [1, T] (prefill included, spread over the tokens), per model; same alternation and threads as
    `forward_latency_ms`."""
    def decode(model: nn.Module, device: torch.device) -> None:
        config = model.generation_config
        eos = config.eos_token_id if not isinstance(config.eos_token_id, list) else config.eos_token_id[0]
        model.generate(input_ids=prompt.to(device), attention_mask=torch.ones_like(prompt).to(device),
                       max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       pad_token_id=config.pad_token_id if config.pad_token_id is not None else eos)

    return [ms / new_tokens for ms in _alternating_medians(models, decode, repeats, warmup, threads)]


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _alternating_medians(models: list[nn.Module], call: Callable[[nn.Module, torch.device], None], repeats: int,
                         warmup: int, threads: int | None) -> list[float]:
    times: list[list[float]] = [[] for _ in models]
    with _threads(threads):
        for round_ in range(warmup + repeats):
            for i, model in enumerate(models):
                device = next(model.parameters()).device
                start = time.perf_counter()
                call(model, device)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= warmup:
                    times[i].append((time.perf_counter() - start) * 1000)
    return [statistics.median(t) for t in times]
