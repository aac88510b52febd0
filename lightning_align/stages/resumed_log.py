"""A resumed stage's `metrics.csv` keeps the rows its killed run logged before the checkpoint.

Lightning's CSVLogger deletes a stage's `metrics.csv` when the stage starts again, so after a resume the report's
curves (train loss, LR, rounds) would begin at the checkpoint's step. The earlier rows are read before the stage is
built and logged again once the resumed run has logged its validation before training (the same rows the killed run
began with), so the file reads as one run's, and a second kill loses nothing of them.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from lightning.pytorch.loggers import CSVLogger


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def checkpoint_step(path: Path) -> int:
    """The optimizer step a Lightning checkpoint was written at (memory-mapped: its tensors are not read)."""
    return int(torch.load(path, map_location="cpu", mmap=True, weights_only=True)["global_step"])


def replay_earlier_rows(loggers: list, log_file: Path, earlier: list[dict[str, str]], resumed_at: int) -> None:
    """Log again, through the stage's CSVLogger, the `earlier` rows that follow the ones the resumed run has written
    so far, up to the step it resumes from. A row is labelled with the step its batch started at; the batch that ended
    at the checkpoint is written to disk after the checkpoint, so a kill right after one loses that one row."""
    csv_logger = next((logger for logger in loggers if isinstance(logger, CSVLogger)), None)
    if csv_logger is None:
        return
    writer = csv_logger.experiment
    writer.save()
    for row in earlier[len(read_rows(log_file)):]:
        step = int(row["step"])
        if step < resumed_at:
            writer.log_metrics({key: _number(value) for key, value in row.items() if value != "" and key != "step"},
                               step)
    writer.save()


def _number(text: str) -> int | float:
    """A logged value as it was logged (an epoch stays an int), so the rewritten file reads the same."""
    return int(text) if text.lstrip("-").isdigit() else float(text)
