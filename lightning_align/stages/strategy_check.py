"""Strategies and accelerators a stage cannot train with, refused with one line before anything is built.

A GPU accelerator needs a CUDA device; FSDP and DeepSpeed run on GPUs only; DeepSpeed is an optional package.
The reshaping callbacks read whole weights and gradients on every rank: FSDP and DeepSpeed hold shards of them
(FSDP's `weight.grad` is not the full gradient, DeepSpeed keeps gradients in its own buffers), so width scores would
silently come out zero and block scores would run on sharded layers. Plain DDP errors on the first step after a
block is skipped (its parameters get no gradient) unless DDP looks for unused parameters.
"""
from __future__ import annotations

import importlib.util
from typing import Any

import lightning as L
import torch

from lightning_align.callbacks.block_removal import IterativeBlockRemoval
from lightning_align.callbacks.width_pruning import GradualWidthPruning
from lightning_align.errors import ConfigError

SHARDING = ("fsdp", "deepspeed")
DDP_WITHOUT_UNUSED = ("ddp", "ddp_spawn", "ddp_fork", "ddp_notebook")
GPU_ACCELERATORS = ("gpu", "cuda")


def strategy_name(strategy: Any) -> str:
    """`trainer.strategy` as a lowercase name: a registered name as given, or a `class_path`'s class name."""
    if isinstance(strategy, str):
        return strategy.lower()
    class_path = strategy.get("class_path", "") if isinstance(strategy, dict) else getattr(strategy, "class_path", "")
    return str(class_path).rpartition(".")[2].lower()


def check_strategy(strategy: Any, accelerator: Any, callbacks: list[L.Callback]) -> None:
    """Raise `ConfigError` on `trainer.strategy` or `trainer.accelerator` when this stage cannot run with them here."""
    name = strategy_name(strategy)
    if name.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("trainer.strategy", f"{name} needs the deepspeed package, which is not installed")
    reshaping = [type(c).__name__ for c in callbacks if isinstance(c, (GradualWidthPruning, IterativeBlockRemoval))]
    if reshaping and name.startswith(SHARDING):
        raise ConfigError("trainer.strategy", f"{reshaping[0]} needs whole weights and gradients on every rank, "
                          f"which {name} shards: use strategy=ddp_find_unused_parameters_true for this stage")
    if name in DDP_WITHOUT_UNUSED and any(isinstance(c, IterativeBlockRemoval) for c in callbacks):
        raise ConfigError("trainer.strategy", f"IterativeBlockRemoval skips blocks, whose parameters then get no "
                          f"gradient, which {name} rejects: use strategy=ddp_find_unused_parameters_true")
    device = accelerator.lower() if isinstance(accelerator, str) else "auto"
    if name.startswith(SHARDING) and device == "cpu":
        raise ConfigError("trainer.strategy", f"{name} runs on GPUs only, and trainer.accelerator is cpu")
    if device in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise ConfigError("trainer.accelerator", f"{device} needs a CUDA device and this machine has none: "
                          "use accelerator=cpu")
