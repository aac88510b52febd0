"""A stage's `trainer:` section checked and completed before anything is built (planning included).

Callbacks are built once here: their constructors only check arguments (by convention, like datamodules), so a bad
value is reported as `trainer.callbacks.<i>.init_args.<arg>` before any stage runs. A stage on a `SharedSchedule`
trains for its budget there, so the step count has one source instead of a budget and a `max_steps` to keep equal.
"""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Iterator, Optional

import lightning as L
from jsonargparse import ArgumentParser, Namespace
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt, restricted_number_type
from lightning.fabric.utilities.exceptions import MisconfigurationException

from lightning_align.callbacks.shared_schedule import SharedSchedule
from lightning_align.config import condense_parser_error, validate_dataclass
from lightning_align.errors import ConfigError

UNSET_MAX_STEPS = -1  # Lightning's default: no step limit
SanityValSteps = restricted_number_type("SanityValSteps", int, (">=", -1))  # -1: the whole validation set


@dataclass(frozen=True)
class TrainerRanges:
    """Trainer arguments whose range Lightning checks only once training runs (or never), checked at planning."""

    log_every_n_steps: Optional[PositiveInt] = None
    accumulate_grad_batches: PositiveInt = 1
    min_steps: Optional[NonNegativeInt] = None
    min_epochs: Optional[NonNegativeInt] = None
    check_val_every_n_epoch: Optional[PositiveInt] = None
    gradient_clip_val: Optional[NonNegativeFloat] = None
    num_sanity_val_steps: Optional[SanityValSteps] = None


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Planning builds Trainers and seeds stages only to check them: Lightning's info lines would repeat per stage."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_trainer(trainer: Namespace) -> None:
    """Refuse a parsed `trainer:` section Lightning would refuse later: the ranges of `TrainerRanges`, then the
    Trainer itself built without loggers and callbacks (cheap, writes nothing) so Lightning's own checks run."""
    values = trainer.as_dict()
    names = {f.name for f in fields(TrainerRanges)}
    validate_dataclass(TrainerRanges, {k: v for k, v in values.items() if k in names and v is not None}, "trainer")
    plain = {k: v for k, v in values.items()
             if k not in ("callbacks", "logger") and not isinstance(v, (dict, list, Namespace))}
    try:
        with quiet_lightning():
            L.Trainer(**plain, logger=False, callbacks=[])
    except (MisconfigurationException, ValueError) as err:
        named = [word for word in re.findall(r"\w+", str(err)) if word in plain]
        raise ConfigError(f"trainer.{named[0]}" if named else "trainer", str(err).strip().splitlines()[0]) from None


def _callback_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--callback", type=L.Callback)
    return parser


def check_callbacks(callbacks: Any) -> None:
    """Parse each callback of a raw `trainer.callbacks` list alone, raising `ConfigError` named
    `trainer.callbacks.<i>...`: a parse of the whole list reports a bad argument without the callback's index."""
    parser = _callback_parser()
    for i, callback in enumerate(callbacks if isinstance(callbacks, list) else []):
        try:
            parser.parse_object({"callback": callback})
        except Exception as err:  # jsonargparse raises argparse.ArgumentError or its own subclasses
            key, problem = condense_parser_error(str(err))
            inner = key.partition(".")[2]
            raise ConfigError(f"trainer.callbacks.{i}" + (f".{inner}" if inner else ""), problem) from None


def build_callbacks(callbacks: Namespace | list[Namespace] | None) -> list[L.Callback]:
    """The parsed `trainer.callbacks` built; a constructor's `ConfigError` gets the callback's full key."""
    parser = _callback_parser()
    built = []
    for i, callback in enumerate(callbacks if isinstance(callbacks, list) else [callbacks] if callbacks else []):
        try:
            built.append(parser.instantiate_classes(parser.parse_object({"callback": callback.as_dict()})).callback)
        except ConfigError as err:
            raise ConfigError(f"trainer.callbacks.{i}.init_args.{err.key}", err.problem, err.file) from None
    return built


def steps_from_schedule(trainer: Namespace, callbacks: list[Any]) -> None:
    """Set `trainer.max_steps` to the stage's `SharedSchedule` budget; refuse a `max_steps` that disagrees."""
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, SharedSchedule):
            continue
        budget = callback.schedule.budgets[callback.stage]
        if trainer.max_steps == UNSET_MAX_STEPS:
            trainer.max_steps = budget
        elif trainer.max_steps != budget:
            raise ConfigError("trainer.max_steps", f"{trainer.max_steps} disagrees with the step budget of stage "
                              f"'{callback.stage}' (trainer.callbacks.{i}.init_args.budgets.{callback.stage} = "
                              f"{budget}, in a pipeline pipeline.schedule.budgets.{callback.stage}); leave max_steps "
                              "out: the budget sets it")
