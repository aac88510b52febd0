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


class NonFiniteError(LightningAlignError):
    """Training produced NaN or infinity: the stage stops before exporting, so it is not marked done and a re-run
    retries it (a NaN model handed on would poison every later stage silently)."""

    def __init__(self, what: str, value: float, step: int, stage: str | None = None) -> None:
        self.what, self.value, self.step, self.stage = what, value, step, stage
        where = f"stage {stage}: " if stage else ""
        super().__init__(f"{where}{what} is {value} at step {step}; nothing was exported and the stage is not marked "
                         "done (lower the learning rate or check the data)")

    def in_stage(self, stage: str) -> NonFiniteError:
        return NonFiniteError(self.what, self.value, self.step, stage)


class Interrupted(BaseException):
    """Ctrl-C during a run. Raised by the run's SIGINT handler instead of `KeyboardInterrupt`, which Lightning turns
    into `sys.exit(1)` inside `fit`; a `BaseException` passes through Lightning's teardown unchanged, so the stage is
    neither exported nor marked done, and nothing that catches `Exception` swallows it."""

    def __init__(self, stage: str | None = None) -> None:
        self.stage = stage
        where = f" during stage {stage}" if stage else ""
        super().__init__(f"interrupted{where}; run the same command to resume")
