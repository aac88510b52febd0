"""Mutual-Taught (Shi et al., ACL 2025, arXiv 2506.06292): the data side of its EM rounds, as pure functions.

Round t starts from policy π_{t-1} and reward model r_{t-1}:
- E-step (§4.1): per prompt of the round's split, sample k responses, score them with r_{t-1}, and build one DPO pair
  (`e_step_pair`); train π by DPO with reference π_{t-1}.
- Checkpoint selection (§4.1): the E-step's checkpoint whose held-out responses r_{t-1} prefers most often to
  π_{t-1}'s becomes π_t; if even the best wins less than τ of the time, stop (`select_checkpoint`).
- M-step (§4.2): pairs (y_new ~ π_t) ≻ (y_old ~ π_{t-1}) on the RM split, filtered by ε (`m_step_pairs`), plus the
  E-step pairs; the RM is re-trained from r_0 on them.
Models, sampling and training live in the callbacks; everything here is data in, data out.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class PromptSplits:
    """Prompts split once (§5.1): a fresh policy split per round, one RM split, one held-out selection set."""

    policy: list[list[str]]
    reward: list[str]
    selection: list[str]


def split_prompts(prompts: list[str], rounds: int, policy_size: int, reward_size: int, selection_size: int,
                  seed: int) -> PromptSplits:
    """Shuffle by `seed`, then cut `rounds` policy splits, the RM split and the selection set, all disjoint."""
    needed = rounds * policy_size + reward_size + selection_size
    if len(prompts) < needed:
        raise ValueError(f"{needed} prompts needed ({rounds} rounds x {policy_size} + {reward_size} + "
                         f"{selection_size}), only {len(prompts)} given")
    order = list(prompts)
    random.Random(seed).shuffle(order)
    policy = [order[r * policy_size:(r + 1) * policy_size] for r in range(rounds)]
    start = rounds * policy_size
    return PromptSplits(policy, order[start:start + reward_size],
                        order[start + reward_size:start + reward_size + selection_size])


def e_step_pair(responses: list[str], scores: list[float]) -> tuple[str, str] | None:
    """(chosen, rejected) among k scored responses, or None when all scores are equal (no preference).

    chosen = the shortest (in characters; earliest on ties) response scoring strictly above the mean — the paper's
    length control against RMs that reward verbosity; rejected = the lowest-scoring one (earliest on ties).
    """
    if len(responses) != len(scores):
        raise ValueError(f"{len(responses)} responses but {len(scores)} scores")
    mean = sum(scores) / len(scores)
    above = [i for i, s in enumerate(scores) if s > mean]
    if not above:
        return None
    chosen = min(above, key=lambda i: (len(responses[i]), i))
    rejected = min(range(len(scores)), key=lambda i: (scores[i], i))
    return responses[chosen], responses[rejected]


def e_step_pairs(prompts: list[str], responses: list[list[str]], scores: list[list[float]]) -> list[dict[str, str]]:
    """One {"prompt","chosen","rejected"} record per prompt that has a preference."""
    records = []
    for prompt, texts, values in zip(prompts, responses, scores, strict=True):
        pair = e_step_pair(texts, values)
        if pair is not None:
            records.append({"prompt": prompt, "chosen": pair[0], "rejected": pair[1]})
    return records


def win_rate(new_scores: list[float], old_scores: list[float]) -> float:
    """Fraction of prompts where the RM scores the candidate's response strictly above the previous policy's."""
    if len(new_scores) != len(old_scores) or not new_scores:
        raise ValueError("win rate needs two equally long, non-empty score lists")
    return sum(n > o for n, o in zip(new_scores, old_scores)) / len(new_scores)


def select_checkpoint(win_rates: list[float], tau: float) -> tuple[int, bool]:
    """(index of the best checkpoint — the earliest on ties, stop?) where stop means best win rate < τ."""
    best = max(range(len(win_rates)), key=lambda i: (win_rates[i], -i))
    return best, win_rates[best] < tau


def m_step_pairs(prompts: list[str], new_responses: list[str], old_responses: list[str], new_scores: list[float],
                 old_scores: list[float]) -> tuple[list[dict[str, str]], float]:
    """Pairs y_new ≻ y_old kept when Δ = r(y_new) − r(y_old) > −ε, ε = population std of r(y_old); returns (pairs, ε).

    The filter drops only pairs the current RM finds clearly worse after the update (§4.2): most pairs are kept,
    because the E-step was *meant* to improve the policy. Identical responses carry no preference and are dropped.
    """
    epsilon = statistics.pstdev(old_scores) if len(old_scores) > 1 else 0.0
    records = []
    for prompt, new, old, sn, so in zip(prompts, new_responses, old_responses, new_scores, old_scores, strict=True):
        if new != old and sn - so > -epsilon:
            records.append({"prompt": prompt, "chosen": new, "rejected": old})
    return records, epsilon
