"""The model directories a stage reads, checked at planning, so a wrong path fails before any stage trains.

A directory that an earlier stage of the run writes (or one inside it, such as a Mutual-Taught stage's
`reward_model/`) does not exist yet at planning and is taken on trust; any other must already be a model directory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_align.errors import ConfigError
from lightning_align.models.loading import model_dir_problem

# Keys of a Lightning stage config that name a model directory, and whether a tokenizer must be there too.
MODEL_DIR_KEYS = {"model.init_args.model.path": True, "model.init_args.distill.teacher": False,
                  "model.init_args.reward_model": True}


def _lookup(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def check_input_models(config: dict[str, Any], where: str, produced: list[Path]) -> None:
    """Raise `ConfigError` naming `<where>.<key>` for a model directory that is neither written by an earlier stage
    (`produced`) nor loadable now."""
    written = [out.resolve() for out in produced]
    for key, tokenizer in MODEL_DIR_KEYS.items():
        value = _lookup(config, key)
        if value is None:
            continue
        path = Path(value)
        if any(path.resolve() == out or out in path.resolve().parents for out in written):
            continue
        problem = model_dir_problem(path, tokenizer)
        if problem is not None:
            raise ConfigError(f"{where}.{key}", f"'{path}' {problem}")
