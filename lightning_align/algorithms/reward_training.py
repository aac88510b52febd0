"""Bradley–Terry training of a reward model on preference pairs, shared by the RM stage and the M-step.

`pair_rewards` is the one forward both use (chosen and rejected rows in one batch); `fit_reward_model` is the short
plain-PyTorch loop Mutual-Taught's M-step runs inside a round (§4.2), where starting a nested Trainer would tangle
two training loops' state.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.algorithms.losses import bradley_terry_loss
from lightning_align.algorithms.progress import progress_bar
from lightning_align.data.preference import collate_pairs
from lightning_align.models.reward_model import reward_scores


@dataclass(frozen=True)
class RewardFitConfig:
    """M-step RM training from r_0 (paper: 1 epoch). A low rate keeps r_t near r_0's calibration: the new pairs
    are few and labelled by the loop itself, and at 1e-3 a tiny RM forgot its held-out pairs within two rounds."""

    epochs: PositiveInt = 1
    lr: PositiveFloat = 2e-4
    batch_size: PositiveInt = 16
    margin: Optional[float] = None
    seed: int = 0


def pair_rewards(model: PreTrainedModel, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(r(chosen), r(rejected)), each [B], from a [2B, T] batch laid out chosen-first by `collate_pairs`."""
    rewards = reward_scores(model, batch["input_ids"], batch["attention_mask"])
    half = rewards.shape[0] // 2
    return rewards[:half], rewards[half:]


def fit_reward_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[dict[str, Any]],
                     config: RewardFitConfig, max_length: int) -> dict[str, float]:
    """Train `model` in place with BT loss on `records`; returns the last epoch's mean loss and accuracy.

    `max_length` is the caller's (the policy's), so the RM is trained on pairs truncated as it will score them."""
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=0.0)
    rng = random.Random(config.seed)
    model.train()
    stats = {"loss": float("nan"), "accuracy": float("nan")}
    starts = range(0, len(records), config.batch_size)
    with progress_bar(config.epochs * len(starts), "reward refit", unit="step") as bar:
        for _ in range(config.epochs):
            order = list(records)
            rng.shuffle(order)
            losses, accuracies = [], []
            for start in starts:
                batch = collate_pairs(tokenizer, order[start:start + config.batch_size], max_length)
                batch = {k: v.to(device) for k, v in batch.items()}
                loss, step_stats = bradley_terry_loss(*pair_rewards(model, batch), config.margin)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
                accuracies.append(step_stats["accuracy"].item())
                bar.update()
            if losses:
                stats = {"loss": sum(losses) / len(losses), "accuracy": sum(accuracies) / len(accuracies)}
    model.eval()
    return stats
