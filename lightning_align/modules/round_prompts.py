"""Prompts of the Mutual-Taught stage, split once, and the slots each round's E-step pairs are trained from."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torch.utils.data import DataLoader, DistributedSampler

from lightning_align.algorithms.mutual_taught import PromptSplits, split_prompts
from lightning_align.data.gold_task import check_gold_task, task_prompts
from lightning_align.data.loaders import check_source
from lightning_align.data.preference import GOLD, PairSlots, collate_pairs
from lightning_align.data.records import read_prompts
from lightning_align.errors import ConfigError, DataError


class RoundPromptsDataModule(L.LightningDataModule):
    """`prompts`: a data file with a `prompt` or `messages` column (`data/records.py`) or "gold" (the built-in
    task, which also enables gold metrics and the oracle ranker, scored by the gold reward of the variant
    `gold_task`, `data/gold_task.py`; the prompts are the same for every variant).

    The number of rounds is `trainer.max_epochs` (one epoch per round), so the splits are cut in `setup`: one policy
    split of `policy_prompts` per round, `reward_prompts` for the M-step, `selection_prompts` held out for
    checkpoint selection (§5.1). An epoch has `policy_prompts` pair slots; `MutualTaughtRounds` fills them with
    the round's pairs before the first batch (prompts without a preference leave their slot to a repeated pair).
    Pairs are truncated to the policy's `max_length`, the length its reference log-probs were computed at.
    The batch order is drawn from one generator seeded by `seed`; the loader resumes at any batch (`RoundLoader`).
    Under DDP every rank draws the same order and trains on its own share of it (`RankShare`).
    """

    def __init__(self, prompts: str = GOLD, policy_prompts: PositiveInt = 64, reward_prompts: PositiveInt = 64,
                 selection_prompts: PositiveInt = 48, batch_size: PositiveInt = 8, seed: int = 0,
                 gold_task: str = "plain") -> None:
        super().__init__()
        check_source(prompts, GOLD, "data.init_args.prompts")
        check_gold_task(gold_task, prompts, GOLD)
        self.gold_task = gold_task
        self.prompts, self.policy_prompts, self.reward_prompts = prompts, policy_prompts, reward_prompts
        self.selection_prompts, self.batch_size, self.seed = selection_prompts, batch_size, seed
        self.splits: PromptSplits | None = None
        self.train_set = PairSlots([], slots=policy_prompts)
        self.loader: Optional[RoundLoader] = None
        self._resume: Optional[dict[str, Any]] = None

    def setup(self, stage: str) -> None:
        if self.splits is not None:
            return
        rounds = self.trainer.max_epochs
        if rounds is None or rounds < 1:
            raise ConfigError("trainer.max_epochs", "set it to the number of Mutual-Taught rounds (>= 1)")
        needed = rounds * self.policy_prompts + self.reward_prompts + self.selection_prompts
        prompts = (task_prompts(needed, self.seed) if self.prompts == GOLD
                   else [r["prompt"] for r in read_prompts(self.prompts)])
        try:
            self.splits = split_prompts(prompts, rounds, self.policy_prompts, self.reward_prompts,
                                        self.selection_prompts, self.seed)
        except ValueError as err:
            raise DataError(self.prompts, str(err)) from None

    def set_round_pairs(self, records: list[dict[str, Any]]) -> None:
        """Replace the pairs behind this epoch's slots (called at round start, after the loader exists)."""
        if not records:
            raise DataError(self.prompts, "every sampled response was ranked equally (by the reward model or gold "
                            "reward): no E-step pairs")
        self.train_set.records = records

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        self.loader = RoundLoader(self.train_set, self.batch_size, self.seed, lambda: self.trainer.current_epoch,
                                  lambda records: collate_pairs(module.tokenizer, records, module.max_length),
                                  self._resume, (self.trainer.global_rank, self.trainer.world_size))
        return self.loader

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: saved with every Lightning checkpoint, so a resumed run draws and skips as needed."""
        return {} if self.loader is None else self.loader.position()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict) or None


class RoundLoader(DataLoader):
    """Shuffled batches of the round's pairs from one seeded generator across rounds, resumable at any batch.

    `position()` is the round being iterated, the batches served in it, and the generator's state before that
    round's draws and now. Given back as `resume` (from a checkpoint), the iteration of the same round restarts from
    the state before and skips the batches already trained on; a later round continues from the saved state. A
    sized loader is neither prefetched nor run past its last batch by Lightning, so the batches served when a
    checkpoint is taken are those trained on, and nothing is drawn after them. (The datamodule, not the loader,
    carries this state: Lightning builds the loader to count steps before it restores a loader's own state, and
    then never does.)

    `rank` is (global rank, world size): with several processes each iterates its `RankShare` of the order.
    """

    def __init__(self, dataset: PairSlots, batch_size: int, seed: int, round_index: Callable[[], int],
                 collate_fn: Callable[[list[dict[str, Any]]], dict[str, Any]],
                 resume: Optional[dict[str, Any]] = None, rank: tuple[int, int] = (0, 1)) -> None:
        generator = torch.Generator().manual_seed(seed)
        share = RankShare(dataset, generator, *rank) if rank[1] > 1 else None
        super().__init__(dataset, batch_size=batch_size, shuffle=share is None, sampler=share, generator=generator,
                         collate_fn=collate_fn)
        self.round_index, self.resume = round_index, resume
        self.round, self.served, self.before = -1, 0, self.generator.get_state()

    def position(self) -> dict[str, Any]:
        return {"round": self.round, "served": self.served, "before": self.before, "now": self.generator.get_state()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.round, self.served, resume, self.resume = self.round_index(), 0, self.resume, None
        same_round = resume is not None and resume["round"] == self.round
        if resume is not None:
            self.generator.set_state(resume["before"] if same_round else resume["now"])
        skip = resume["served"] if same_round else 0
        self.before = self.generator.get_state()
        for index, batch in enumerate(super().__iter__()):
            if index >= skip:
                self.served = index + 1
                yield batch


class RankShare(DistributedSampler):
    """One rank's share of a shuffled order drawn from the loader's generator, which every rank seeds alike.

    A `DistributedSampler` (so Lightning does not replace it) whose order comes from the generator the loader resumes
    from, not from a seed and an epoch: every rank draws the same permutation, padded by repetition to a multiple of
    the world size as `DistributedSampler` pads, and takes every `world_size`-th index from its rank on.
    """

    def __init__(self, dataset: PairSlots, generator: torch.Generator, rank: int, world_size: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        order += order[:self.total_size - len(order)]
        return iter(order[self.rank:self.total_size:self.num_replicas])
