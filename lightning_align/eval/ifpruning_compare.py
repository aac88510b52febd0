"""IFPruning against its baselines at equal active FFN width: per-task scores, neuron-set overlap, decode latency.

Two kinds of held-out prompts need different skills: the gold task's prose continuations (score: `gold_reward`)
and word copying (score: `copy_score`). Every model answers greedily, so scores are a function of the weights;
the likelihood of the reference answers (`response_nll`) is measured too, since it is graded where answers fail.
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

from lightning_align.algorithms.instruction_following_pruning import (
    IFPruningLM, ffn_masks, gather_mlps, swapped_mlps,
)
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, sequence_logprobs
from lightning_align.data.gold_task import gold_reward, heldout_records
from lightning_align.data.preference import encode_pairs, encode_prompt
from lightning_align.data.copy_task import copy_records, copy_score
from lightning_align.eval.latency import generation_latency_ms_per_token

Scorer = Callable[[str, str], float]
TASKS: dict[str, Scorer] = {"prose": lambda prompt, response: gold_reward(response), "copy": copy_score}


def task_records(num_prompts: int, seed: int) -> dict[str, list[dict[str, str]]]:
    """Held-out {"prompt","response"} records of both tasks: never seen in IFPruning's or the baselines' training."""
    return {"prose": heldout_records(num_prompts, seed), "copy": copy_records(num_prompts, seed, heldout=True)}


def response_nll(model: PreTrainedModel | IFPruningLM, tokenizer: PreTrainedTokenizerBase,
                 records: list[dict[str, str]], max_length: int, batch_size: int) -> float:
    """Mean NLL per reference-response token given the prompt: graded where greedy answers all score 0. An
    IFPruning model's masks come from each prompt alone, as in generation."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        ids, mask, response = (t.to(device) for t in encode_pairs(
            tokenizer, [r["prompt"] for r in chunk], [r["response"] for r in chunk], max_length))
        if isinstance(model, IFPruningLM):
            prompt = (mask.bool() & ~response).long()
            width = int(prompt.sum(1).max())
            with ffn_masks(model.llm, model.select(ids[:, :width], prompt[:, :width]).float()):
                logps = sequence_logprobs(model.llm, ids, mask, response)
        else:
            logps = sequence_logprobs(model, ids, mask, response)
        total, count = total - logps.sum().item(), count + int(response[:, 1:].sum())
    return total / count


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
