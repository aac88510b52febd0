"""Sampling from a causal LM and scoring its responses: the one place every stage generates text.

Generation is a plain KV-cached loop (not `generate`) so that every random draw goes through the caller's
`torch.Generator`: the same seed gives the same samples regardless of global RNG state or batch composition order.
Prompts are left-padded for generation; (prompt, response) pairs are right-padded for training and scoring.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.data.preference import encode_pairs, encode_prompt, pad_id
from lightning_align.models.reward_model import reward_scores


@dataclass
class SamplingConfig:
    """How responses are drawn. temperature 0 means greedy; paper defaults (Mutual-Taught §5.1): 0.8 / 0.95."""

    max_new_tokens: int = 24
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 64


def _left_pad(seqs: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def _next_token(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest prefix of sorted tokens whose mass reaches top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def _generate_batch(
    model: PreTrainedModel, prompt_ids: list[list[int]], eos: int, pad: int, config: SamplingConfig,
    generator: torch.Generator | None,
) -> list[list[int]]:
    device = next(model.parameters()).device
    ids, mask = _left_pad(prompt_ids, pad)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    finished = torch.zeros(len(prompt_ids), dtype=torch.bool, device=device)
    generated: list[Tensor] = []
    next_pos = positions[:, -1:] + 1
    for _ in range(config.max_new_tokens):
        token = _next_token(out.logits[:, -1, :], config.temperature, config.top_p, generator)
        token = token.masked_fill(finished, pad)
        generated.append(token)
        finished |= token == eos
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                    past_key_values=out.past_key_values, use_cache=True)
        next_pos = next_pos + 1
    rows = torch.stack(generated, dim=1).tolist()
    return [row[: row.index(eos)] if eos in row else row for row in rows]


def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    num_samples: int,
    config: SamplingConfig,
    generator: torch.Generator | None,
) -> list[list[str]]:
    """Draw `num_samples` responses per prompt; returns texts shaped [len(prompts)][num_samples] without EOS.

    The model is put in eval mode for the duration and restored afterwards (dropout must not add noise the
    generator does not control).
    """
    was_training = model.training
    model.eval()
    flat = [encode_prompt(tokenizer, p) for p in prompts for _ in range(num_samples)]
    texts: list[str] = []
    for start in range(0, len(flat), config.batch_size):
        chunk = _generate_batch(model, flat[start:start + config.batch_size], tokenizer.eos_token_id,
                                pad_id(tokenizer), config, generator)
        texts.extend(tokenizer.decode(r, skip_special_tokens=True) for r in chunk)
    model.train(was_training)
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def sequence_logprobs(
    model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor, average: bool = False
) -> Tensor:
    """Sum (or mean, for IPO-style length normalisation) of log π(y_t | x, y_<t) over response tokens: shape [B]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    mask = response_mask[:, 1:].to(token_logps.dtype)
    total = (token_logps * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


@torch.no_grad()
def score_responses(
    reward_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str],
    max_length: int, batch_size: int = 64,
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
