"""Forward latency of models on one fixed batch, measured side by side."""
from __future__ import annotations

import statistics
import time

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
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    times: list[list[float]] = [[] for _ in models]
    try:
        for round_ in range(warmup + repeats):
            for i, model in enumerate(models):
                device = next(model.parameters()).device
                start = time.perf_counter()
                model(input_ids=tokens.to(device), use_cache=False)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if round_ >= warmup:
                    times[i].append((time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    return [statistics.median(t) for t in times]
