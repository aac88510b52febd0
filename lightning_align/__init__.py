"""lightning_align: declarative multi-stage training, pruning and alignment of causal LMs on PyTorch Lightning.

`lightning_align.load_pretrained(path)` loads any model directory a stage wrote, including structurally shrunk ones;
it is imported lazily so that `lightning-align --help` stays fast.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_pretrained", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "load_pretrained":
        from lightning_align.models.checkpoint import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'lightning_align' has no attribute {name!r}")
