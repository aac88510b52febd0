"""JSONL records with the line number of any bad record in the error."""
from __future__ import annotations

import json
from pathlib import Path

from lightning_align.errors import DataError


def read_jsonl(path: str | Path, required: dict[str, type]) -> list[dict]:
    """Read every record, checking that each has the `required` keys with the given types.

    Blank lines are skipped; an empty file is an error, since a stage trained on nothing would silently do nothing.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(path, f"malformed JSON ({err.msg})", line=number) from None
            if not isinstance(record, dict):
                raise DataError(path, "expected a JSON object", line=number)
            for key, kind in required.items():
                if key not in record:
                    raise DataError(path, f"missing key '{key}'", line=number)
                if not isinstance(record[key], kind):
                    raise DataError(path, f"key '{key}' must be {kind.__name__}", line=number)
            records.append(record)
    if not records:
        raise DataError(path, "no records")
    return records
