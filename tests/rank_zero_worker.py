"""Run by tests/test_distributed.py as `python -m tests.rank_zero_worker <out dir>`: `run_on_rank_zero` in a bare
2-process gloo group, once succeeding and once failing on rank zero; each rank writes what it got to
`<out>/rank<r>.json`. It imports no model code, so the two processes start fast."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_align.errors import ConfigError
from lightning_align.rank_zero import run_on_rank_zero


def _fail() -> None:
    raise ConfigError("stages.prune.model", "no such model")


def rank_zero_outcomes(rank: int, out: str) -> None:
    """What a rank gets from a rank-zero computation that names its rank, then from one that fails."""
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    record = {"value": run_on_rank_zero(lambda: f"computed by rank {dist.get_rank()}")}
    try:
        run_on_rank_zero(_fail)
    except Exception as err:  # noqa: BLE001 -- the test reads which error each rank raised
        record["error"] = f"{type(err).__name__}: {err}"
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(rank_zero_outcomes, args=(sys.argv[1],), nprocs=2)
