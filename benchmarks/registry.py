"""Every comparison ``python -m benchmarks`` runs: a name, what it compares, the modes it runs in, and a runner.

A runner takes the shared ``Options`` and returns its section of the page as Markdown. The older stand-alone
scripts keep their own command lines (and their tests); their entries here call them with the mode's arguments and
quote what they print.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Mode = Literal["quick", "default", "full"]
MODES: tuple[Mode, ...] = ("quick", "default", "full")
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class Options:
    """What every benchmark is told: the mode, an optional pretrained model directory, repetitions to pair, and
    where to run (``cuda``: the GPU form, bf16, as the ``gpu`` pipelines train)."""

    mode: Mode
    model: Path | None
    repeats: int
    threads: int
    device: Device = "cpu"

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


@dataclass(frozen=True)
class Benchmark:
    name: str
    summary: str
    modes: tuple[Mode, ...]
    run: Callable[[Options], str]
    devices: tuple[Device, ...] = ("cpu",)  # "cuda": it has a GPU form (``python -m benchmarks --gpu``)


def quoted(main: Callable[[list[str]], object], argv: list[str]) -> str:
    """Run a stand-alone script's ``main`` and quote its printed table."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    return f"`{' '.join(argv) or '(defaults)'}`\n\n```text\n{out.getvalue().rstrip()}\n```"


def _block_pruner(options: Options) -> str:
    from benchmarks.block_pruner_search import bench

    return bench(options)


def _pruned_vs_dense(options: Options) -> str:
    from benchmarks.pruned_vs_dense import bench

    return bench(options)


def _peers(options: Options) -> str:
    from benchmarks.peers import bench

    return bench(options)


def _annotate_memory(options: Options) -> str:
    from benchmarks.annotate_memory import bench

    return bench(options)


def _logprob_memory(options: Options) -> str:
    from benchmarks.logprob_memory import main

    return quoted(main, ["--quick"] if options.mode == "quick" else [])


def _generation_strategies(options: Options) -> str:
    from benchmarks.generation_strategies import main

    return quoted(main, ["--quick", f"--threads={options.threads}"] if options.mode == "quick" else
                  [f"--threads={options.threads}"])


def _enlarge_prune(options: Options) -> str:
    from benchmarks.enlarge_prune_compare import main

    return quoted(main, [f"--threads={options.threads}", *(["--quick"] if options.mode == "quick" else [])])


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in [
    Benchmark("blockpruner", "BlockPruner search: this project's vs the naive search vs the official pass count",
              MODES, _block_pruner, ("cpu", "cuda")),
    Benchmark("pruned-vs-dense", "parameters, forward latency, generation tokens/s and peak memory at three ratios",
              MODES, _pruned_vs_dense, ("cpu", "cuda")),
    Benchmark("peers", "DPO, reward-model and sampling steps against TRL (the `bench` extra)", MODES, _peers,
              ("cpu", "cuda")),
    Benchmark("logprob-memory", "DPO step memory: full-vocabulary log-softmax vs chunked", ("default", "full"),
              _logprob_memory),
    Benchmark("annotate-memory", "DPO reference annotation memory: annotate_batch_size 64 vs 8 pairs per forward",
              ("default", "full"), _annotate_memory),
    Benchmark("generation-strategies", "one sample vs best-of-N vs self-aggregation (trains an align run)",
              ("full",), _generation_strategies),
    Benchmark("enlarge-prune", "enlarge -> prune -> recover vs training the target size (trains five pipelines)",
              ("full",), _enlarge_prune),
]}
