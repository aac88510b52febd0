"""Supervised {"prompt","response"} records for the `sft` stage: the loss counts response tokens only."""
from __future__ import annotations

from typing import Any

from jsonargparse.typing import OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_align.data.gold_task import sft_records
from lightning_align.data.loaders import check_source
from lightning_align.data.preference import GOLD, encode_pairs, split_records
from lightning_align.data.records import read_sft
from lightning_align.data.resumable import ResumableDataModule


def collate_sft(tokenizer: Any, records: list[dict[str, str]], max_length: int) -> dict[str, Tensor]:
    ids, mask, response_mask = encode_pairs(tokenizer, [r["prompt"] for r in records],
                                            [r["response"] for r in records], max_length)
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response_mask}


class SFTDataModule(ResumableDataModule):
    """`path`: "gold" or a data file in a TRL SFT format: prompt-completion, messages or text (`data/records.py`)."""

    def __init__(self, path: str = GOLD, num_records: PositiveInt = 1024, val_fraction: OpenUnitInterval = 0.1,
                 batch_size: PositiveInt = 16, max_length: PositiveInt = 64, seed: int = 0) -> None:
        super().__init__()
        check_source(path, GOLD)
        self.path, self.num_records, self.val_fraction = path, num_records, val_fraction
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.train_records: list[dict[str, Any]] | None = None
        self.val_records: list[dict[str, Any]] = []

    def setup(self, stage: str) -> None:
        if self.train_records is None:
            records = (sft_records(self.num_records, self.seed) if self.path == GOLD
                       else read_sft(self.path))
            self.train_records, self.val_records = split_records(records, self.val_fraction, self.seed)

    def _collate(self, batch: list[dict[str, str]]) -> dict[str, Tensor]:
        return collate_sft(self.trainer.lightning_module.tokenizer, batch, self.max_length)

    def train_dataloader(self) -> DataLoader:
        return self.position.new_loader(self.train_records, self.batch_size, self.seed, self._collate)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_records, batch_size=self.batch_size, collate_fn=self._collate)
