"""Training losses of the seed methods, as plain functions over tensors."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened next-token distributions, mean over (unmasked) tokens.

    Hinton et al. (2015): multiplying by T² keeps the gradient scale independent of T. IDEA Prune (arXiv 2503.05920)
    distils the enlarged model into the pruned one during recovery. Logits are `[..., vocab]`; `mask` (same leading
    shape, 1 = counted) drops padding.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = (teacher.exp() * (teacher - student)).sum(-1) * temperature**2
    if mask is None:
        return per_token.mean()
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1.0)
