"""Text corpora: the English help text that ships with Python, a user's .txt file, or a data file with `text`."""
from __future__ import annotations

import random
from pathlib import Path

from lightning_align.data.records import SUFFIXES, read_texts
from lightning_align.data.text_file import read_utf8
from lightning_align.errors import DataError

EMBEDDED = "embedded"
CORPUS_SUFFIXES = (".txt", *SUFFIXES)


def embedded_texts() -> list[str]:
    """Python's `pydoc_data.topics` (~465k characters of English) in a stable order.

    Some topics are aliases with identical text; duplicates are dropped so train and val never share a document.
    """
    from pydoc_data.topics import topics

    return list(dict.fromkeys(topics[name] for name in sorted(topics)))


def load_texts(source: str) -> list[str]:
    """Documents of a corpus: "embedded", a .txt file (blank-line separated paragraphs) or a data file (.jsonl,
    .json, .parquet, .csv, save_to_disk directory) with a `text` column."""
    if source == EMBEDDED:
        return embedded_texts()
    path = Path(source)
    if path.suffix.lower() != ".txt":
        return read_texts(path)
    if not path.is_file():
        raise DataError(path, "corpus file not found")
    texts = [chunk.strip() for chunk in read_utf8(path).split("\n\n") if chunk.strip()]
    if not texts:
        raise DataError(path, "corpus is empty")
    return texts


def split_texts(texts: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split whole documents (no leakage across the split), shuffled by `seed`; both sides get at least one."""
    if len(texts) < 2:
        return texts, texts
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_val = min(len(texts) - 1, max(1, round(len(texts) * val_fraction)))
    val = [texts[i] for i in sorted(order[:n_val])]
    train = [texts[i] for i in sorted(order[n_val:])]
    return train, val
