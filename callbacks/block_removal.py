"""`IterativeBlockRemoval`: drop MHA/MLP blocks a few at a time while the prune stage trains, cut them at its end.

IDEA Prune (arXiv 2503.05920) removes parameters gradually so training can move capacity onto what stays;
this is that idea at block granularity. Each pick is one greedy step of BlockPruner (arXiv 2406.10594, Sec. 3.2):
among the blocks still present, skip the one whose removal gives the lowest perplexity on calibration batches (here
the most recent training batches), given the blocks already skipped. How many blocks are gone at a step follows the
same cubic schedule as width pruning. Skipped blocks are masked (`models.blocks.set_skipped`), so shapes and optimizer
state stay fixed; `on_train_end` removes them (`models.blocks.remove_blocks`), to be saved as `export` says
(`compact`, or `dense_compatible`: zeroed sublayers plain transformers loads exactly; see docs/pruning.md).

Under DDP each rank calibrates on its own shard of the batches: the candidates' NLL sums are pooled over all ranks
(`pooled_perplexities`), so every rank removes the same block, scored on every rank's batches. A skipped block's
parameters get no gradient, so plain `ddp` is refused at planning in favour of `ddp_find_unused_parameters_true`.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import Strategy
from torch import nn

from lightning_align.algorithms.block_pruner import BlockRunner
from lightning_align.algorithms.width_pruner import cubic_width
from lightning_align.errors import ConfigError
from lightning_align.models.blocks import Block, Export, all_blocks, remove_blocks, set_skipped, skipped_blocks


def pooled_perplexities(perplexities: list[float], sequences: int, strategy: Strategy) -> list[float]:
    """Each candidate's perplexity over the calibration sequences of every rank.

    Every rank's NLL sums (log perplexity x its sequence count) and counts are gathered and summed in rank order, so
    all ranks compute the same floats from the same numbers and pick the same block.
    """
    local = torch.tensor([math.log(ppl) * sequences for ppl in perplexities] + [sequences], dtype=torch.float64)
    totals = strategy.all_gather(local).reshape(-1, local.numel()).sum(0).tolist()
    return [math.exp(total / totals[-1]) for total in totals[:-1]]


def next_block(model: nn.Module, calibration: torch.Tensor, skipped: set[Block], batch_size: int = 8,
               strategy: Optional[Strategy] = None) -> Block:
    """The block BlockPruner's greedy search removes next, given `skipped` are already gone (ties: earliest).

    With the `strategy` of a multi-process run, each rank scores its own `calibration` and the scores are pooled.
    """
    candidates = [(block,) for block in all_blocks(model) if block not in skipped]
    scores = BlockRunner(model, calibration, batch_size).score_candidates(skipped, candidates, reuse_prefix=True)
    if strategy is not None:
        scores = pooled_perplexities(scores, calibration.size(0), strategy)
    return candidates[min(range(len(candidates)), key=lambda i: (scores[i], i))][0]


class IterativeBlockRemoval(pl.Callback):
    """Skip blocks on a cubic schedule between `start_step` and `end_step` until `num_blocks` are gone."""

    def __init__(self, num_blocks: int, start_step: int, end_step: int, every_n_steps: int = 10,
                 calibration_batches: int = 2, export: Export = "compact") -> None:
        if num_blocks <= 0:
            raise ConfigError("num_blocks", f"must be positive, got {num_blocks}")
        if not 0 <= start_step < end_step:
            raise ConfigError("end_step",
                              f"the window needs 0 <= start_step < end_step, got [{start_step}, {end_step})")
        if every_n_steps <= 0 or calibration_batches <= 0:
            raise ConfigError("every_n_steps",
                              "every_n_steps and calibration_batches must be positive")
        self.num_blocks, self.start_step, self.end_step = num_blocks, start_step, end_step
        self.every_n_steps, self.export = every_n_steps, export
        self.calibration: deque[torch.Tensor] = deque(maxlen=calibration_batches)
        self.total_blocks = 0
        self.order: list[Block] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.total_blocks = len(all_blocks(pl_module.model))
        if self.num_blocks >= self.total_blocks:
            raise ConfigError("callbacks.IterativeBlockRemoval.num_blocks",
                              f"must be below the model's {self.total_blocks} blocks, got {self.num_blocks}")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Mask what was already picked (a resumed checkpoint restores `order` after `setup`)."""
        set_skipped(pl_module.model, self.order)

    def removed_at(self, step: int) -> int:
        """How many blocks are gone after `step`: the cubic schedule over the count of kept blocks."""
        kept = cubic_width(step, self.start_step, self.end_step, self.total_blocks, self.total_blocks - self.num_blocks)
        return self.total_blocks - kept

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.calibration.append(batch.detach())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0 or step >= self.end_step:
            self._remove_until(trainer, pl_module.model, self.removed_at(step))
        pl_module.log("prune/blocks_removed", float(len(self.order)), on_step=True, on_epoch=False)

    def _remove_until(self, trainer: pl.Trainer, model: nn.Module, count: int) -> None:
        while len(self.order) < count:
            calibration = torch.cat(list(self.calibration))
            strategy = trainer.strategy if trainer.world_size > 1 else None
            self.order.append(next_block(model, calibration, set(self.order), strategy=strategy))
            set_skipped(model, self.order)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reach `num_blocks` even if the stage stopped inside the window, then cut the skipped blocks out."""
        self._remove_until(trainer, pl_module.model, self.num_blocks)
        skipped = skipped_blocks(pl_module.model)
        set_skipped(pl_module.model, [])
        remove_blocks(pl_module.model, skipped, self.export)

    def state_dict(self) -> dict[str, Any]:
        return {"order": [block.to_json() for block in self.order]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.order = [Block.from_json(record) for record in state_dict["order"]]
