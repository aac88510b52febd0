"""The checks and DataLoaders the datamodules share."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from lightning_align.data.records import SUFFIXES, source_problem
from lightning_align.errors import ConfigError


def check_source(path: str, builtin: str, key: str = "data.init_args.path",
                 suffixes: tuple[str, ...] = SUFFIXES) -> None:
    """A data source is the built-in name, a file with one of `suffixes` or a save_to_disk directory.

    Checked at construction, from names alone, so a pipeline refuses a bad path before any stage runs.
    """
    if path == builtin:
        return
    problem = source_problem(Path(path), suffixes)
    if problem is not None:
        raise ConfigError(key, f"file '{path}' {problem} (the built-in source is \"{builtin}\")")


def seeded_loader(dataset: Any, batch_size: int, shuffle: bool, seed: int,
                  collate_fn: Callable[[list], Any] | None = None, drop_last: bool = False,
                  num_workers: int = 0) -> DataLoader:
    """Shuffled loaders draw their order from their own seeded generator, so a run's data order is reproducible."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn,
                      drop_last=drop_last, num_workers=num_workers)
