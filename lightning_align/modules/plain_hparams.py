"""Hyperparameters a Lightning checkpoint can be read back with."""
from __future__ import annotations

import inspect
from dataclasses import fields, is_dataclass
from typing import Any

import lightning as L


def plain(value: Any) -> Any:
    """`value` as builtins only: dataclasses as dicts, and the constrained numbers of `jsonargparse.typing`
    (`PositiveFloat`, ... subclasses of float and int) as the plain float or int."""
    if is_dataclass(value) and not isinstance(value, type):
        return {field.name: plain(getattr(value, field.name)) for field in fields(value)}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    for builtin in (bool, int, float, str):
        if isinstance(value, builtin):
            return builtin(value)
    return value


def save_plain_hyperparameters(module: L.LightningModule) -> None:
    """`save_hyperparameters()` for the `__init__` that calls this, with every value as builtins (`plain`).

    Lightning resumes a checkpoint (`fit(ckpt_path=...)`) with `torch.load(weights_only=True)`, which refuses any
    class, so the project's config dataclasses in the hyperparameters would make every checkpoint unreadable.
    """
    module.save_hyperparameters(frame=inspect.currentframe().f_back)
    module.hparams.update({key: plain(value) for key, value in module.hparams.items()})
