"""AdamW moments handed from one training stage to the next, keyed by parameter name.

Each stage is its own Lightning fit, so without this the next stage starts AdamW with zero moments and step 0 at
whatever LR the run-wide schedule has reached: the first updates are sign-like steps of size ~lr (bias correction
of fresh moments), a jolt mid-curve. A stage that carries its state writes `MOMENTS_FILE` next to its model:
`{name: {"step", "exp_avg", "exp_avg_sq"}}` of plain CPU tensors (readable with `torch.load(weights_only=True)`),
named as in `model.named_parameters()`, so it does not depend on parameter order. The next stage's fresh optimizer
takes it when the names and shapes of its trainable parameters are exactly the saved ones.

Surgery that replaces parameters (width slicing) re-keys the optimizer's state onto the new tensors with
`move_moments`, slicing the moments exactly as the weights; parameters a surgery drops (cut blocks) are no longer in
the model, so their moments are not saved.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from lightning_align.errors import DataError

MOMENTS_FILE = "adamw_moments.pt"  # not a weights file name: `from_pretrained` never reads it
MOMENT_KEYS = ("step", "exp_avg", "exp_avg_sq")
NamedMoments = dict[str, dict[str, torch.Tensor]]


def carries(optimizer: torch.optim.Optimizer) -> bool:
    """Only torch's AdamW has the float moments we save; bitsandbytes' 8-bit states are block-quantized."""
    return type(optimizer) is torch.optim.AdamW


def move_moments(optimizers: Iterable[torch.optim.Optimizer], old: nn.Parameter, new: nn.Parameter,
                 select: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Put `new` in `old`'s place in every optimizer, with `old`'s moments passed through `select` (the same slice
    the surgery applied to the weight). Moments that cannot be sliced (not AdamW) are dropped, never misaligned."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [new if param is old else param for param in group["params"]]
        state = optimizer.state.pop(old, None)
        if state and carries(optimizer):
            optimizer.state[new] = {key: value if key == "step" else select(value) for key, value in state.items()}


def named_moments(model: nn.Module, optimizer: torch.optim.Optimizer) -> NamedMoments:
    """The optimizer's moments of the model's present parameters, by name, copied to the CPU.

    A parameter without state (it never received a gradient) is left out and would make the file refused later:
    it cannot be told apart from a different model.
    """
    names = {param: name for name, param in model.named_parameters()}
    return {names[param]: {key: optimizer.state[param][key].detach().cpu().clone() for key in MOMENT_KEYS}
            for group in optimizer.param_groups for param in group["params"]
            if param in names and optimizer.state.get(param)}


def moments_bytes(moments: NamedMoments) -> bytes:
    buffer = io.BytesIO()
    torch.save(moments, buffer)
    return buffer.getvalue()


def read_moments(model_dir: str | Path) -> NamedMoments | None:
    """The moments saved next to a model directory's weights, or None when the stage that wrote it kept none."""
    path = Path(model_dir) / MOMENTS_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def load_moments(model: nn.Module, optimizer: torch.optim.Optimizer, moments: NamedMoments,
                 source: str | Path) -> None:
    """Give a fresh optimizer the saved moments of every trainable parameter.

    A file whose names or shapes differ from the model's trainable parameters belongs to another model (or to a
    model changed after it was written): it is refused with a `DataError` naming the file, never half-applied.
    """
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(set(params) - set(moments)), sorted(set(moments) - set(params))
    reshaped = sorted(name for name in set(params) & set(moments)
                      if any(moments[name][key].shape != params[name].shape for key in MOMENT_KEYS[1:]))
    if missing or unexpected or reshaped:
        raise DataError(Path(source) / MOMENTS_FILE, "AdamW moments do not match the model's trainable parameters "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]}, other shape {reshaped[:3]}); "
                        "delete the file or set carry_optimizer_state: false to start the optimizer fresh")
    for name, param in params.items():
        saved = moments[name]
        optimizer.state[param] = {"step": saved["step"].clone(),
                                  **{key: saved[key].to(param.device, param.dtype).clone() for key in MOMENT_KEYS[1:]}}
