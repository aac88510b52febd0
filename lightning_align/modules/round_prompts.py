"""Prompts of the Mutual-Taught stage, split once, and the slots each round's E-step pairs are trained from."""
from __future__ import annotations

from typing import Any

import lightning as L
from jsonargparse.typing import PositiveInt
from torch.utils.data import DataLoader

from lightning_align.algorithms.mutual_taught import PromptSplits, split_prompts
from lightning_align.data.gold_task import task_prompts
from lightning_align.data.loaders import check_source, seeded_loader
from lightning_align.data.preference import GOLD, PairSlots, collate_pairs
from lightning_align.data.records import read_prompts
from lightning_align.errors import ConfigError, DataError


class RoundPromptsDataModule(L.LightningDataModule):
    """`prompts`: a data file with a `prompt` or `messages` column (`data/records.py`) or "gold" (the built-in
    task, which also enables gold metrics).

    The number of rounds is `trainer.max_epochs` (one epoch per round), so the splits are cut in `setup`: one policy
    split of `policy_prompts` per round, `reward_prompts` for the M-step, `selection_prompts` held out for
    checkpoint selection (§5.1). An epoch has `policy_prompts` pair slots; `PreferenceRefresh` fills them with the
    round's pairs before the first batch (prompts without a preference leave their slot to a repeated pair).
    Pairs are truncated to the policy's `max_length`, the length its reference log-probs were computed at.
    """

    def __init__(self, prompts: str = GOLD, policy_prompts: PositiveInt = 64, reward_prompts: PositiveInt = 64,
                 selection_prompts: PositiveInt = 48, batch_size: PositiveInt = 8, seed: int = 0) -> None:
        super().__init__()
        check_source(prompts, GOLD, "data.init_args.prompts")
        self.prompts, self.policy_prompts, self.reward_prompts = prompts, policy_prompts, reward_prompts
        self.selection_prompts, self.batch_size, self.seed = selection_prompts, batch_size, seed
        self.splits: PromptSplits | None = None
        self.train_set = PairSlots([], slots=policy_prompts)

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
            raise DataError(self.prompts, "the reward model ranked every sampled response equally: no E-step pairs")
        self.train_set.records = records

    def train_dataloader(self) -> DataLoader:
        module = self.trainer.lightning_module
        return seeded_loader(self.train_set, self.batch_size, True, self.seed,
                             lambda records: collate_pairs(module.tokenizer, records, module.max_length))
