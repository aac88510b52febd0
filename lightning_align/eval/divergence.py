"""Loud warnings for a stage that made its model worse: the silent failure a wrong learning rate causes.

A fit stage measures its held-out metrics before (`<key>_start`) and after training. A held-out loss that ends
above `LOSS_BLOWUP` times where it started, or that is not finite, means the stage destroyed what it was given
(e.g. a tiny-model learning rate applied to a pretrained model); the run output and report say so.
"""
from __future__ import annotations

import math

LOSS_BLOWUP = 2.0


def divergence_warnings(metrics: dict[str, float]) -> list[str]:
    """One sentence per held-out loss that exploded or went non-finite during the stage."""
    warnings = []
    for key, value in sorted(metrics.items()):
        start = metrics.get(f"{key}_start")
        if not key.startswith("val/") or not key.endswith("loss") or start is None:
            continue
        if not math.isfinite(value):
            warnings.append(f"{key} is {value} after training (started at {start:.4g})")
        elif start > 0 and value > LOSS_BLOWUP * start:
            warnings.append(f"{key} rose from {start:.4g} to {value:.4g} ({value / start:.1f}x): the stage made the "
                            "model much worse; check its learning rate and data")
    return warnings
