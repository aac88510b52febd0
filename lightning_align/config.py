"""Typed validation of composed configs, turning parser messages into one line that names the key."""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from jsonargparse import ArgumentParser
from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt

from lightning_align.algorithms.schedule import RunSchedule
from lightning_align.errors import ConfigError

_GROUP_OPTION = re.compile(r"Group '([^']+)' does not accept (?:nested )?(?:key|option) '([^']+)'")
_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":?')
_UNRECOGNIZED = re.compile(r"unrecognized arguments: --([^\s=]+)")
_REQUIRED = re.compile(r"the following arguments are required: (.+)")
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>", "Given value")


def condense_parser_error(message: str) -> tuple[str, str]:
    """(key, problem) from a jsonargparse error.

    Its text nests one `Parser key "..."` line per level and says "Problem with given class_path" where the next
    level is relative to that class's `init_args`; the innermost line is the actual problem.
    """
    path: list[str] = []
    for raw in message.splitlines():
        line = raw.strip().lstrip("-").strip()
        if not line or line.startswith(_NOISE):
            continue
        if line.startswith("Problem with given class_path"):
            path.append("init_args")
            rest = line.split(":", 1)[1].strip()
            if rest:
                return _dotted(path), rest
            continue
        if match := _GROUP_OPTION.search(line):
            return _dotted(path + list(match.groups())), "unknown key"
        if match := _OPTION.search(line):
            return _dotted(path + [match.group(1)]), "unknown key"
        if match := _UNRECOGNIZED.search(line):
            return _dotted(path + [match.group(1)]), "unknown key"
        if match := _REQUIRED.search(line):
            return _dotted(path + [match.group(1)]), "required but missing"
        if match := _PARSER_KEY.match(line):
            path.append(match.group(1))
            rest = line[match.end():].strip()
            if rest:
                return _dotted(path), rest
            continue
        return _dotted(path), line
    return _dotted(path), message.strip().splitlines()[0] if message.strip() else "invalid value"


def _dotted(path: list[str]) -> str:
    while path and path[-1] == "init_args":
        path = path[:-1]
    return ".".join(path) or "<top level>"


def parser_error_to_config_error(err: Exception, prefix: str = "", file: str | None = None) -> ConfigError:
    key, problem = condense_parser_error(str(err))
    return ConfigError(f"{prefix}{key}", problem, file)


@dataclass(frozen=True)
class ScheduleSection:
    """`pipeline.schedule`: the run-wide LR curve. The stages' `SharedSchedule` callbacks read it by interpolation
    (and check it again as `RunSchedule`); typed here so a misspelt key is refused where it is written."""

    budgets: dict[str, int]
    warmup_steps: NonNegativeInt
    min_lr_ratio: ClosedUnitInterval = 0.1
    per_stage: bool = False
    carry_optimizer_state: bool = False  # the stages on the curve hand their AdamW moments on (models/adam_moments.py)

    def __post_init__(self) -> None:
        RunSchedule(dict(self.budgets), self.warmup_steps, self.min_lr_ratio)


@dataclass(frozen=True)
class PipelineSection:
    """`pipeline:`: which stages run, in order (`<stage name>: <action>`), and the optional shared LR schedule
    (checked on its own: as an optional dataclass field its errors would be named like a class's `init_args`)."""

    stages: dict[str, str]
    schedule: Optional[dict[str, Any]] = None

    def __post_init__(self) -> None:
        if self.schedule is not None:
            validate_dataclass(ScheduleSection, self.schedule, "schedule")


@dataclass(frozen=True)
class RunSection:
    """Where a pipeline run lives (`<dir>/<name>/`), the seed every stage starts from, and how often a training
    stage writes the checkpoint a killed run resumes from (`checkpoint_every_n_steps` optimizer steps; 0: never)."""

    name: str = "default"
    dir: str = "runs"
    seed: int = 42
    checkpoint_every_n_steps: NonNegativeInt = 0

    def __post_init__(self) -> None:
        """A re-run deletes and replaces stage directories under `<dir>/<name>/`, so the name must stay inside `dir`:
        one plain directory name, not a path."""
        if self.name in ("", ".", "..") or "/" in self.name or "\\" in self.name:
            raise ConfigError("name", f"'{self.name}' is not a plain directory name (runs live in run.dir; use e.g. "
                              "run.name=exp1)")


def validate_dataclass(cls: type, values: dict[str, Any], key: str) -> Any:
    """Build `cls` from `values`, refusing unknown keys, wrong types and out-of-range values with the key named."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, key)
    try:
        parsed = parser.parse_object({key: values})
    except Exception as err:  # jsonargparse raises argparse.ArgumentError or its own subclasses
        raise parser_error_to_config_error(err) from None
    try:
        return parser.instantiate_classes(parsed)[key]
    except ConfigError as err:  # a dataclass's own consistency check names its field
        raise ConfigError(f"{key}.{err.key}", err.problem, err.file) from None


def interpolated_keys(raw: dict[str, Any], section: str) -> set[str]:
    """Keys of top-level `section` that interpolations (`${data.corpus}`) elsewhere in an unresolved config read:
    in the other top-level sections and in the stages that `pipeline.stages` runs."""
    order = (raw.get("pipeline") or {}).get("stages")
    declared = raw.get("stages") or {}
    scanned = [value for key, value in raw.items() if key not in (section, "stages")]
    scanned += [declared.get(name) for name in (order if isinstance(order, dict) else {})]
    pattern = re.compile(r"\$\{[^{}]*?\b" + re.escape(section) + r"\.(\w+)")
    return {key for text in config_strings(scanned) for key in pattern.findall(text)}


def config_strings(value: Any) -> Iterator[str]:
    """Every string inside a nested config of dicts and lists."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from config_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from config_strings(item)


@contextmanager
def keys_under(where: str) -> Iterator[None]:
    """Name the `ConfigError`s raised inside by their full key (`stages.prune.target_ratio`)."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{where}.{err.key}", err.problem, err.file) from None
