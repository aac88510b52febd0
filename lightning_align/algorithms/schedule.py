"""Learning-rate curves as pure functions of the step, so any stage (or a resumed run) can evaluate them."""
from __future__ import annotations

import math


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up from 0 to 1 over `warmup_steps`, then cosine from 1 down to `min_lr_ratio`.

    Steps past `total_steps` stay at `min_lr_ratio`; the curve is continuous at the end of warm-up.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
