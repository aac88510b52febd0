"""Instruction records mixed with plain-text blocks, each example split into the part a sparsity predictor reads
(the prompt) and the part the loss counts: the data of the IFPruning stage and of the baselines it is compared with.

IFPruning trains predictor and LLM on instruction data *and* pre-training text (Hou et al. 2025, §3). An instruction
example's prompt is its prompt; a text block's prompt is its first `prompt_tokens` tokens. The loss counts only the
tokens after the prompt, so a mask chosen from the prompt can never carry the tokens it is scored on.

A batch is a dict of right-padded [B, T] tensors: `input_ids`, `attention_mask`, `response_mask` (the positions the
loss counts, as the SFT module reads it) and `prompt_mask` (the positions the predictor reads, a prefix of each row).
"""
from __future__ import annotations

import random
from typing import Any

import torch
from jsonargparse.typing import OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_align.data.corpus import CORPUS_SUFFIXES, EMBEDDED, load_texts, split_texts
from lightning_align.data.gold_task import sft_records
from lightning_align.data.loaders import check_source
from lightning_align.data.packing import pack_blocks
from lightning_align.data.preference import encode_pairs, pad_id, split_records
from lightning_align.data.records import read_sft
from lightning_align.data.resumable import ResumableDataModule
from lightning_align.data.copy_task import copy_records
from lightning_align.errors import ConfigError

BUILTIN = "builtin"
Example = tuple[list[int], int]  # token ids, prompt length


def builtin_instructions(n: int, seed: int) -> list[dict[str, str]]:
    """Half prose continuations (the gold task's SFT records), half word copying: two skills, two prompt kinds."""
    return sft_records(n - n // 2, seed) + copy_records(n // 2, seed)


def encode_instructions(tokenizer: Any, records: list[dict[str, Any]], max_length: int) -> list[Example]:
    ids, mask, response = encode_pairs(tokenizer, [r["prompt"] for r in records], [r["response"] for r in records],
                                       max_length)
    lengths, starts = mask.sum(1).tolist(), response.int().argmax(1).tolist()
    return [(row[:length], start) for row, length, start in zip(ids.tolist(), lengths, starts)]


def mix(instructions: list[Example], blocks: list[Example], ratio: float, seed: int) -> list[Example]:
    """All instruction examples plus enough text blocks (cycled) that instructions make `ratio` of the whole."""
    count = round(len(instructions) * (1 - ratio) / ratio) if blocks else 0
    order = list(range(len(blocks)))
    random.Random(seed).shuffle(order)
    return instructions + [blocks[order[i % len(order)]] for i in range(count)]


def collate_examples(examples: list[Example], pad: int) -> dict[str, Tensor]:
    width = max(len(ids) for ids, _ in examples)
    batch = {"input_ids": torch.full((len(examples), width), pad, dtype=torch.long)}
    for key in ("attention_mask", "response_mask", "prompt_mask"):
        batch[key] = torch.zeros(len(examples), width, dtype=torch.long if key == "attention_mask" else torch.bool)
    for i, (ids, prompt) in enumerate(examples):
        batch["input_ids"][i, :len(ids)] = torch.tensor(ids)
        batch["attention_mask"][i, :len(ids)] = 1
        batch["response_mask"][i, prompt:len(ids)] = True
        batch["prompt_mask"][i, :prompt] = True
    return batch


class InstructionTextMixDataModule(ResumableDataModule):
    """`instructions`: "builtin" (prose continuation + word copying) or a data file in a TRL SFT format;
    `instruction_ratio`: the share of instruction examples in the mix (1.0: no plain text); plain text comes from
    `corpus` in blocks of `block_size` tokens whose first `prompt_tokens` tokens are the predictor's prompt."""

    def __init__(self, instructions: str = BUILTIN, instruction_ratio: float = 0.5,
                 corpus: str = EMBEDDED, num_records: PositiveInt = 1024, max_length: PositiveInt = 48,
                 block_size: PositiveInt = 64, prompt_tokens: PositiveInt = 16, batch_size: PositiveInt = 16,
                 val_fraction: OpenUnitInterval = 0.1, seed: int = 0) -> None:
        super().__init__()
        check_source(instructions, BUILTIN, "data.init_args.instructions")
        check_source(corpus, EMBEDDED, "data.init_args.corpus", CORPUS_SUFFIXES)
        if not 0 < instruction_ratio <= 1:
            raise ConfigError("data.init_args.instruction_ratio", f"must be in (0, 1], got {instruction_ratio}")
        if prompt_tokens >= block_size:
            raise ConfigError("data.init_args.prompt_tokens", f"must be below block_size={block_size} (the rest of "
                              f"a block is what the loss counts), got {prompt_tokens}")
        self.instructions, self.instruction_ratio, self.corpus = instructions, instruction_ratio, corpus
        self.num_records, self.max_length, self.block_size = num_records, max_length, block_size
        self.prompt_tokens, self.batch_size, self.val_fraction, self.seed = prompt_tokens, batch_size, val_fraction, seed
        self.train_set: list[Example] | None = None
        self.val_set: list[Example] = []

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        tokenizer = self.trainer.lightning_module.tokenizer
        records = (builtin_instructions(self.num_records, self.seed) if self.instructions == BUILTIN
                   else read_sft(self.instructions)[:self.num_records])
        train_records, val_records = split_records(records, self.val_fraction, self.seed)
        train_texts, val_texts = split_texts(load_texts(self.corpus), self.val_fraction, self.seed)
        sets = []
        for recs, texts in ((train_records, train_texts), (val_records, val_texts)):
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if self.instruction_ratio < 1 else []
            blocks = [(row, self.prompt_tokens)
                      for row in pack_blocks(ids, self.block_size, tokenizer.eos_token_id).tolist()] if ids else []
            sets.append(mix(encode_instructions(tokenizer, recs, self.max_length), blocks, self.instruction_ratio,
                            self.seed))
        self.train_set, self.val_set = sets

    def _collate(self, batch: list[Example]) -> Any:
        return collate_examples(batch, pad_id(self.trainer.lightning_module.tokenizer))

    def train_dataloader(self) -> DataLoader:
        return self.position.new_loader(self.train_set, self.batch_size, self.seed, self._collate, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, collate_fn=self._collate)
