"""`StepCheckpoint`: the whole training state every N optimizer steps, replaced atomically, for mid-stage resume."""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

log = logging.getLogger(__name__)


def rng_states() -> dict[str, Any]:
    """Every global generator a step may draw from, as plain values (`torch.load(weights_only=True)` reads them)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(), "torch": torch.get_rng_state(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class StepCheckpoint(Checkpoint):
    """Write `path` every `every_n_steps` optimizer steps: weights, optimizer and scheduler, loop progress, every
    callback's `state_dict` (schedule position, pruning masks and EMA, round state), the datamodule's state (loader
    position), and the global RNG states (kept here: Lightning's checkpoint has none). With 0 it writes nothing but
    still restores the RNG states of a run resumed from such a file.

    The file is written beside `path` under a temporary name and renamed over it, so a kill during the write leaves
    the previous checkpoint whole. As a `Checkpoint`, Lightning runs it after the other callbacks of a step, so the
    state saved is the one they leave at its end.
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path, self.every_n_steps = Path(path), every_n_steps
        self._saved_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps == 0 or step == 0 or step % self.every_n_steps or step == self._saved_step:
            return
        self._saved_step = step  # with gradient accumulation, several batches end on the same optimizer step
        temp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        trainer.save_checkpoint(temp)
        for logger in trainer.loggers:  # what was logged so far reaches the disk with the checkpoint
            logger.save()
        if trainer.is_global_zero:
            os.replace(temp, self.path)
            log.info("checkpoint at step %d: %s", step, self.path)
        trainer.strategy.barrier("step_checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_states(state_dict["rng"])
