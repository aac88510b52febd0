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

Variants (`gold_task`, a data argument of the reward and Mutual-Taught stages, `data.gold_task` for a whole run):
- `plain`: the gold reward above.
- `blind_spot`: the same, but a *repetitive* response (one word, case and trailing punctuation aside, more than
  `MAX_REPEATS` times) is worth 0, as degenerate text would be to a reader. The RM pairs are labelled by this reward,
  so r_0 is taught it, but its pairs are continuations of documentation lines where repetition is rare (about 1
  candidate in 70), so r_0 in practice learns "plain lowercase words" and prefers a response that repeats such words
  over one that does not: a blind spot that a policy pushed towards plain words can drift into, as in the
  Mutual-Taught paper's motivation. `docs/mutual_taught.md` says why this is a fair test.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from functools import lru_cache
from typing import Callable

from lightning_align.data.corpus import embedded_texts
from lightning_align.errors import ConfigError

MIN_WORDS = 4
PROMPT_WORDS = 3
MAX_RESPONSE_WORDS = 12
PLAIN_WORD = re.compile(r"[a-z]+[,.;:]?")
ROLES = ("sft", "reward", "prompts")
MAX_REPEATS = 2  # blind_spot: a word more often than this makes a response repetitive
GOLD_TASKS = ("plain", "blind_spot")


def gold_reward(response: str) -> float:
    """Share of plain lowercase words in the response; 0 below MIN_WORDS words."""
    words = response.split()
    if len(words) < MIN_WORDS:
        return 0.0
    return sum(PLAIN_WORD.fullmatch(w) is not None for w in words) / len(words)


def repetitive(response: str) -> bool:
    """Some word (lowercased, trailing ",.;:" dropped) occurs more than MAX_REPEATS times."""
    counts = Counter(word.lower().rstrip(",.;:") for word in response.split())
    return bool(counts) and max(counts.values()) > MAX_REPEATS


def blind_spot_reward(response: str) -> float:
    """The `blind_spot` variant's gold reward: 0 for a repetitive response, else the plain gold reward."""
    return 0.0 if repetitive(response) else gold_reward(response)


def task_gold_reward(task: str) -> Callable[[str], float]:
    """The gold reward of a variant (`GOLD_TASKS`)."""
    return blind_spot_reward if task == "blind_spot" else gold_reward


def check_gold_task(task: str, source: str, builtin: str) -> None:
    """A variant must be known, and only the built-in task has one (a data file's labels are its own)."""
    if task not in GOLD_TASKS:
        raise ConfigError("data.init_args.gold_task", f"'{task}' is not one of {', '.join(GOLD_TASKS)}")
    if task != "plain" and source != builtin:
        raise ConfigError("data.init_args.gold_task", f"'{task}' applies to the built-in task only "
                          f"(\"{builtin}\"), not to '{source}'")


def gold_win_rate(new_responses: list[str], old_responses: list[str],
                  reward: Callable[[str], float] = gold_reward) -> float:
    """Fraction of prompts where the new response has the higher gold reward; ties count one half."""
    wins = 0.0
    for new, old in zip(new_responses, old_responses, strict=True):
        a, b = reward(new), reward(old)
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


def preference_records(n: int, seed: int, min_gap: float = 0.1, task: str = "plain") -> list[dict[str, str]]:
    """Gold-labelled {"prompt","chosen","rejected"} pairs: the stand-in for human labels of the initial RM, labelled
    by the gold reward of the variant `task` (the candidates are the same for every variant).

    The second candidate for a prompt is another line's continuation or, one time in four, a truncation of the
    line's own continuation below MIN_WORDS (so short answers are seen losing). Pairs closer than `min_gap` in gold
    reward are skipped: they carry no clear preference.
    """
    rng, reward = random.Random(seed + 1), task_gold_reward(task)
    lines = _role("reward", seed)
    records = []
    for prompt, response in lines:
        if rng.random() < 0.25:
            other = " " + " ".join(response.split()[:rng.randint(1, MIN_WORDS - 1)])
        else:
            other = rng.choice(lines)[1]
        a, b = reward(response), reward(other)
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
