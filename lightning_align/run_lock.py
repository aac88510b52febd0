"""One pipeline at a time per run directory, and no debris from killed ones.

Two runs on the same `run.name` would both train every stage, interleave `metrics.csv` rows and race on
`state.json`; the second one is refused, naming the process that holds the directory. The lock is an `flock` on
`<run dir>/.lock` (which holds the owner's pid for that message): the kernel drops it when the owner dies, however it
dies, so a lock left by a killed run is simply taken over.
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lightning_align.errors import ConfigError

LOCK_FILE = ".lock"
# `.<name>.tmp<pid>`: a stage directory or JSON file being written by process <pid> (checkpoint.atomic_dir,
# strict_json.write_atomic); renamed into place when complete.
TEMP_NAME = re.compile(r"^\.(.+)\.tmp(\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process; raises `ConfigError` naming `run.name` and the holder's pid when taken."""
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError("run.name", f"run directory {run_dir} is in use by process {holder} (lock {path}); "
                              "wait for it to finish or choose another run.name") from None
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # else the previous holder removed the file between our open and our lock: retry
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking, so a waiter that opened this file retries on a fresh one
        os.close(fd)


def remove_stale_temps(run_dir: Path) -> list[Path]:
    """Remove the temporary files and directories of writers that died (killed during an export or a state write);
    returns what was removed."""
    removed = []
    for entry in run_dir.iterdir():
        match = TEMP_NAME.match(entry.name)
        if match is None or int(match.group(2)) == os.getpid() or _alive(int(match.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
