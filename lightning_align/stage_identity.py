"""A stage's identity: its effective config plus the identity of everything it reads.

A stage is skipped on a re-run only when its identity is the one recorded in `state.json`, so what it reads must be
part of it: a model directory of an earlier stage of the run enters as that stage's recorded identity (a stage
trained on an older upstream model reruns, whichever invocation changed the upstream), and a user's own file or
model directory enters as the sha256 of its contents. Hashing a large model takes seconds, so digests are cached in
the run directory by (path, size, mtime_ns).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lightning_align.config import config_strings
from lightning_align.stages.context import StageContext
from lightning_align.strict_json import write_atomic

CACHE_FILE = "input_hashes.json"
CHUNK = 1 << 20


class InputHashes:
    """sha256 of user files, remembered by (path, size, mtime_ns) so an unchanged file is read once per run dir."""

    def __init__(self, run_dir: Path) -> None:
        self.file = run_dir / CACHE_FILE
        try:
            self.entries: dict[str, dict[str, Any]] = json.loads(self.file.read_text()) if self.file.is_file() else {}
        except (OSError, ValueError):  # a cache: rebuilt when unreadable
            self.entries = {}
        self.changed = False

    def file_digest(self, path: Path) -> str:
        stat = path.stat()
        entry = self.entries.get(str(path))
        if entry and entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns:
            return entry["sha256"]
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        self.entries[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
        self.changed = True
        return digest.hexdigest()

    def digest(self, path: Path) -> str:
        """A file's digest, or a directory's over every file in it (relative names included)."""
        if path.is_file():
            return self.file_digest(path)
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0{self.file_digest(file)}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        if self.changed:
            write_atomic(self.file, self.entries)
            self.changed = False


def _is_input(path: Path) -> bool:
    """A file, or a directory a loader reads whole: a model directory or a `save_to_disk` dataset. Other directories
    named in a config (log and output roots) are where a stage writes, not what it reads."""
    return path.is_file() or any((path / name).is_file() for name in ("config.json", "state.json", "dataset_dict.json"))


def _input_identity(text: str, ctx: StageContext, done: dict[str, dict[str, Any]], hashes: InputHashes
                    ) -> str | None:
    """What the path `text` names, for the stage's identity; None when it names nothing the stage reads."""
    try:
        path = Path(text).resolve()
        if not path.exists():
            return None
    except (OSError, ValueError):  # not a path at all (too long, NUL bytes)
        return None
    run_root = ctx.run_dir.resolve()
    if path.is_relative_to(run_root):
        parts = path.relative_to(run_root).parts
        if not parts or parts[0] == ctx.name:
            return None
        if parts[0] in done:
            return f"stage {parts[0]} {done[parts[0]].get('identity')} {'/'.join(parts[1:])}"
    return f"sha256 {hashes.digest(path)}" if _is_input(path) else None


def stage_identity(ctx: StageContext, done: dict[str, dict[str, Any]], hashes: InputHashes) -> str:
    """Hash of the stage's effective config and of the identity of every input it names (and the model directory it
    starts from), using the identities of earlier stages as recorded in `done` (state.json's)."""
    texts = [*config_strings(ctx.config), *([str(ctx.input_dir)] if ctx.input_dir is not None else [])]
    inputs = {text: identity for text in texts
              if (identity := _input_identity(text, ctx, done, hashes)) is not None}
    payload = json.dumps({"config": ctx.config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
