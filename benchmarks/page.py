"""The generated part of ``docs/benchmarks.md``: the machine it ran on, then one section per benchmark."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

START = "<!-- python -m benchmarks: generated from here -->"
END = "<!-- python -m benchmarks: generated up to here -->"
VERSIONS = ("torch", "transformers", "lightning", "trl")


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_lines(gpu: bool = False) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown CPU")
    versions = ", ".join(f"{p} {version(p)}" for p in VERSIONS)
    device = f"GPU: {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}; " if gpu else ""
    return [f"Machine: {device}{cpu}, {os.cpu_count()} logical CPUs (shared: timings are noisy, counts are exact); "
            f"Python {platform.python_version()}, {versions}."]


def _cpuinfo() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.is_file() else []


def spread(values: Sequence[float], digits: int = 2) -> str:
    """Median with min-max, the form every ratio in the page takes."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def write_page(page: Path, header: list[str], sections: dict[str, str]) -> Path:
    """Replace the generated part of ``page`` (appended the first time), keeping everything else.

    Sections are keyed by benchmark name: a run of some benchmarks (``--only``) replaces theirs and keeps the others.
    """
    text = page.read_text() if page.is_file() else "# Benchmarks\n"
    kept: dict[str, str] = {}
    if START in text and END in text:
        before, rest = text.split(START, 1)
        generated, after = rest.split(END, 1)
        for part in generated.split("\n### ")[1:]:
            kept[part.split("\n", 1)[0].strip()] = "### " + part.strip()
    else:
        before, after = text.rstrip() + "\n\n", "\n"
    kept.update({name: f"### {name}\n\n{body}" for name, body in sections.items()})
    generated = "\n\n".join([START, "## `python -m benchmarks`", *header, *kept.values(), END])
    page.write_text(before + generated + after)
    return page
