"""Errors raised at the boundary so the CLI can print one line and exit 2.

Deep code raises these; only `lightning_align.cli` turns them into a message and an exit code.
"""
from __future__ import annotations

from pathlib import Path


class LightningAlignError(Exception):
    """Base of the user-facing errors: the message alone must tell the user what to fix."""


class ConfigError(LightningAlignError):
    """A config value is unknown, of the wrong type, out of range or points at a missing file."""

    def __init__(self, key: str, problem: str, file: str | Path | None = None) -> None:
        self.key, self.problem, self.file = key, problem, file
        where = f" (in {file})" if file else ""
        super().__init__(f"config key '{key}'{where}: {problem}")


class DataError(LightningAlignError):
    """A data file is missing, empty or has a malformed record."""

    def __init__(self, file: str | Path, problem: str, line: int | None = None) -> None:
        self.file, self.problem, self.line = file, problem, line
        at = f":{line}" if line is not None else ""
        super().__init__(f"{file}{at}: {problem}")
