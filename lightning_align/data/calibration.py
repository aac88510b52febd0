"""Calibration and evaluation token blocks for training-free pruning.

With ``val_fraction`` given, only the held-out documents of the corpus are used, split exactly as ``LMDataModule``
splits them (same ``val_fraction`` and ``seed``), so a model trained by the pipeline is pruned and judged on text it
never trained on; without it (a calibration file of the user's) the whole source is used. The packed blocks are
shuffled with ``seed`` and cut into two disjoint sets: the search sees only the calibration set, reports use the
evaluation set.
"""
from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from lightning_align.data.corpus import load_texts, split_texts
from lightning_align.data.packing import pack_blocks
from lightning_align.errors import DataError


def calibration_sets(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    block_size: int,
    num_sequences: int,
    val_fraction: float | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(calibration, evaluation), each up to ``num_sequences`` blocks of ``block_size`` tokens, disjoint."""
    texts = load_texts(source)
    if val_fraction is not None:
        texts = split_texts(texts, val_fraction, seed)[1]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    try:
        blocks = pack_blocks(ids, block_size, tokenizer.eos_token_id)
    except ValueError as err:
        raise DataError(source, f"too little text for calibration: {err}") from None
    if blocks.size(0) < 2:
        raise DataError(source, f"needs at least 2 blocks of {block_size} tokens for calibration and evaluation")
    order = torch.randperm(blocks.size(0), generator=torch.Generator().manual_seed(seed))
    per_set = min(num_sequences, blocks.size(0) // 2)
    return blocks[order[:per_set]], blocks[order[per_set : 2 * per_set]]
