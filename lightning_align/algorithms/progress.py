"""The one switch for the progress bars of the loops Lightning does not run: sampling, reference annotation and the
reward-model refits of Mutual-Taught's M-step. They can take minutes with no other sign of life.

Bars show a total and an ETA on stderr, vanish when done (`leave=False`) and stay off when stderr is not a terminal
(logs, CI, tests) or when `ENABLED` is False.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

ENABLED = True


def progress_bar(total: int, desc: str, unit: str = "batch") -> tqdm:
    """A bar over ``total`` steps; call ``update()`` once per step and close it (it is a context manager)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=not (ENABLED and sys.stderr.isatty()))
