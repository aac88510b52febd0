"""Built-in "repeat the words" task: a second skill, checkable exactly, for comparing per-prompt pruning.

The gold task (`gold_task.py`) asks for prose; this one asks for copying over the same vocabulary: the prompt
`repeat: w1 w2 w3 =` has the answer ` w1 w2 w3`. The words are plain lowercase words of the embedded corpus drawn
at random, so the answer cannot be predicted from language statistics, only copied from the prompt (the skill of
induction heads). The two tasks differ in their instruction prefix, which is all the sparsity predictor needs to
tell them apart. (Reversing the words instead was not learned by any contender of the embedded model's size within
the comparison's step budget, which made the task useless for comparing them.)

Score: the share of answer positions holding the right word, over the longer of the expected and given answers
(so padding an answer with extra words costs as much as leaving words out); 1.0 only for the exact copy.
"""
from __future__ import annotations

import random
import re
from functools import lru_cache

from lightning_align.data.corpus import embedded_texts

PREFIX = "repeat:"
MIN_WORDS, MAX_WORDS = 3, 4
WORD = re.compile(r"[a-z]{3,8}")
VOCABULARY_SIZE = 400  # the most frequent plain words of the corpus


@lru_cache(maxsize=1)
def vocabulary() -> tuple[str, ...]:
    """The corpus's most frequent plain lowercase words, most frequent first (ties alphabetically)."""
    counts: dict[str, int] = {}
    for text in embedded_texts():
        for word in text.split():
            if WORD.fullmatch(word):
                counts[word] = counts.get(word, 0) + 1
    return tuple(sorted(counts, key=lambda w: (-counts[w], w))[:VOCABULARY_SIZE])


def _words(prompt: str) -> list[str]:
    return prompt.removeprefix(PREFIX).removesuffix("=").split()


def copy_score(prompt: str, response: str) -> float:
    """Share of positions with the right word, over the longer of expected and given answers."""
    expected, given = _words(prompt), response.split()
    hits = sum(a == b for a, b in zip(expected, given))
    return hits / max(len(expected), len(given))


def copy_records(n: int, seed: int, heldout: bool = False) -> list[dict[str, str]]:
    """n {"prompt","response"} records; training and held-out records come from disjoint word sequences."""
    rng = random.Random(seed)
    words = vocabulary()
    records, seen = [], set()
    while len(records) < n:
        sequence = tuple(rng.sample(words, rng.randint(MIN_WORDS, MAX_WORDS)))
        if sequence in seen:
            continue
        seen.add(sequence)
        if (_stable_hash(sequence) % 5 == 0) != heldout:  # one sequence in five is held out
            continue
        records.append({"prompt": f"{PREFIX} {' '.join(sequence)} =", "response": " " + " ".join(sequence)})
    return records


def _stable_hash(sequence: tuple[str, ...]) -> int:
    """A hash stable across processes (Python's str hash is salted per run)."""
    return sum((i + 1) * ord(c) for i, c in enumerate(" ".join(sequence)))
