"""``python -m benchmarks``: run the registered comparisons and write their tables into the benchmarks page.

Modes: ``--quick`` (tiny models, seconds; the test suite runs it), the default (minutes), ``--full`` (adds the
comparisons that train pipelines). The page keeps its hand-written sections; only the part between the markers is
rewritten, and within it only the sections of the benchmarks that ran. ``--gpu`` runs the benchmarks that have a
GPU form on the CUDA device in bf16; their sections are kept apart from the CPU ones (", gpu").
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.registry import BENCHMARKS, Options
from benchmarks.page import machine_lines, write_page


def main(argv: list[str] | None = None) -> Path | None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny models, one repetition: checks that everything runs")
    size.add_argument("--full", action="store_true", help="also the comparisons that train whole pipelines")
    parser.add_argument("--only", action="append", choices=sorted(BENCHMARKS), help="run only these (repeatable)")
    parser.add_argument("--model", type=Path, help="a local pretrained model directory for the real-model rows")
    parser.add_argument("--repeats", type=int, help="paired repetitions for timings (default: 1 quick, 5 otherwise)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (shared CPUs time badly with more)")
    parser.add_argument("--gpu", action="store_true", help="the GPU form (CUDA, bf16) of the benchmarks that have one")
    parser.add_argument("--page", type=Path, help="page to write (default: docs/benchmarks.md; --quick writes none)")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model: '{args.model}' is not a model directory (no config.json)")
    page = args.page or (None if args.quick else Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: this machine has no CUDA device (torch.cuda.is_available() is False)")
    cpu_only = [name for name in args.only or [] if device not in BENCHMARKS[name].devices]
    if cpu_only:
        parser.error(f"--gpu: {', '.join(cpu_only)} has no GPU form (it measures CPU memory or time)")
    options = Options(mode, args.model, args.repeats or (1 if args.quick else 5), args.threads, device)
    names = args.only or [name for name, b in BENCHMARKS.items() if mode in b.modes and device in b.devices]
    sections: dict[str, str] = {}
    for name in names:
        bench = BENCHMARKS[name]
        start = time.perf_counter()
        print(f"== {name}: {bench.summary}", file=sys.stderr, flush=True)
        body = bench.run(options)
        key = ", ".join([name] + ([args.model.name] if args.model is not None else []) + (["gpu"] if args.gpu else []))
        sections[key] = f"{bench.summary}; {time.perf_counter() - start:.0f} s.\n\n{body}"
        print(body, flush=True)
    if page is None:
        return None
    header = [f"Last run: mode `{mode}`, {options.repeats} paired repetition(s), {options.threads} torch thread(s)"
              f"{', CUDA in bf16' if args.gpu else ''}; each section says its own sizes.", *machine_lines(args.gpu)]
    return write_page(page, header, sections)


if __name__ == "__main__":
    main()
