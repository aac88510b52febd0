"""Stage actions: the pipeline looks up `pipeline.stages.<name>: <action>` here."""
from __future__ import annotations

from typing import Callable

from lightning_align.stages import lightning_stage
from lightning_align.stages.context import StageContext

ACTIONS: dict[str, Callable[[StageContext], dict[str, float]]] = {
    "fit": lightning_stage.fit,
    "validate": lightning_stage.validate,
    "test": lightning_stage.test,
}

__all__ = ["ACTIONS", "StageContext"]
