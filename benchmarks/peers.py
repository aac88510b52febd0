"""Peer rows: the same step in TRL, the trainer users would pick instead (the ``bench`` extra, never a dependency).

Without TRL installed every peer row says so instead of failing; install the peers with
``pip install -e '.[bench]'``.
"""
from __future__ import annotations

import importlib.util

from benchmarks.page import table, version
from benchmarks.registry import Options

PEERS = [
    ("DPO step (reference precomputed)", "TRL DPOTrainer, precompute_ref_log_probs"),
    ("DPO step", "TRL DPOTrainer with a live reference model"),
    ("DPO setup (reference annotation)", "TRL precompute"),
    ("reward-model step", "TRL RewardTrainer"),
]


def bench(options: Options) -> str:
    if importlib.util.find_spec("trl") is None:
        rows = [[what, peer, "not installed"] for what, peer in PEERS]
        return "TRL is not installed (`pip install -e '.[bench]'`).\n\n" + table(["what", "peer", "ratio"], rows)
    rows = [[what, peer, f"TRL {version('trl')} installed; not measured by this command yet"] for what, peer in PEERS]
    return table(["what", "peer", "ratio"], rows)
