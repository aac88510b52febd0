"""Shuffled training batches that resume at the batch a checkpoint was taken after.

Lightning restores the fit loop's batch index from a checkpoint but restarts a plain DataLoader from its first batch,
so a stage resumed mid-epoch would train again on batches it has seen and never on the rest. Here an epoch's order
depends on (seed, epoch) alone: recomputed from the seed, it is the order a `DataLoader(shuffle=True)` on a generator
seeded with `seed` gives in epoch e when, as under Lightning, each epoch stops at its last batch. The loader's
position (epoch, batches served) travels in the datamodule's `state_dict`, which Lightning saves in every
checkpoint. The datamodule carries it because Lightning may build the training loader (to count steps) before it
restores any state, and then never restores that loader's own.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sized

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler


class EpochOrder(DistributedSampler):
    """This rank's shuffled indices of one epoch, from `start` on (`begin` sets both before each pass).

    Every rank draws the same permutation and takes every `num_replicas`-th index from its rank on, padded by
    repetition to a multiple of the world size as `DistributedSampler` pads; being a `DistributedSampler`, Lightning
    keeps it under DDP instead of trying to rebuild the loader around its own. One process: the whole permutation.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(range(size), num_replicas=world_size, rank=rank, shuffle=False)
        self.size, self.seed = size, seed
        self.epoch, self.start = 0, 0

    def begin(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch + 1):  # per epoch a DataLoader draws its workers' base seed, then the permutation
            torch.empty((), dtype=torch.int64).random_(generator=generator)
            order = torch.randperm(self.size, generator=generator).tolist()
        if self.num_replicas > 1:
            order = (order + order[:self.total_size - self.size])[self.rank:self.total_size:self.num_replicas]
        yield from order[self.start:]


class ResumableLoader(DataLoader):
    """A shuffled loader whose position (`state_dict()`: epoch, batches served in it) resumes it exactly.

    Skipping happens in the sampler, so the batches already trained on are neither read nor collated again. A sized
    loader is not prefetched by Lightning, so the batches served when a checkpoint is taken are those trained on.
    """

    def __init__(self, dataset: Sized, batch_size: int, seed: int, epoch: Callable[[], int],
                 collate_fn: Callable[[list], Any] | None = None, drop_last: bool = False, num_workers: int = 0,
                 resume: Optional[dict[str, int]] = None, rank: int = 0, world_size: int = 1) -> None:
        self.order = EpochOrder(len(dataset), seed, rank, world_size)
        # its own generator for the workers' base seed, so iterating draws nothing from the global RNG
        super().__init__(dataset, batch_size=batch_size, sampler=self.order, collate_fn=collate_fn,
                         drop_last=drop_last, num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        self.epoch, self.resume = epoch, resume
        self.current, self.served = -1, 0

    def state_dict(self) -> dict[str, int]:
        """Its position. With `load_state_dict`, Lightning also counts it a resumable loader (and says so)."""
        return {"epoch": self.current, "served": self.served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.resume = dict(state_dict)

    def __iter__(self) -> Iterator[Any]:
        self.current, resume, self.resume = self.epoch(), self.resume, None
        self.served = resume["served"] if resume is not None and resume["epoch"] == self.current else 0
        self.order.begin(self.current, self.served * self.batch_size)
        for batch in super().__iter__():
            self.served += 1
            yield batch


class TrainPosition:
    """A datamodule's training loader and where it stands; the datamodule's `state_dict` / `load_state_dict`
    delegate here (a datamodule's state is what Lightning saves in, and restores from, a checkpoint)."""

    def __init__(self, datamodule: L.LightningDataModule) -> None:
        self.datamodule = datamodule
        self.loader: ResumableLoader | None = None
        self.resume: dict[str, int] | None = None

    def new_loader(self, dataset: Sized, batch_size: int, seed: int,
                   collate_fn: Callable[[list], Any] | None = None, drop_last: bool = False,
                   num_workers: int = 0) -> ResumableLoader:
        """The training loader, resumed at the restored position if a checkpoint was restored before it is built."""
        trainer = self.datamodule.trainer
        share = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self.loader = ResumableLoader(dataset, batch_size, seed, lambda: self.datamodule.trainer.current_epoch,
                                      collate_fn, drop_last, num_workers, self.resume, *share)
        return self.loader

    def state_dict(self) -> dict[str, Any]:
        return {} if self.loader is None else self.loader.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resume = dict(state_dict) or None
        if self.loader is not None:
            self.loader.resume = self.resume


class ResumableDataModule(L.LightningDataModule):
    """A datamodule whose training loader resumes mid-epoch: its state is its `TrainPosition`, which Lightning saves
    in, and restores from, a checkpoint. Subclasses build their training loader with `self.position.new_loader`."""

    def __init__(self) -> None:
        super().__init__()
        self.position = TrainPosition(self)

    def state_dict(self) -> dict[str, Any]:
        return self.position.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.position.load_state_dict(state_dict)
