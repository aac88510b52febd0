"""What the pipeline hands a stage action."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StageContext:
    """One stage of a run: its resolved config, the model directory it starts from and where it writes."""

    name: str
    config: dict[str, Any]
    input_dir: Path | None
    output_dir: Path
    run_dir: Path
