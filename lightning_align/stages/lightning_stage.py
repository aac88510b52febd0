"""Stages run by Lightning's own CLI machinery, so a stage inside the pipeline and `lightning-align fit` agree."""
from __future__ import annotations

import copy
import importlib
import logging
import warnings
import inspect
from pathlib import Path
from typing import Any, Optional

import lightning as L
from lightning.pytorch.cli import LightningCLI

from lightning_align.callbacks.stop_on_non_finite import StopOnNonFinite
from lightning_align.config import RunSection, keys_under, parser_error_to_config_error
from lightning_align.data.text_file import read_utf8
from lightning_align.errors import ConfigError
from lightning_align.stages.context import StageContext
from lightning_align.stages.resumed_log import checkpoint_step, read_rows, replay_earlier_rows
from lightning_align.stages.strategy_check import check_strategy
from lightning_align.stages.trainer_args import (
    build_callbacks, check_callbacks, check_trainer, quiet_lightning, steps_from_schedule,
)

log = logging.getLogger(__name__)


class StageCLI(LightningCLI):
    """LightningCLI over any LightningModule / LightningDataModule given by `class_path` (subclass mode).

    Run alone (`run=True`), a stage leaves what it leaves in a pipeline: `fit` exports the trained model as a Hugging
    Face directory (`--export_dir`, default `<log dir>/model`), and Lightning's own `.ckpt` files are off unless
    `--trainer.enable_checkpointing=true` (for a pretrained model they are gigabytes of optimizer state nobody loads).
    Without `seed_everything` a stage is seeded like a pipeline stage under the default `run.seed`, so it is
    deterministic alone too; the stage files leave the seed to the run. Every stage stops on a non-finite loss or
    weight (`StopOnNonFinite`) before anything is exported.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        # Lightning warns when `args` is given while sys.argv has arguments; here both come from our own CLI.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        self.standalone = run
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
            trainer_defaults={"enable_checkpointing": False},
            seed_everything_default=RunSection.seed,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        if self.standalone:  # inside a pipeline the stage directory is the export; the key would be ignored there
            parser.add_argument("--export_dir", type=Optional[str], default=None,
                                help="where `fit` writes the trained model (default: <log dir>/model)")

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The stage's Trainer with `StopOnNonFinite` first, so it stops a NaN step before other callbacks act on it
        (and callbacks that must come last among ours stay last)."""
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.insert(0, StopOnNonFinite())
        return trainer

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        callbacks = build_callbacks(config.trainer.callbacks)
        check_strategy(config.trainer.strategy, config.trainer.accelerator, callbacks)
        steps_from_schedule(config.trainer, callbacks)
        check_trainer(config.trainer)

    def after_fit(self) -> None:
        out = self.config[self.subcommand].export_dir or Path(self.trainer.log_dir or ".") / "model"
        if self.trainer.is_global_zero:
            self.model.export(out, {"stage": "fit", "metrics": _metrics([dict(self.trainer.callback_metrics)])})
            print(f"model: {out}")
        self.trainer.strategy.barrier("export")


class _ParseOnlyCLI(StageCLI):
    """Type-checks a stage config (unknown keys, types, ranges) and builds what is cheap: the callbacks and a Trainer
    without loggers (in `before_instantiate_classes`); the module's arguments go to its `check_arguments` when it has
    one, since building the module would load its model."""

    def instantiate_classes(self) -> None:
        module = _import(self.config.model.class_path)
        if hasattr(module, "check_arguments"):
            module.check_arguments(**self.config.model.init_args.as_dict())


def check_stage_config(config: dict[str, Any], where: str, file: str | None = None) -> None:
    """Raise `ConfigError` naming `<where>.<key>` if the stage config does not parse or a cheap build refuses it.

    The datamodule is also constructed (cheap by convention: construction only checks arguments such as file
    paths), so a missing data file is reported before any stage runs.
    """
    try:
        with quiet_lightning():  # the parser turns nested class_path dicts into Namespaces
            _ParseOnlyCLI(args=copy.deepcopy(config), run=False)
    except Exception as err:
        _raise_wrapped_config_error(err, f"{where}.", file)
        with keys_under(where):
            check_callbacks((config.get("trainer") or {}).get("callbacks"))
        raise parser_error_to_config_error(err, prefix=f"{where}.", file=file) from None
    data = config.get("data")
    if isinstance(data, dict) and "class_path" in data:
        try:
            _import(data["class_path"])(**data.get("init_args", {}))
        except ConfigError as err:
            raise ConfigError(f"{where}.{err.key}", err.problem, file) from None


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


RESHAPING_CALLBACKS = ("GradualWidthPruning", "IterativeBlockRemoval")


def reshaping_callbacks(config: dict[str, Any]) -> list[str]:
    """Keys (`trainer.callbacks.<i>`) of a stage's callbacks that cut blocks or FFN neurons out of the model."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    return [f"trainer.callbacks.{i}" for i, callback in enumerate(callbacks if isinstance(callbacks, list) else [])
            if isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(RESHAPING_CALLBACKS)]


def init_arg_names(section: Any) -> set[str]:
    """Constructor argument names of a `class_path` section (empty when it has none)."""
    if not isinstance(section, dict) or "class_path" not in section:
        return set()
    return set(inspect.signature(_import(section["class_path"])).parameters)


def instantiate(config: dict[str, Any], where: str) -> StageCLI:
    """Build trainer, module and datamodule of a stage, with config errors named like `check_stage_config`'s."""
    try:
        return StageCLI(args=copy.deepcopy(config), run=False)
    except Exception as err:
        _raise_wrapped_config_error(err, f"{where}.")
        if type(err).__module__.startswith(("argparse", "jsonargparse")):
            raise parser_error_to_config_error(err, prefix=f"{where}.") from None
        raise


def _raise_wrapped_config_error(err: BaseException, prefix: str, file: str | None = None) -> None:
    """Re-raise a `ConfigError` under `prefix`, whether raised directly or wrapped by jsonargparse around what a
    constructor raised (e.g. `ModelSpec`'s own checks): the user should see our one line, not the parser's account
    of every type it tried."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ConfigError):
            raise ConfigError(f"{prefix}{cause.key}", cause.problem, cause.file or file) from None
        cause = cause.__cause__ or cause.__context__


def _metrics(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(v) for result in results for k, v in result.items()}


def _has_val(cli: StageCLI) -> bool:
    return cli.trainer.limit_val_batches != 0 and hasattr(cli.datamodule, "val_dataloader")


def _export(cli: StageCLI, ctx: StageContext, metrics: dict[str, float]) -> None:
    """Rank zero writes the stage output; every rank waits for it, since the next stage loads it."""
    if cli.trainer.is_global_zero:
        cli.model.export(ctx.output_dir, {"stage": ctx.name, "metrics": metrics})
    cli.trainer.strategy.barrier("export")


def fit(ctx: StageContext) -> dict[str, float]:
    """Validate, train, validate again, export: the report shows the stage's held-out metrics before and after.

    What the datamodule or a callback refuses once data and model are there (a corpus smaller than one block) is
    named under the stage, like the errors of planning. With `ctx.checkpoints`, training writes them and resumes from
    one a killed run of the same stage identity left (the held-out metrics before training are those of the incoming
    model either way).
    """
    resume = ctx.checkpoints.resume_path() if ctx.checkpoints is not None else None
    csv_log = ctx.run_dir / "logs" / ctx.name / "metrics.csv"
    earlier = read_rows(csv_log) if resume is not None else []  # the CSV logger deletes it when it starts
    cli = instantiate(ctx.config, f"stages.{ctx.name}")
    metrics: dict[str, float] = {}
    with keys_under(f"stages.{ctx.name}"):
        if _has_val(cli):
            before = _metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False))
            metrics.update({f"{k}_start": v for k, v in before.items()})
        if resume is not None and cli.trainer.is_global_zero:
            replay_earlier_rows(cli.trainer.loggers, csv_log, earlier, checkpoint_step(resume))
        checkpoint = ctx.checkpoints.callback() if ctx.checkpoints is not None else None
        if checkpoint is not None:
            cli.trainer.callbacks.append(checkpoint)
        if resume is not None:
            log.info("stage %s resumes from %s", ctx.name, resume)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
        metrics.update({k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("train/")})
        if _has_val(cli):
            metrics.update(_metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)))
    _export(cli, ctx, metrics)
    return metrics


def validate(ctx: StageContext) -> dict[str, float]:
    """Held-out metrics of the incoming model; the model is passed on unchanged."""
    cli = instantiate(ctx.config, f"stages.{ctx.name}")
    with keys_under(f"stages.{ctx.name}"):
        metrics = _metrics(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False))
    _export(cli, ctx, metrics)
    return metrics


def run_lightning_cli(argv: list[str]) -> None:
    """`lightning-align fit|validate ...`: Lightning's CLI, with config errors as `ConfigError`."""
    config_file = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config", "-c")), None)
    if config_file is not None and Path(config_file).is_file():
        read_utf8(Path(config_file))  # the YAML reader would raise a bare UnicodeDecodeError
    try:
        StageCLI(args=argv, run=True)
    except Exception as err:
        _raise_wrapped_config_error(err, "", config_file)
        if type(err).__module__.startswith(("argparse", "jsonargparse")):
            raise parser_error_to_config_error(err, file=config_file) from None
        raise
