"""Preference pairs {"prompt","chosen","rejected"}: tokenization, batching and the datamodule of RM and DPO stages.

A batch holds chosen rows first and rejected rows second ([2B, T], right-padded), so a model scores both in one
forward. Records may carry extra float fields (e.g. reference log-probs a policy computed once); they are batched
as [B] tensors under the same name.
"""
from __future__ import annotations

import random
from typing import Any, Callable

import lightning as L
import torch
from jsonargparse.typing import OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from transformers import PreTrainedTokenizerBase

from lightning_align.data.gold_task import preference_records
from lightning_align.data.loaders import check_source, seeded_loader
from lightning_align.data.records import read_pairs

GOLD = "gold"


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Padding id: the tokenizer's pad token, else EOS (positions under the mask never matter)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """Prompt ids exactly as both generation and training see them (special tokens as the tokenizer adds them)."""
    return tokenizer(prompt)["input_ids"]


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str) -> list[int]:
    """Response ids followed by EOS, so training teaches the model where to stop (and the RM reads the EOS state)."""
    return tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str], max_length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded prompt+response batch: (input_ids, attention_mask, response_mask), each [B, T].

    response_mask marks the response tokens (incl. EOS) whose log-probs count; the prompt is masked out.
    Sequences over max_length lose prompt tokens from the left first, then response tokens from the right.
    """
    rows, starts = [], []
    for prompt, response in zip(prompts, responses, strict=True):
        p, r = encode_prompt(tokenizer, prompt), encode_response(tokenizer, response)
        r = r[:max_length - 1]
        p = p[max(0, len(p) + len(r) - max_length):]
        rows.append(p + r)
        starts.append(len(p))
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros_like(ids)
    response_mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        response_mask[i, start:len(row)] = True
    return ids, mask, response_mask


def collate_pairs(tokenizer: PreTrainedTokenizerBase, records: list[dict[str, Any]],
                  max_length: int) -> dict[str, Tensor]:
    """Batch of B pairs: input_ids/attention_mask/response_mask of shape [2B, T] plus any float fields as [B]."""
    prompts = [r["prompt"] for r in records]
    ids, mask, response_mask = encode_pairs(tokenizer, prompts + prompts, [r["chosen"] for r in records]
                                            + [r["rejected"] for r in records], max_length)
    batch = {"input_ids": ids, "attention_mask": mask, "response_mask": response_mask}
    for key, value in records[0].items():
        if isinstance(value, float):
            batch[key] = torch.tensor([r[key] for r in records], dtype=torch.float32)
    return batch


def load_pairs(path: str, num_pairs: int, seed: int) -> list[dict[str, Any]]:
    """Pairs from the built-in gold task or a data file in a TRL preference format (see `data/records.py`)."""
    if path == GOLD:
        return preference_records(num_pairs, seed)
    return read_pairs(path)


def split_records(records: list[dict[str, Any]], val_fraction: float,
                seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, val) after a seeded shuffle; with one record both sides get it. Evaluation re-derives the RM
    stage's held-out pairs with the same arguments."""
    records = list(records)
    random.Random(seed).shuffle(records)
    n_val = max(1, round(len(records) * val_fraction)) if len(records) > 1 else 0
    return records[n_val:] or records, records[:n_val] or records


class PairSlots(Dataset):
    """A fixed number of slots over a replaceable list of records (slot i holds record i mod len).

    Mutual-Taught builds each round's pairs after Lightning has already built that epoch's dataloader; a fixed
    length keeps the epoch's batch count valid while the records behind the slots change at round start.
    """

    def __init__(self, records: list[dict[str, Any]], slots: int | None = None) -> None:
        self.records = records
        self.slots = slots if slots is not None else len(records)

    def __len__(self) -> int:
        return self.slots

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.records[index % len(self.records)]


class PreferenceDataModule(L.LightningDataModule):
    """Train/val pairs for the reward and DPO stages: `path` is a data file (`data/records.py`) or "gold".

    The tokenizer is the LightningModule's; if the module has `annotate(records)` (DPO: reference log-probs, computed
    once without grad), it runs on every record at setup.
    """

    def __init__(self, path: str = GOLD, num_pairs: PositiveInt = 512, val_fraction: OpenUnitInterval = 0.1,
                 batch_size: PositiveInt = 16, max_length: PositiveInt = 64, seed: int = 0) -> None:
        super().__init__()
        check_source(path, GOLD)
        self.path, self.num_pairs, self.val_fraction = path, num_pairs, val_fraction
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.train_set: PairSlots | None = None
        self.val_set: PairSlots | None = None

    def setup(self, stage: str) -> None:
        if self.train_set is not None:
            return
        train, val = split_records(load_pairs(self.path, self.num_pairs, self.seed), self.val_fraction, self.seed)
        annotate: Callable[[list[dict]], None] | None = getattr(self.trainer.lightning_module, "annotate", None)
        if annotate is not None:
            annotate(train)
            annotate(val)
        self.train_set, self.val_set = PairSlots(train), PairSlots(val)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        tokenizer = self.trainer.lightning_module.tokenizer
        return seeded_loader(dataset, self.batch_size, shuffle, self.seed,
                             lambda records: collate_pairs(tokenizer, records, self.max_length))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
