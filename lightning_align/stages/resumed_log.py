"""A resumed stage's `metrics.csv` keeps the rows its killed run logged before the checkpoint.

Lightning's CSVLogger deletes a stage's `metrics.csv` when the stage starts again, so after a resume the report's
curves (train loss, LR) would begin at the checkpoint's step. The rows read before the stage starts again are put
back in front of the new run's rows, up to the step the run resumed from.
"""
from __future__ import annotations

import csv
from pathlib import Path


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _step(row: dict[str, str]) -> int:
    return int(float(row.get("step") or 0))


def restore_earlier_rows(path: Path, earlier: list[dict[str, str]], resumed_at: int) -> None:
    """Rewrite `path` as the `earlier` rows of the steps before `resumed_at` followed by the rows the resumed run
    logged from it on (its validation before training repeats the earlier one's, at step 0). A row is labelled with
    the step its batch started at; the batch that ended at the checkpoint is logged after the checkpoint is written
    (and its row written to disk later still), so a run killed right after a checkpoint lacks that one row."""
    later = [row for row in read_rows(path) if _step(row) >= resumed_at]
    rows = [row for row in earlier if _step(row) < resumed_at] + later
    header = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
