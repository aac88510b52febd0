"""Answering prompts from N samples: one sample, best-of-N by a reward model, or Generative Self-Aggregation.

Generative Self-Aggregation (GSA; Li et al., 2025, arXiv 2503.04104) first samples N diverse responses, then puts
them into the model's context next to the request and lets the model *generate* one new response. The model never
judges, ranks or votes, so GSA needs no verifier and no answer that can be majority-voted (self-consistency's
requirement): it applies to open-ended requests. Best-of-N is the discriminative counterpart: an external reward
model scores the N samples and the highest wins.

Every strategy starts from the same draw of N candidates (`sample_responses` with the caller's generator), so for the
same seed the strategies differ only in what they do with those candidates and can be compared prompt by prompt.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from string import Formatter
from typing import Callable, Literal, Sequence, get_args

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.algorithms.sampling import SamplingConfig, sample_responses
from lightning_align.data.preference import Prompt
from lightning_align.errors import ConfigError

Strategy = Literal["sample", "best-of-n", "gsa"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
Scorer = Callable[[Sequence[Prompt], Sequence[str]], list[float]]
"""Reward of each (prompt, response): a reward model behind a function, so its tokenizer and length are its own."""

AGGREGATION_TEMPLATE = (
    "Here is a request and several candidate responses to it.\n\n"
    "Request:\n{prompt}\n\n"
    "{candidates}\n\n"
    "Write one new, improved response to the request, drawing on the strengths of the candidates. "
    "Reply with the response only."
)
TEMPLATE_FIELDS = {"prompt", "candidates"}


@dataclass
class Generation:
    """One answer to one prompt. `candidates` are the N samples it was built from (empty for a plain sample);
    `score` / `candidate_scores` are reward-model scores of the answer and of the candidates (None / empty
    without a reward model)."""

    prompt: Prompt
    response: str
    candidates: list[str] = field(default_factory=list)
    score: float | None = None
    candidate_scores: list[float] = field(default_factory=list)


def check_template(template: str, key: str = "aggregation_template") -> None:
    """The template must hold `{prompt}` and `{candidates}` and no other field (literal braces are doubled)."""
    try:
        names = {name for _, name, _, _ in Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ConfigError(key, f"not a valid format string ({err}); write literal braces as '{{{{' and '}}}}'") \
            from None
    if names != TEMPLATE_FIELDS:
        raise ConfigError(key, f"must contain exactly the fields {{prompt}} and {{candidates}}, has "
                          f"{', '.join('{' + n + '}' for n in sorted(names)) or 'none'}")


def aggregation_prompt(prompt: Prompt, candidates: Sequence[str], template: str = AGGREGATION_TEMPLATE) -> Prompt:
    """The GSA context: the request and its numbered candidates, written into `template`.

    A conversation keeps its earlier turns; only its last user message (the request) is rewritten, so a system
    prompt or the history still applies. The result is a prompt like any other and goes through the chat template.
    """
    listed = "\n\n".join(f"Response {i}:\n{text.strip()}" for i, text in enumerate(candidates, start=1))
    if isinstance(prompt, str):
        return template.format(prompt=prompt, candidates=listed)
    last = max(i for i, message in enumerate(prompt) if message["role"] == "user")
    request = {"role": "user", "content": template.format(prompt=prompt[last]["content"], candidates=listed)}
    return [*prompt[:last], request, *prompt[last + 1:]]


def self_aggregate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
    candidates: Sequence[Sequence[str]], config: SamplingConfig, template: str = AGGREGATION_TEMPLATE,
) -> list[str]:
    """GSA's second step: one new response per prompt, written with that prompt's candidates in context.

    Decoded greedily (the diversity is in the candidates; the aggregate is the model's single most likely synthesis,
    so it is a function of the candidates alone and needs no generator). `config` gives the length and batch size.
    An aggregation prompt longer than the model's context loses tokens from the left, as every prompt does.
    """
    contexts = [aggregation_prompt(p, c, template) for p, c in zip(prompts, candidates, strict=True)]
    greedy = dataclasses.replace(config, temperature=0.0)
    return [group[0] for group in sample_responses(model, tokenizer, contexts, 1, greedy, None)]


def best_index(scores: Sequence[float]) -> int:
    """Best-of-N's pick: the highest reward (the earliest on ties)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], strategy: Strategy,
    num_samples: int, config: SamplingConfig, generator: torch.Generator | None, scorer: Scorer | None = None,
    template: str = AGGREGATION_TEMPLATE,
) -> list[Generation]:
    """Answer every prompt with `strategy` from `num_samples` candidates drawn with `generator`.

    - "sample": every candidate is an answer: `num_samples` Generations per prompt, in prompt order.
    - "best-of-n": the candidate `scorer` rates highest; needs a scorer.
    - "gsa": `self_aggregate` over the candidates; with a scorer, the aggregate and candidates are scored too.
    """
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", f"unknown strategy '{strategy}' (one of {', '.join(STRATEGIES)})")
    if num_samples < 1:
        raise ConfigError("num_samples", f"must be at least 1, got {num_samples}")
    if strategy == "best-of-n" and scorer is None:
        raise ConfigError("reward_model", "best-of-n picks by reward-model score: give a reward model")
    candidates = sample_responses(model, tokenizer, prompts, num_samples, config, generator)
    scores: list[list[float]] = [[] for _ in prompts]
    if scorer is not None:  # one call for all N x prompts pairs, so the reward model batches across prompts
        flat = scorer([p for p in prompts for _ in range(num_samples)], [r for group in candidates for r in group])
        scores = [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]
    if strategy == "sample":
        return [Generation(p, text, score=values[i] if values else None)
                for p, group, values in zip(prompts, candidates, scores) for i, text in enumerate(group)]
    if strategy == "best-of-n":
        picks = [best_index(values) for values in scores]
        return [Generation(p, group[i], group, values[i], values)
                for p, group, values, i in zip(prompts, candidates, scores, picks)]
    aggregates = self_aggregate(model, tokenizer, prompts, candidates, config, template)
    final = scorer(prompts, aggregates) if scorer is not None else [None] * len(prompts)
    return [Generation(p, text, group, score, values)
            for p, text, group, score, values in zip(prompts, aggregates, candidates, final, scores)]
