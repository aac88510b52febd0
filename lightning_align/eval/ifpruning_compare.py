"""IFPruning against its baselines at equal active FFN width: per-task scores, neuron-set overlap, decode latency.

Two kinds of held-out prompts need different skills: the gold task's prose continuations (score: `gold_reward`)
and word copying (score: `copy_score`). Every model answers greedily, so scores are a function of the weights.
The overlap analysis follows the paper's: the Jaccard index of the neuron sets the predictor picks for two prompts,
averaged over layers, within one task and across the two. Latency compares decoding with the gathered sub-network
of one prompt against the dense model of the active width, token for token.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.algorithms.instruction_following_pruning import IFPruningLM, gather_mlps, swapped_mlps
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses
from lightning_align.data.gold_task import gold_reward, heldout_prompts
from lightning_align.data.preference import encode_prompt
from lightning_align.data.copy_task import copy_records, copy_score
from lightning_align.eval.latency import generation_latency_ms_per_token

Scorer = Callable[[str, str], float]
TASKS: dict[str, Scorer] = {"prose": lambda prompt, response: gold_reward(response), "copy": copy_score}


def task_prompts(num_prompts: int, seed: int) -> dict[str, list[str]]:
    """Held-out prompts of both tasks: never seen in IFPruning's or the baselines' training."""
    return {"prose": heldout_prompts(num_prompts, seed),
            "copy": [r["prompt"] for r in copy_records(num_prompts, seed, heldout=True)]}


def task_scores(model: PreTrainedModel | IFPruningLM, tokenizer: PreTrainedTokenizerBase,
                prompts: dict[str, list[str]], sampling: SamplingConfig) -> dict[str, float]:
    """Mean score of greedy answers per task."""
    greedy = SamplingConfig(max_new_tokens=sampling.max_new_tokens, temperature=0.0, batch_size=sampling.batch_size)
    scores = {}
    for task, task_list in prompts.items():
        answers = [group[0] for group in sample_responses(model, tokenizer, task_list, 1, greedy, None)]
        scores[task] = sum(TASKS[task](p, a) for p, a in zip(task_list, answers)) / len(task_list)
    return scores


def prompt_masks(model: IFPruningLM, tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> torch.Tensor:
    """The predictor's neuron sets [N, L, W] (bool), one prompt at a time as generation selects them."""
    device = next(model.parameters()).device
    rows = []
    for prompt in prompts:
        ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
        rows.append(model.select(ids, torch.ones_like(ids))[0])
    return torch.stack(rows)


def mean_jaccard(a: torch.Tensor, b: torch.Tensor, same: bool) -> float:
    """Mean over pairs (one mask of `a`, one of `b`; distinct pairs when `same`) of the layer-averaged Jaccard."""
    pairs = itertools.combinations(range(len(a)), 2) if same else itertools.product(range(len(a)), range(len(b)))
    values = [((a[i] & b[j]).sum(-1) / (a[i] | b[j]).sum(-1)).float().mean().item() for i, j in pairs]
    if not values:
        raise ValueError("the overlap within a task needs at least two prompts")
    return sum(values) / len(values)


def overlaps(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Jaccard within each task and across every pair of tasks (keys `prose~prose`, `prose~copy`, ...)."""
    names = list(masks)
    out = {f"{t}~{t}": mean_jaccard(masks[t], masks[t], same=True) for t in names}
    out.update({f"{a}~{b}": mean_jaccard(masks[a], masks[b], same=False) for a, b in itertools.combinations(names, 2)})
    return out


def latency(ifpruning: IFPruningLM, dense: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
            new_tokens: int, repeats: int, threads: int | None) -> dict[str, float]:
    """ms per generated token: the gathered sub-network for `prompt`, the dense active-width model, the full model;
    plus the one-off ms of selecting and gathering the sub-network."""
    device = next(ifpruning.parameters()).device
    ids = torch.tensor([encode_prompt(tokenizer, prompt)], device=device)
    start = time.perf_counter()
    mlps = gather_mlps(ifpruning.llm, ifpruning.select(ids, torch.ones_like(ids))[0])
    select_ms = (time.perf_counter() - start) * 1000
    full = generation_latency_ms_per_token([ifpruning.llm], ids, new_tokens, repeats, threads=threads)[0]
    with swapped_mlps(ifpruning.llm, mlps) as gathered:
        sub, small = generation_latency_ms_per_token([gathered, dense], ids, new_tokens, repeats, threads=threads)
    return {"gathered_ms_per_token": sub, "dense_ms_per_token": small, "full_ms_per_token": full,
            "select_gather_ms": select_ms}
