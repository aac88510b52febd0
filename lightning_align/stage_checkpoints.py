"""Where a stage's mid-stage checkpoint lives, and whether a re-run may resume from it.

`<run dir>/checkpoints/<stage>/last.ckpt` is written every `run.checkpoint_every_n_steps` optimizer steps
(`StepCheckpoint`), with the stage identity it was trained under in `identity.txt` beside it. A re-run of the stage
resumes from it only under the same identity (the same config and inputs, `stage_identity`); a checkpoint of another
identity is stale and deleted. Once the stage is exported and recorded as done, its checkpoints are deleted.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from lightning_align.callbacks.step_checkpoint import StepCheckpoint
from lightning_align.run_lock import remove_stale_temps

log = logging.getLogger(__name__)
CHECKPOINTS_DIR = "checkpoints"
LAST = "last.ckpt"
IDENTITY_FILE = "identity.txt"


@dataclass(frozen=True)
class StageCheckpoints:
    """The checkpoint directory of one stage under one identity; `every_n_steps` 0 writes none."""

    directory: Path
    identity: str
    every_n_steps: int

    @classmethod
    def of(cls, run_dir: Path, stage: str, identity: str, every_n_steps: int) -> StageCheckpoints:
        return cls(run_dir / CHECKPOINTS_DIR / stage, identity, every_n_steps)

    def _saved_identity(self) -> str | None:
        file = self.directory / IDENTITY_FILE
        return file.read_text().strip() if file.is_file() else None

    def prepare(self) -> None:
        """Delete a checkpoint of another identity and temps of dead writers; mark the directory with this identity
        (rank zero only, before the stage builds anything)."""
        if self.directory.is_dir():
            saved = self._saved_identity()
            if saved != self.identity:
                log.info("removed the checkpoints in %s: stage identity %s, now %s", self.directory, saved,
                         self.identity)
                shutil.rmtree(self.directory)
            else:
                remove_stale_temps(self.directory)
        if self.every_n_steps > 0 and not self.directory.is_dir():
            self.directory.mkdir(parents=True)
            (self.directory / IDENTITY_FILE).write_text(self.identity + "\n")

    def resume_path(self) -> Path | None:
        """The checkpoint to resume from: only one written under this identity."""
        last = self.directory / LAST
        return last if last.is_file() and self._saved_identity() == self.identity else None

    def callback(self) -> StepCheckpoint:
        return StepCheckpoint(self.directory / LAST, self.every_n_steps)

    def clear(self) -> None:
        """Delete the stage's checkpoints (it is done and exported), and `checkpoints/` when nothing else is left."""
        shutil.rmtree(self.directory, ignore_errors=True)
        parent = self.directory.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
