"""Calibration and evaluation token blocks for training-free pruning.

With ``val_fraction`` given, only the held-out documents of the corpus are used, split exactly as ``LMDataModule``
splits them (same ``val_fraction`` and ``seed``), so a model trained by the pipeline is pruned and judged on text it
never trained on; without it (a calibration file of the user's) the whole source is used. The packed blocks are
shuffled with ``seed`` and cut into two disjoint sets: the search sees only the calibration set, reports use the
evaluation set. A source too short for both requests is shared rather than refused, so the embedded corpus still
prunes at large block sizes: each set keeps what the other leaves, and at least half when both ask for more.

A ``.npy`` file of token ids (a 1-D integer array, one stream as ``numpy.save`` writes it) is cut into blocks as is,
with no tokenizer pass and no EOS added: it is how text another tokenizer pipeline prepared is reused exactly. It has no
documents to hold out, so it is always used whole.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from lightning_align.data.corpus import CORPUS_SUFFIXES, load_texts, split_texts
from lightning_align.data.packing import pack_blocks
from lightning_align.errors import DataError

TOKEN_IDS_SUFFIX = ".npy"
CALIBRATION_SUFFIXES = (*CORPUS_SUFFIXES, TOKEN_IDS_SUFFIX)


def is_token_ids(source: str) -> bool:
    """Token-id streams are told from text by their suffix alone, so planning can check them without reading."""
    return Path(source).suffix.lower() == TOKEN_IDS_SUFFIX


def calibration_sets(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    block_size: int,
    num_sequences: int,
    eval_sequences: int,
    val_fraction: float | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration, evaluation): up to ``num_sequences`` and ``eval_sequences`` blocks of ``block_size`` tokens,
    disjoint."""
    if is_token_ids(source):
        ids, eos = [read_token_ids(Path(source), len(tokenizer))], None
    else:
        texts = load_texts(source)
        if val_fraction is not None:
            texts = split_texts(texts, val_fraction, seed)[1]
        ids, eos = tokenizer(texts, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id
    try:
        blocks = pack_blocks(ids, block_size, eos)
    except ValueError as err:
        raise DataError(source, f"too little text for calibration: {err}") from None
    if blocks.size(0) < 2:
        raise DataError(source, f"needs at least 2 blocks of {block_size} tokens for calibration and evaluation")
    order = torch.randperm(blocks.size(0), generator=torch.Generator().manual_seed(seed))
    num_cal, num_eval = split_sizes(blocks.size(0), num_sequences, eval_sequences)
    return blocks[order[:num_cal]], blocks[order[num_cal : num_cal + num_eval]]


def read_token_ids(path: Path, vocab_size: int) -> list[int]:
    """The ids of a ``.npy`` stream, read without unpickling (a file from elsewhere must not run code), each checked
    against the tokenizer's ``vocab_size`` so a file made for another tokenizer fails here, not as an index error."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(path, f"not a .npy array of token ids: {err}") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(path, f"expected a 1-D integer array of token ids, got shape {array.shape} of {array.dtype}")
    outside = array[(array < 0) | (array >= vocab_size)]
    if outside.size:
        raise DataError(path, f"token id {int(outside[0])} is outside the tokenizer's vocabulary of {vocab_size}")
    return array.tolist()


def split_sizes(available: int, calibration: int, evaluation: int) -> tuple[int, int]:
    """How many of ``available`` blocks each set gets: what it asked for, capped at what the other leaves but never
    below half (equal requests on a short source split it evenly, rounding down, as before the sizes were separate)."""
    half = available // 2
    num_cal = min(calibration, max(available - evaluation, half))
    return num_cal, min(evaluation, max(available - calibration, half), available - num_cal)
