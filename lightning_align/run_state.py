"""Reading a run directory's `state.json` (which stages are done), refusing a file that is not what a run writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_align.errors import DataError


def read_state(path: Path) -> dict[str, Any]:
    """`{"done": {stage: record}}`; a `DataError` naming the file when it is not that, since guessing which stages
    are done could skip one that never finished."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # malformed JSON or bytes that are not UTF-8
        state = None
    if not isinstance(state, dict) or not isinstance(state.get("done"), dict):
        raise DataError(path, "is corrupt (not the JSON record of finished stages this run writes); delete it "
                        "to run every stage again")
    return state
