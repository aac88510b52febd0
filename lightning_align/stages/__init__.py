"""Stage actions: the pipeline looks up `pipeline.stages.<name>: <action>` here.

An action has a `check` (validate a stage config before anything runs; raises `ConfigError`) and a `run`
(do the stage, write its output directory, return metrics). `lightning` actions get the run-level Trainer
defaults and seed filled into their config; the others take their config as written. An action that does not
`writes_model` (generate: answers and a report) passes the model it started from on to the next stage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from lightning_align.stages import generate, ifprune_compare, lightning_stage, prune
from lightning_align.stages.context import StageContext


@dataclass(frozen=True)
class Action:
    run: Callable[[StageContext], dict[str, float]]
    check: Callable[[dict[str, Any], str], None]
    lightning: bool = True
    writes_model: bool = True


ACTIONS: dict[str, Action] = {
    "fit": Action(lightning_stage.fit, lightning_stage.check_stage_config),
    "validate": Action(lightning_stage.validate, lightning_stage.check_stage_config),
    "prune": Action(prune.run, prune.check, lightning=False),
    "generate": Action(generate.run, generate.check, lightning=False, writes_model=False),
    "ifprune_compare": Action(ifprune_compare.run, ifprune_compare.check, lightning=False, writes_model=False),
}

__all__ = ["ACTIONS", "Action", "StageContext"]
