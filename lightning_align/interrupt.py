"""Ctrl-C during a run raises `Interrupted`, so the pipeline knows which stage stopped and marks nothing done."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

from lightning_align.errors import Interrupted


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted()


@contextmanager
def sigint_raises_interrupted() -> Iterator[None]:
    """Within the block SIGINT raises `Interrupted` (see its docstring for why not `KeyboardInterrupt`); the previous
    handler is restored after. Signal handlers can only be set from the main thread; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
