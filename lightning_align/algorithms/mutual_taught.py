"""Mutual-Taught (Shi et al., ACL 2025, arXiv 2506.06292): one EM round, as two functions read top to bottom.

Round t starts from policy π_{t-1} and reward model r_{t-1}:

1. `start_round` (§4.1, before training): per prompt of the round's split, sample k responses from π_{t-1}, rank
   them with r_{t-1} and build one DPO pair; also draw what the round's end compares with: π_{t-1}'s responses on
   the held-out selection prompts, scored by r_{t-1}, and y_old ~ π_{t-1} on the RM prompts.
2. The E-step itself: DPO on those pairs with reference π_{t-1}, keeping a few snapshots of the policy. This is the
   caller's training loop (`callbacks/mutual_taught_rounds.py` drives it through Lightning).
3. `end_round` (§4.1 then §4.2): the snapshot whose selection responses r_{t-1} prefers most often to π_{t-1}'s
   (ties ½) becomes π_t; if even the best wins less than τ of the time, π_{t-1} is kept and the rounds stop. Else
   M-step: pairs y_new ~ π_t ≻ y_old, filtered by ε, plus the E-step pairs; a copy of r_0 trained on them is r_t
   (with the replay extension, r_0's own training pairs join them).

Every draw has its own generator per (seed, round, purpose), so reruns and resumes draw the same samples.
"""
from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.algorithms.generation_strategies import self_aggregate
from lightning_align.algorithms.reward_training import RewardFitConfig, fit_reward_model
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, score_responses

SAMPLES, SELECTION, RM_BEFORE, RM_AFTER = range(4)  # draw purposes: each gets its own generator per round

State = dict[str, torch.Tensor]


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
    """Share of prompts where the candidate's response scores above the previous policy's; ties count one half."""
    if len(new_scores) != len(old_scores) or not new_scores:
        raise ValueError("win rate needs two equally long, non-empty score lists")
    return sum(1.0 if n > o else 0.5 if n == o else 0.0 for n, o in zip(new_scores, old_scores)) / len(new_scores)


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


def round_generator(seed: int, round_index: int, purpose: int) -> torch.Generator:
    """A generator per (seed, round, purpose): reruns and resumes draw the same samples."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round_index * 101 + purpose)


def snapshot_batches(batches: int, checkpoints: int) -> set[int]:
    """Indices of the batches after which the E-step keeps a snapshot: `checkpoints` evenly spaced, ending last."""
    return {math.ceil(batches * (j + 1) / checkpoints) - 1 for j in range(checkpoints)}


@dataclass(frozen=True)
class RoundConfig:
    """One round's settings. `fit` None keeps r_0 for every round (iterative DPO with a frozen RM); an
    `aggregation_template` adds a Generative Self-Aggregation answer (arXiv 2503.04104) to the k samples; `gold`
    (a response's gold reward) ranks and selects in place of r_{t-1}: the oracle-RM ceiling of the ablations;
    `replay` (r_0's own training pairs) joins every M-step's data, an extension beyond the paper."""

    num_samples: int
    sampling: SamplingConfig
    tau: float
    max_length: int
    seed: int
    fit: Optional[RewardFitConfig] = None
    aggregation_template: Optional[str] = None
    gold: Optional[Callable[[str], float]] = None
    replay: tuple[dict[str, str], ...] = ()


@dataclass
class RoundStart:
    """What round t takes from π_{t-1} and r_{t-1} before training and needs again at its end."""

    pairs: list[dict[str, Any]]  # E-step DPO pairs; the caller adds π_{t-1}'s reference log-probs
    baseline: list[float]  # r_{t-1}(y ~ π_{t-1}) on the selection prompts
    before: list[str]  # y_old ~ π_{t-1} on the RM prompts ([] without a refit)
    gsa_chosen: Optional[float] = None  # share of pairs whose chosen response is the GSA answer


@dataclass
class RoundEnd:
    """The round's outcome; `reward_model` is r_t, or None when r_{t-1} stays (frozen RM, or τ stop)."""

    win_rates: list[float]
    checkpoint: int
    stopped: bool
    reward_model: Optional[PreTrainedModel] = None
    m_step: dict[str, float] = field(default_factory=dict)


def _draw(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], k: int,
          config: RoundConfig, round_index: int, purpose: int) -> list[list[str]]:
    return sample_responses(policy, tokenizer, prompts, k, config.sampling,
                            round_generator(config.seed, round_index, purpose))


def _one_each(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: RoundConfig,
              round_index: int, purpose: int) -> list[str]:
    return [group[0] for group in _draw(policy, tokenizer, prompts, 1, config, round_index, purpose)]


def candidate_pool(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   config: RoundConfig, round_index: int) -> list[list[str]]:
    """The responses the RM ranks for each prompt: k samples of π_{t-1}, plus their GSA aggregate when enabled."""
    samples = _draw(policy, tokenizer, prompts, config.num_samples, config, round_index, SAMPLES)
    if config.aggregation_template is None:
        return samples
    aggregates = self_aggregate(policy, tokenizer, prompts, samples, config.sampling, config.aggregation_template)
    return [group + [aggregate] for group, aggregate in zip(samples, aggregates)]


def rank_scores(reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                responses: list[str], config: RoundConfig) -> list[float]:
    """What the round ranks, selects and filters by: r_{t-1}'s scores, or the gold reward with the oracle ranker."""
    if config.gold is not None:
        return [config.gold(response) for response in responses]
    return score_responses(reward_model, tokenizer, prompts, responses, config.max_length)


def selection_scores(policy: PreTrainedModel, reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     prompts: list[str], config: RoundConfig, round_index: int) -> list[float]:
    """r_{t-1}'s scores of one response per selection prompt; the same draws for every policy of the round."""
    return rank_scores(reward_model, tokenizer, prompts,
                       _one_each(policy, tokenizer, prompts, config, round_index, SELECTION), config)


def start_round(policy: PreTrainedModel, reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                splits: PromptSplits, round_index: int, config: RoundConfig) -> RoundStart:
    """§4.1 up to DPO: sample from π_{t-1}, rank with r_{t-1}, one pair per prompt; plus the round end's baselines."""
    prompts = splits.policy[round_index]
    pool = candidate_pool(policy, tokenizer, prompts, config, round_index)
    width = len(pool[0])
    flat = rank_scores(reward_model, tokenizer, [p for p in prompts for _ in range(width)],
                       [r for group in pool for r in group], config)
    scores = [flat[i * width:(i + 1) * width] for i in range(len(prompts))]
    start = RoundStart(
        pairs=e_step_pairs(prompts, pool, scores),
        baseline=selection_scores(policy, reward_model, tokenizer, splits.selection, config, round_index),
        before=(_one_each(policy, tokenizer, splits.reward, config, round_index, RM_BEFORE)
                if config.fit is not None else []))
    if config.aggregation_template is not None:
        chosen = [pair[0] == group[-1] for group, values in zip(pool, scores)
                  if (pair := e_step_pair(group, values)) is not None]
        start.gsa_chosen = sum(chosen) / max(1, len(chosen))
    return start


def end_round(policy: PreTrainedModel, snapshots: list[State], start_state: State, reward_model: PreTrainedModel,
              tokenizer: PreTrainedTokenizerBase, splits: PromptSplits, round_index: int, start: RoundStart,
              config: RoundConfig, base_reward_model: Callable[[], PreTrainedModel]) -> RoundEnd:
    """§4.1 checkpoint selection with the τ stop, then the §4.2 M-step; loads π_t (or π_{t-1}) into `policy`.

    `base_reward_model` returns a fresh copy of r_0 on the training device: r_t is always re-trained from it."""
    rates = []
    for state in snapshots:
        policy.load_state_dict(state)
        rates.append(win_rate(selection_scores(policy, reward_model, tokenizer, splits.selection, config,
                                               round_index), start.baseline))
    best, stop = select_checkpoint(rates, config.tau)
    policy.load_state_dict(start_state if stop else snapshots[best])
    end = RoundEnd(rates, best, stop)
    if stop or config.fit is None:
        return end
    prompts = splits.reward
    after = _one_each(policy, tokenizer, prompts, config, round_index, RM_AFTER)
    score = lambda texts: rank_scores(reward_model, tokenizer, prompts, texts, config)  # noqa: E731
    pairs, epsilon = m_step_pairs(prompts, after, start.before, score(after), score(start.before))
    e_pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in start.pairs]
    refit = base_reward_model()
    refit.requires_grad_(True)
    with torch.enable_grad():
        stats = fit_reward_model(refit, tokenizer, pairs + e_pairs + list(config.replay), config.fit,
                                 config.max_length)
    refit.requires_grad_(False)
    end.reward_model = refit
    end.m_step = {"m_pairs": len(pairs), "epsilon": epsilon, "rm_fit_accuracy": stats["accuracy"]}
    if config.replay:
        end.m_step["replay_pairs"] = len(config.replay)
    return end
