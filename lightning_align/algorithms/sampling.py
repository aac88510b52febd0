"""Sampling from a causal LM and scoring its responses: the one place every stage generates text.

Generation is transformers' `generate` on left-padded prompts (each encoded by `encode_prompt`, so through the chat
template when there is one); (prompt, response) pairs are right-padded for training and scoring. `generate` draws from
the global RNG of the model's device, so each call forks it and seeds it from one draw of the caller's
`torch.Generator`: the same seed gives the same samples whatever the global RNG state, which is left untouched.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from jsonargparse.typing import NonNegativeFloat, PositiveInt, restricted_number_type
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.data.preference import Prompt, encode_pairs, encode_prompt, pad_id
from lightning_align.algorithms.progress import progress_bar
from lightning_align.errors import ConfigError
from lightning_align.models.reward_model import reward_scores

NucleusMass = restricted_number_type("NucleusMass", float, [(">", 0), ("<=", 1)], join="and",
                                     docstring="top_p in (0, 1]: 0 would keep no token, over 1 is no probability")


@dataclass
class SamplingConfig:
    """How responses are drawn. temperature 0 means greedy; paper defaults (Mutual-Taught §5.1): 0.8 / 0.95.

    Sampling is temperature + nucleus only (transformers' default top-k of 50 is switched off); other decoding
    settings in the model's own `generation_config` still apply. The field types are checked when a config is parsed,
    so a bad value in a callback's `sampling:` is refused at planning, named by its full key.
    """

    max_new_tokens: PositiveInt = 24
    temperature: NonNegativeFloat = 0.8
    top_p: NucleusMass = 0.95
    batch_size: PositiveInt = 64


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: the model's `generation_config.eos_token_id` (an int or a list, e.g. Llama-3's
    end-of-text and end-of-turn) and the tokenizer's EOS."""
    configured = model.generation_config.eos_token_id
    ids = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    eos = tokenizer.eos_token_id
    return ids + [eos] if eos is not None and eos not in ids else ids


def prompt_budget(model: PreTrainedModel, config: SamplingConfig) -> int | None:
    """Most prompt tokens that leave room for `max_new_tokens` in the model's context (None: no known limit)."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context is None:
        return None
    if config.max_new_tokens >= context:
        raise ConfigError("sampling.max_new_tokens", f"{config.max_new_tokens} new tokens leave no room for a prompt "
                          f"in the model's context of {context} tokens")
    return context - config.max_new_tokens


@contextmanager
def _seeded(device: torch.device, generator: torch.Generator | None) -> Iterator[None]:
    """Within the block, the RNG `generate` draws from (CPU, or the model's CUDA device) is seeded from `generator`;
    afterwards it is as before. Without a generator the global RNG is used as is."""
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for d in cuda:
            with torch.cuda.device(d):
                torch.cuda.manual_seed(seed)
        yield


def _decoding(config: SamplingConfig) -> dict[str, object]:
    if config.temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": config.temperature, "top_p": config.top_p, "top_k": 0}


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    num_samples: int,
    config: SamplingConfig,
    generator: torch.Generator | None,
) -> list[list[str]]:
    """Draw `num_samples` responses per prompt; returns texts shaped [len(prompts)][num_samples].

    A response ends before the first of `stop_ids` and is decoded without special tokens. Prompt plus response fit
    the model's context: a prompt longer than `prompt_budget` loses tokens from the left (as `encode_pairs` does in
    training). The model is put in eval mode for the duration and restored afterwards (dropout must not add noise
    the generator does not control).
    """
    device = next(model.parameters()).device
    stops, pad, budget = stop_ids(model, tokenizer), pad_id(tokenizer), prompt_budget(model, config)
    flat = [encode_prompt(tokenizer, p) for p in prompts for _ in range(num_samples)]
    if budget is not None:
        flat = [ids[-budget:] for ids in flat]
    was_training = model.training
    model.eval()
    texts: list[str] = []
    try:
        starts = range(0, len(flat), config.batch_size)
        with _seeded(device, generator), progress_bar(len(starts), "sampling") as bar:
            for start in starts:
                ids, mask = _left_pad(flat[start:start + config.batch_size], pad)
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     max_new_tokens=config.max_new_tokens, eos_token_id=stops or None, pad_token_id=pad,
                                     **_decoding(config))
                for row in out[:, ids.shape[1]:].tolist():
                    end = next((i for i, token in enumerate(row) if token in stops), len(row))
                    texts.append(tokenizer.decode(row[:end], skip_special_tokens=True))
                bar.update()
    finally:
        model.train(was_training)
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def sequence_logprobs(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, average: bool = False
) -> Tensor:
    """Sum (or mean, for IPO-style length normalisation) of log π(y_t | x, y_<t) over response tokens: shape [B].

    The forward builds no KV cache and computes LM-head logits only from the position before the batch's earliest
    response token on (`logits_to_keep`): the prompt columns every row shares predict no scored token, and at a
    large vocabulary their logits would be most of the step's compute and memory.
    """
    scored = response_mask.any(0).nonzero()
    first = int(scored[0]) if len(scored) else input_ids.shape[1]
    keep = input_ids.shape[1] - max(first - 1, 0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep).logits
    # Every kept position gets a target (the last a dummy, dropped after) so the logits are used whole: a slice of
    # them would cost a full-size zero-filled gradient in the backward pass.
    targets = torch.nn.functional.pad(input_ids[:, input_ids.shape[1] - keep + 1:], (0, 1))
    token_logps = token_logprobs(logits, targets)[:, :-1]
    mask = response_mask[:, input_ids.shape[1] - keep + 1:].to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


def token_logprobs(logits: Tensor, targets: Tensor, chunk_elements: int = 2**22) -> Tensor:
    """log softmax(logits)[target] per position, [B, T, V] → [B, T] in fp32, as `log_softmax(...).gather(...)`.

    No full-vocabulary fp32 copy of the logits is made or saved: the log-normaliser is a logsumexp over chunks of
    about `chunk_elements` logits (upcast one chunk at a time), and the backward pass writes the gradient
    onehot(target) − softmax straight into one tensor of the logits' shape. At a 150k vocabulary those copies,
    not the model, dominate a DPO step's memory.
    """
    return _TokenLogprobs.apply(logits, targets, max(1, chunk_elements // (logits.shape[0] * logits.shape[-1])))


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, rows: int) -> Tensor:
        normaliser = torch.cat([torch.logsumexp(chunk.float(), dim=-1) for chunk in logits.split(rows, dim=1)], dim=1)
        ctx.save_for_backward(logits, targets, normaliser)
        ctx.rows = rows
        return logits.gather(-1, targets[..., None]).squeeze(-1).float() - normaliser

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, normaliser = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for start in range(0, logits.shape[1], ctx.rows):
            rows = slice(start, start + ctx.rows)
            probs = (logits[:, rows].float() - normaliser[:, rows, None]).exp_()
            grad_logits[:, rows] = probs.mul_(-grad[:, rows, None])
        grad_logits.scatter_add_(-1, targets[..., None], grad[..., None].to(grad_logits.dtype))
        return grad_logits, None, None


@torch.no_grad()
def score_responses(
    reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
    responses: Sequence[str], max_length: int, batch_size: int = 64,
) -> list[float]:
    """The reward model's scalar score of each (prompt, response), in eval mode, batched."""
    was_training = reward_model.training
    reward_model.eval()
    device = next(reward_model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask, _ = encode_pairs(tokenizer, prompts[start:start + batch_size],
                                    responses[start:start + batch_size], max_length)
        scores.extend(reward_scores(reward_model, ids.to(device), mask.to(device)).tolist())
    reward_model.train(was_training)
    return scores
