"""Work done once in a multi-process run: rank zero does it, the other ranks wait and receive its result.

The training-free stages (`prune`, `generate`) write their output directory themselves; under DDP every rank runs
the pipeline, so without this each rank would search, time and write the same directory at once. A Mutual-Taught
round samples and refits the reward model here too, so every rank trains on the same pairs with the same r_t.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.distributed as dist

from lightning_align.errors import LightningAlignError

T = TypeVar("T")


def run_on_rank_zero(compute: Callable[[], T]) -> T:
    """`compute()` on rank zero of an initialised process group, its result broadcast to every rank.

    Without a process group (a single process, or before the first distributed stage started the others) it just
    runs. If rank zero fails, the others stop too, with its message, rather than wait for a result that never comes.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return compute()
    outcome: list[tuple[bool, object] | None] = [None]
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            outcome = [(True, compute())]
        except BaseException as err:  # noqa: BLE001 -- re-raised below, after the others are told
            failure, outcome = err, [(False, str(err))]
    dist.broadcast_object_list(outcome, src=0)
    succeeded, value = outcome[0]
    if failure is not None:
        raise failure
    if not succeeded:
        raise LightningAlignError(f"rank zero stopped: {value}")
    return value  # type: ignore[return-value]
