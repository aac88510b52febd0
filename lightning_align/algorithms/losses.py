"""Training losses of the seed methods, as plain functions over tensors.

The preference losses (DPO/IPO, Bradley–Terry) take one value per sequence (already summed or averaged over tokens by
the caller) and return the mean loss plus detached per-batch statistics under stable names, so a LightningModule can
log them as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor,
    reference_rejected: Tensor,
    beta: float = 0.1,
    ipo: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Direct Preference Optimization loss (Rafailov et al. 2023, eq. 7), or IPO (Azar et al. 2023, eq. 17).

    h = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)).
    DPO: −log σ(β·h). IPO: (h − 1/(2β))², which regresses the margin to a finite target instead of pushing it to
    infinity, so it does not overfit deterministic preferences. Inputs are shape [B] log-probabilities.
    Stats: implicit rewards β·(log π − log π_ref) of chosen/rejected, their margin, and the fraction ranked right.
    """
    chosen_logratio = policy_chosen - reference_chosen
    rejected_logratio = policy_rejected - reference_rejected
    h = chosen_logratio - rejected_logratio
    losses = (h - 1.0 / (2.0 * beta)) ** 2 if ipo else -F.logsigmoid(beta * h)
    chosen_rewards = (beta * chosen_logratio).detach()
    rejected_rewards = (beta * rejected_logratio).detach()
    stats = {
        "rewards_chosen": chosen_rewards.mean(),
        "rewards_rejected": rejected_rewards.mean(),
        "rewards_margin": (chosen_rewards - rejected_rewards).mean(),
        "rewards_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
    }
    return losses.mean(), stats


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley–Terry reward-model loss −log σ(r(y_w) − r(y_l) − m) (Ouyang et al. 2022, eq. 1; Mutual-Taught §4.2).

    `margin` m (per pair or scalar) asks for a gap of at least m, as in LLaMA-2's RM when labels carry a strength.
    Inputs are shape [B] scalar rewards. Stats: accuracy (r_w > r_l) and mean margin r_w − r_l.
    """
    diff = chosen_rewards - rejected_rewards
    target = diff if margin is None else diff - margin
    loss = -F.logsigmoid(target).mean()
    detached = diff.detach()
    stats = {"accuracy": (detached > 0).float().mean(), "margin": detached.mean()}
    return loss, stats


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
