"""Packed next-token data for causal-LM stages, tokenized with the stage model's own tokenizer."""
from __future__ import annotations

from typing import Any

import torch
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt
from torch.utils.data import DataLoader

from lightning_align.data.corpus import CORPUS_SUFFIXES, EMBEDDED, load_texts, split_texts
from lightning_align.data.loaders import check_source
from lightning_align.data.packing import pack_blocks
from lightning_align.data.resumable import ResumableDataModule
from lightning_align.errors import ConfigError


class LMDataModule(ResumableDataModule):
    """Train/val blocks from a corpus ("embedded", .txt or a data file with `text`), split by document, then packed.

    The tokenizer is taken from the LightningModule in `setup`, so data and model can never disagree on it.
    Construction only checks arguments, so a pipeline can validate every stage before running any.
    """

    def __init__(self, corpus: str = EMBEDDED, block_size: PositiveInt = 128, batch_size: PositiveInt = 16,
                 val_fraction: OpenUnitInterval = 0.1, seed: int = 0, num_workers: NonNegativeInt = 0) -> None:
        super().__init__()
        check_source(corpus, EMBEDDED, "data.init_args.corpus", CORPUS_SUFFIXES)
        self.corpus, self.block_size, self.batch_size = corpus, block_size, batch_size
        self.val_fraction, self.seed, self.num_workers = val_fraction, seed, num_workers
        self.train_blocks: torch.Tensor | None = None
        self.val_blocks: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        if self.train_blocks is not None:
            return
        tokenizer = self.trainer.lightning_module.tokenizer
        train, val = split_texts(load_texts(self.corpus), self.val_fraction, self.seed)
        self.train_blocks, self.val_blocks = (self._blocks(tokenizer, texts, split)
                                              for texts, split in ((train, "train"), (val, "validation")))
        if stage == "fit" and len(self.train_blocks) < self.batch_size:
            raise ConfigError("data.init_args.batch_size", f"the train split of corpus '{self.corpus}' packs "
                              f"{len(self.train_blocks)} blocks of {self.block_size} tokens, fewer than one batch of "
                              f"{self.batch_size} (a partial batch is dropped); lower batch_size or block_size")

    def _blocks(self, tokenizer: Any, texts: list[str], split: str) -> torch.Tensor:
        """Packed blocks of one split; a split that fills no block is refused naming the sizes, since training or
        validating on nothing would pass silently."""
        try:
            return pack_blocks(tokenizer(texts, add_special_tokens=False)["input_ids"], self.block_size,
                               tokenizer.eos_token_id)
        except ValueError as err:
            raise ConfigError("data.init_args.block_size", f"the {split} split of corpus '{self.corpus}' is too "
                              f"small: {err} (val_fraction={self.val_fraction}); lower block_size or give a bigger "
                              "corpus") from None

    def train_dataloader(self) -> DataLoader:
        return self.position.new_loader(self.train_blocks, self.batch_size, self.seed, drop_last=True,
                                        num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_blocks, batch_size=self.batch_size, num_workers=self.num_workers)
