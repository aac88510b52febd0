"""JSON the project writes is strict (no bare `NaN`/`Infinity` tokens, which strict parsers reject).

A non-finite float becomes `null`; the caller gets the dotted keys it replaced, so it can say so.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite_or_null(value: Any, key: str = "") -> tuple[Any, dict[str, float]]:
    """A copy of a JSON-like value with NaN/±inf floats replaced by None, and {dotted key: replaced value}."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, {key: value}
    if isinstance(value, dict):
        items = [(k, *finite_or_null(v, f"{key}.{k}" if key else str(k))) for k, v in value.items()]
        return {k: v for k, v, _ in items}, {n: r for _, _, replaced in items for n, r in replaced.items()}
    if isinstance(value, (list, tuple)):
        items = [finite_or_null(v, f"{key}.{i}" if key else str(i)) for i, v in enumerate(value)]
        return [v for v, _ in items], {n: r for _, replaced in items for n, r in replaced.items()}
    return value, {}


def dumps(payload: Any, **kwargs: Any) -> str:
    """`json.dumps` of `payload` with non-finite floats as null, refusing anything else non-standard."""
    return json.dumps(finite_or_null(payload)[0], allow_nan=False, **kwargs)


def write_atomic(path: Path, payload: Any) -> None:
    """Write strict JSON to a temporary sibling (`.<name>.tmp<pid>`), then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(dumps(payload, indent=2))
    tmp.replace(path)
