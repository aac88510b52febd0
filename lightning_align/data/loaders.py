"""The checks and DataLoaders the datamodules share."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from lightning_align.errors import ConfigError


def check_source(path: str, builtin: str, key: str = "data.init_args.path") -> None:
    """A data source is the built-in name or an existing file; checked at construction, before any stage runs."""
    if path != builtin and not Path(path).is_file():
        raise ConfigError(key, f"file '{path}' not found (use a file or \"{builtin}\")")


def seeded_loader(dataset: Any, batch_size: int, shuffle: bool, seed: int,
                  collate_fn: Callable[[list], Any] | None = None, drop_last: bool = False,
                  num_workers: int = 0) -> DataLoader:
    """Shuffled loaders draw their order from their own seeded generator, so a run's data order is reproducible."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate_fn,
                      drop_last=drop_last, num_workers=num_workers)
