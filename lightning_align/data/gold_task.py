"""Built-in "plain prose" task with a programmatic gold reward, for the embedded default run.

Prompts are the first words of lines of Python's own documentation (`pydoc_data.topics`, the embedded corpus); a
response continues the line. The documentation mixes prose with code, tables and markup ("`__init__()`",
"+-----+", "3.14", "ValueError"), so continuations vary a lot in how much plain English they contain.

Gold reward: the share of whitespace-separated words of the response that are plain lowercase words (letters only,
optionally followed by one of ",.;:"), and 0 for responses shorter than `MIN_WORDS` words.

Why this property:
- checkable exactly, in one regex, with no model in the loop;
- graded (a value in [0, 1]) and varied on both corpus text and samples of a tiny policy, so pairs are informative;
- learnable from tokens: a BPE token already tells whether it holds capitals, digits, underscores or brackets, so a
  reward model of a few million parameters picks it up from a few hundred pairs in about a minute on CPU, and a
  DPO step moves a tiny policy's token distribution towards it;
- the minimum length closes the obvious hack (the empty answer) and interacts with Mutual-Taught's length control
  (chosen = the *shortest* above-mean response, §4.1): an RM that never saw short answers ranked low would let the
  policy collapse to them, so the initial pairs include truncated continuations as rejected answers.
The gold reward labels only the initial RM pairs (standing in for human labels) and is otherwise used for evaluation.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

from lightning_align.data.corpus import embedded_texts

MIN_WORDS = 4
PROMPT_WORDS = 3
MAX_RESPONSE_WORDS = 12
PLAIN_WORD = re.compile(r"[a-z]+[,.;:]?")
ROLES = ("sft", "reward", "prompts")


def gold_reward(response: str) -> float:
    """Share of plain lowercase words in the response; 0 below MIN_WORDS words."""
    words = response.split()
    if len(words) < MIN_WORDS:
        return 0.0
    return sum(PLAIN_WORD.fullmatch(w) is not None for w in words) / len(words)


def gold_win_rate(new_responses: list[str], old_responses: list[str]) -> float:
    """Fraction of prompts where the new response has the higher gold reward; ties count one half."""
    wins = 0.0
    for new, old in zip(new_responses, old_responses, strict=True):
        a, b = gold_reward(new), gold_reward(old)
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / max(1, len(new_responses))


@lru_cache(maxsize=8)
def _lines(seed: int) -> tuple[tuple[str, str], ...]:
    """All (prompt, continuation) pairs, shuffled by `seed`; documentation order is fixed, so this is deterministic."""
    pairs = []
    for text in embedded_texts():
        for line in text.splitlines():
            words = line.split()
            if len(words) >= PROMPT_WORDS + MIN_WORDS:
                pairs.append((" ".join(words[:PROMPT_WORDS]),
                              " " + " ".join(words[PROMPT_WORDS:PROMPT_WORDS + MAX_RESPONSE_WORDS])))
    random.Random(seed).shuffle(pairs)
    return tuple(pairs)


def _role(role: str, seed: int) -> list[tuple[str, str]]:
    """Lines of one role: SFT, RM pairs and loop prompts never share a line."""
    index = ROLES.index(role)
    return [pair for i, pair in enumerate(_lines(seed)) if i % len(ROLES) == index]


def sft_records(n: int, seed: int, min_gold: float = 0.5) -> list[dict[str, str]]:
    """Supervised {"prompt","response"} records on gold-good continuations, so sampling starts sensible."""
    good = [{"prompt": p, "response": r} for p, r in _role("sft", seed) if gold_reward(r) >= min_gold]
    return good[:n]


def preference_records(n: int, seed: int, min_gap: float = 0.1) -> list[dict[str, str]]:
    """Gold-labelled {"prompt","chosen","rejected"} pairs: the stand-in for human labels of the initial RM.

    The second candidate for a prompt is another line's continuation or, one time in four, a truncation of the
    line's own continuation below MIN_WORDS (so short answers are seen losing). Pairs closer than `min_gap` in gold
    reward are skipped: they carry no clear preference.
    """
    rng = random.Random(seed + 1)
    lines = _role("reward", seed)
    records = []
    for prompt, response in lines:
        if rng.random() < 0.25:
            other = " " + " ".join(response.split()[:rng.randint(1, MIN_WORDS - 1)])
        else:
            other = rng.choice(lines)[1]
        a, b = gold_reward(response), gold_reward(other)
        if abs(a - b) >= min_gap:
            chosen, rejected = (response, other) if a > b else (other, response)
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        if len(records) == n:
            break
    return records


def task_prompts(n: int, seed: int) -> list[str]:
    """Prompts for the Mutual-Taught loop and evaluation (disjoint from the SFT and RM lines)."""
    return [p for p, _ in _role("prompts", seed)][:n]


def heldout_prompts(n: int, seed: int) -> list[str]:
    """Evaluation prompts taken from the end of the loop prompts: disjoint from the first prompts the Mutual-Taught
    rounds take (`task_prompts`) as long as both together fit in the role's 1,800-odd lines."""
    return [r["prompt"] for r in heldout_records(n, seed)]


def heldout_records(n: int, seed: int) -> list[dict[str, str]]:
    """The held-out prompts with the documentation's own continuation of each line (to measure likelihood)."""
    return [{"prompt": p, "response": r} for p, r in _role("prompts", seed)[::-1][:n]]
