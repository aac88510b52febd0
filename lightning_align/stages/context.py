"""What the pipeline hands a stage action."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from lightning_align.stage_checkpoints import StageCheckpoints


@dataclass(frozen=True)
class StageContext:
    """One stage of a run: its resolved config, the model directory it starts from and where it writes; a stage that
    trains resumes from, and writes, `checkpoints` (none outside a pipeline run)."""

    name: str
    config: dict[str, Any]
    input_dir: Path | None
    output_dir: Path
    run_dir: Path
    checkpoints: Optional[StageCheckpoints] = None
