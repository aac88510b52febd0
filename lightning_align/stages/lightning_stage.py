"""Stages run by Lightning's own CLI machinery, so a stage inside the pipeline and `lightning-align fit` agree."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lightning_align.config import parser_error_to_config_error
from lightning_align.stages.context import StageContext


class StageCLI(LightningCLI):
    """LightningCLI over any LightningModule / LightningDataModule given by `class_path` (subclass mode)."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            save_config_callback=None,
            parser_kwargs={"exit_on_error": False},
            auto_configure_optimizers=False,
            **kwargs,
        )


class _ParseOnlyCLI(StageCLI):
    """Type-checks a stage config (unknown keys, types, ranges) without building anything."""

    def instantiate_classes(self) -> None:
        return None


def check_stage_config(config: dict[str, Any], where: str, file: str | None = None) -> None:
    """Raise `ConfigError` naming `<where>.<key>` if the stage config does not parse."""
    try:
        _ParseOnlyCLI(args=config, run=False)
    except Exception as err:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        raise parser_error_to_config_error(err, prefix=f"{where}.", file=file) from None


def instantiate(config: dict[str, Any], where: str) -> StageCLI:
    """Build trainer, module and datamodule of a stage, with config errors named like `check_stage_config`'s."""
    try:
        return StageCLI(args=config, run=False)
    except Exception as err:
        if type(err).__module__.startswith(("argparse", "jsonargparse")):
            raise parser_error_to_config_error(err, prefix=f"{where}.") from None
        raise


def _metrics(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(v) for result in results for k, v in result.items()}


def _has_val(cli: StageCLI) -> bool:
    return cli.trainer.limit_val_batches != 0 and hasattr(cli.datamodule, "val_dataloader")


def fit(ctx: StageContext) -> dict[str, float]:
    """Validate, train, validate again, export: the report shows the stage's held-out metrics before and after."""
    cli = instantiate(ctx.config, f"stages.{ctx.name}")
    metrics: dict[str, float] = {}
    if _has_val(cli):
        before = _metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False))
        metrics.update({f"{k}_start": v for k, v in before.items()})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if _has_val(cli):
        metrics.update(_metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)))
    metrics.update({k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("train/")})
    cli.model.export(ctx.output_dir, {"stage": ctx.name, "metrics": metrics})
    return metrics


def validate(ctx: StageContext) -> dict[str, float]:
    """Held-out metrics of the incoming model; the model is passed on unchanged."""
    cli = instantiate(ctx.config, f"stages.{ctx.name}")
    metrics = _metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False))
    cli.model.export(ctx.output_dir, {"stage": ctx.name, "metrics": metrics})
    return metrics


def test(ctx: StageContext) -> dict[str, float]:
    """Test-set metrics of the incoming model; the model is passed on unchanged."""
    cli = instantiate(ctx.config, f"stages.{ctx.name}")
    metrics = _metrics(cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False))
    cli.model.export(ctx.output_dir, {"stage": ctx.name, "metrics": metrics})
    return metrics


def stage_module_path(config: dict[str, Any]) -> Path | None:
    """The model directory a stage config starts from, if it names one."""
    path = config.get("model", {}).get("init_args", {}).get("model", {}).get("path")
    return Path(path) if path else None
