"""The `trainer.logger` of a pipeline stage: the CSV the pipeline always keeps, plus the loggers of `conf/logger/`.

The run report reads `logs/<stage>/metrics.csv` and `state.json` only, so whatever loggers a user picks (the
`logger` group, or a stage's own `trainer.logger`) are added next to that CSV, never in its place. Each logger
names the run after `run.name` and the stage as its version / sub-run. W&B and MLflow run offline (files under the
run directory); a logger whose package is not installed is refused at planning, naming the group.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lightning_align.errors import ConfigError

LoggerKind = Literal["csv", "tensorboard", "wandb", "mlflow"]
# kind -> (class_path, the packages any one of which it needs)
LOGGERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tensorboard": ("lightning.pytorch.loggers.TensorBoardLogger", ("tensorboard", "tensorboardX")),
    "wandb": ("lightning.pytorch.loggers.WandbLogger", ("wandb",)),
    "mlflow": ("lightning.pytorch.loggers.MLFlowLogger", ("mlflow",)),
}


@dataclass(frozen=True)
class LoggerSection:
    """`kinds` always log (refused when their package is missing); `when_installed` only if it is importable."""

    kinds: list[LoggerKind] = field(default_factory=lambda: ["csv"])
    when_installed: list[LoggerKind] = field(default_factory=list)


def _installed(kind: str) -> bool:
    return kind == "csv" or any(importlib.util.find_spec(package) for package in LOGGERS[kind][1])


def check_installed(section: LoggerSection) -> None:
    """ConfigError naming the `logger` group for a chosen logger whose package is missing."""
    for kind in section.kinds:
        if not _installed(kind):
            raise ConfigError("logger", f"logger={kind} needs the {LOGGERS[kind][1][0]} package (pip install "
                              f"{LOGGERS[kind][1][0]}); pick another from conf/logger/: csv, tensorboard, wandb, mlflow")


def _init_args(kind: str, run_dir: Path, run_name: str, stage: str) -> dict[str, Any]:
    if kind == "tensorboard":
        return {"save_dir": str(run_dir / "tensorboard"), "name": run_name, "version": stage}
    if kind == "wandb":
        return {"save_dir": str(run_dir), "project": "lightning_align", "group": run_name, "name": stage,
                "offline": True}
    return {"tracking_uri": f"file:{run_dir / 'mlruns'}", "experiment_name": run_name, "run_name": stage}


def stage_loggers(section: LoggerSection, own: Any, run_dir: Path, run_name: str, stage: str) -> list[dict[str, Any]]:
    """`trainer.logger` of a stage: the pipeline's CSV first (so `trainer.log_dir` stays `logs/<stage>`), then the
    group's loggers, then the stage's own (`own`: a class_path dict, a list of them, or a bool)."""
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger",
           "init_args": {"save_dir": str(run_dir / "logs"), "name": stage, "version": ""}}
    kinds = [*section.kinds, *(kind for kind in section.when_installed if _installed(kind))]
    group = [{"class_path": LOGGERS[kind][0], "init_args": _init_args(kind, run_dir, run_name, stage)}
             for kind in dict.fromkeys(kinds) if kind != "csv"]
    stage_own = own if isinstance(own, list) else [own] if isinstance(own, dict) else []
    return [csv, *group, *stage_own]
