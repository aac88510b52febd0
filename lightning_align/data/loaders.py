"""The data-source check the datamodules share."""
from __future__ import annotations

from pathlib import Path

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
