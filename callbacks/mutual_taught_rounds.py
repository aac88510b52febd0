"""Mutual-Taught rounds (arXiv 2506.06292) driven through Lightning: one epoch of the stage is one round."""
from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any, Callable, Optional

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveInt

from lightning_align.algorithms.generation_strategies import AGGREGATION_TEMPLATE, check_template
from lightning_align.algorithms.mutual_taught import (
    RoundConfig, RoundEnd, RoundStart, State, end_round, snapshot_batches, start_round,
)
from lightning_align.algorithms.reward_training import RewardFitConfig
from lightning_align.algorithms.sampling import SamplingConfig
from lightning_align.data.gold_task import task_gold_reward
from lightning_align.data.preference import GOLD
from lightning_align.errors import ConfigError
from lightning_align.modules.reward import TRAIN_PAIRS, read_saved_pairs
from lightning_align.rank_zero import run_on_rank_zero

def _snapshot(pl_module: L.LightningModule) -> State:
    """A CPU copy of the policy: k+1 of them live through a round, which device memory need not hold."""
    return {k: v.detach().to("cpu", copy=True) for k, v in pl_module.model.state_dict().items()}


class MutualTaughtRounds(L.Callback):
    """Holds the state of the rounds and calls `algorithms/mutual_taught.py` at each round's start and end.

    Round start (`on_train_epoch_start`): `start_round` with π_{t-1} and r_{t-1}; the pairs get π_{t-1}'s reference
    log-probs (`PolicyModule.annotate`) and fill the epoch's slots. During the round, π_{t-1} and `checkpoints`
    evenly spaced snapshots of the policy are kept in CPU memory. Round end (`on_train_epoch_end`): `end_round`
    loads π_t into the module and, unless the module has `reward_refresh: false` (frozen-RM ablation) or the τ rule
    stopped the rounds, makes the refitted r_t the module's reward model (a submodule, so Lightning moves and
    checkpoints its weights). With the module's `ranker: gold` the gold reward ranks and selects instead of the RM
    (the oracle ceiling; refused in `setup` when the prompts have no gold reward). `replay_reward_pairs` adds r_0's
    own training pairs (`train_pairs.jsonl` of its directory) to every M-step: an extension beyond the paper.
    With `self_aggregation`, a GSA answer of π_{t-1} joins the k samples (`aggregation_template` matters for a
    model that does not follow instructions, docs/generation.md).

    Everything else a round needs to continue (its index, pairs with their reference log-probs, baselines,
    snapshots, the finished rounds' rows) is in `state_dict`, so a run resumed from a checkpoint taken anywhere in a
    round finishes it exactly as an uninterrupted run would (from a round's last batch, Lightning calls neither that
    round's end nor the next one's start: `on_train_start` does both). Read-only for other callbacks:
    `round_rows()`, `finished_rounds` and `ranking_reward_model` (r_{t-1}, the RM the round ranks and selects with).

    Under DDP, rank zero alone samples, ranks, annotates, selects the checkpoint and refits the RM; the round's pairs,
    the selection and r_t's weights are broadcast, and every rank trains on its shard of the pairs
    (`RoundPromptsDataModule`). DDP keeps the policy snapshots equal on every rank, so each loads π_t from its own.
    """

    def __init__(self, num_samples: PositiveInt = 4, sampling: SamplingConfig = SamplingConfig(),
                 tau: ClosedUnitInterval = 0.6, checkpoints: PositiveInt = 2, seed: int = 0,
                 fit: RewardFitConfig = RewardFitConfig(), self_aggregation: bool = False,
                 aggregation_template: str = AGGREGATION_TEMPLATE, replay_reward_pairs: bool = False) -> None:
        if num_samples < 2:
            raise ConfigError("num_samples", "needs at least 2 samples per prompt to form a pair")
        if not 0.0 <= tau <= 1.0:
            raise ConfigError("tau", f"{tau} is not a win rate in [0, 1]")
        if checkpoints < 1:
            raise ConfigError("checkpoints", "needs at least 1 snapshot per round to select from")
        check_template(aggregation_template, "aggregation_template")
        self.num_samples, self.sampling, self.tau, self.checkpoints, self.seed, self.fit = \
            num_samples, sampling, tau, checkpoints, seed, fit
        self.self_aggregation, self.aggregation_template = self_aggregation, aggregation_template
        self.replay_reward_pairs = replay_reward_pairs
        self.config: Optional[RoundConfig] = None
        self.ranking_reward_model: Optional[torch.nn.Module] = None
        self._rows: list[dict[str, Any]] = []
        self._round = -1
        self._start: Optional[RoundStart] = None
        self._start_state: State = {}
        self._snapshots: list[State] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "reward_model", None) is None:
            raise ConfigError("model.init_args.reward_model", "Mutual-Taught needs a reward model directory")
        oracle = pl_module.ranker == "gold"
        if oracle and getattr(trainer.datamodule, "prompts", None) != GOLD:
            raise ConfigError("model.init_args.ranker", "ranker: gold needs the built-in task's gold reward "
                              "(data.init_args.prompts: gold); your own prompts have none")
        self.config = RoundConfig(self.num_samples, self.sampling, self.tau, pl_module.max_length, self.seed,
                                  self.fit if pl_module.reward_refresh else None,
                                  self.aggregation_template if self.self_aggregation else None,
                                  task_gold_reward(trainer.datamodule.gold_task) if oracle else None,
                                  self._replay(pl_module))

    def _replay(self, pl_module: L.LightningModule) -> tuple[dict[str, str], ...]:
        """r_0's training pairs when `replay_reward_pairs` is on (refused where no M-step runs or none were saved)."""
        if not self.replay_reward_pairs:
            return ()
        if not pl_module.reward_refresh:
            raise ConfigError("replay_reward_pairs", "replays r_0's pairs in the M-step, which reward_refresh: false "
                              "turns off")
        pairs = read_saved_pairs(pl_module.reward_model_path, TRAIN_PAIRS)
        if not pairs:
            raise ConfigError("replay_reward_pairs", f"{pl_module.reward_model_path} has no {TRAIN_PAIRS} (the "
                              "reward stage writes the pairs it trained r_0 on)")
        return tuple(pairs)

    @property
    def finished_rounds(self) -> int:
        return len(self._rows)

    def round_rows(self) -> list[dict[str, Any]]:
        """One row per finished round: pairs, the selection step and the τ rule, the M-step (copies)."""
        return [dict(row) for row in self._rows]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ranking_reward_model = pl_module.reward_model
        if self._start is None:
            return
        trainer.datamodule.set_round_pairs(self._start.pairs)  # resumed mid-round: restored, not redrawn
        if self._round < trainer.current_epoch:  # resumed from a round's last batch: Lightning skips the hooks
            self._end_round(trainer, pl_module)  # of that round's end and of the next round's start
            if not trainer.should_stop and trainer.current_epoch < trainer.max_epochs:
                self.on_train_epoch_start(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None and self._round == trainer.current_epoch:
            return  # started already (a resume from the previous round's last batch)
        data, self.ranking_reward_model = trainer.datamodule, pl_module.reward_model
        self._round = trainer.current_epoch

        def annotated_start() -> RoundStart:
            start = start_round(pl_module.model, pl_module.reward_model, pl_module.tokenizer, data.splits,
                                self._round, self.config)
            pl_module.annotate(start.pairs)
            return start

        self._start = run_on_rank_zero(annotated_start)
        data.set_round_pairs(self._start.pairs)
        self._start_state, self._snapshots = _snapshot(pl_module), []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx in snapshot_batches(trainer.num_training_batches, self.checkpoints):
            self._snapshots.append(_snapshot(pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end_round(trainer, pl_module)

    def _end_round(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base_reward_model = lambda: pl_module.load_base_reward_model().to(pl_module.device)  # noqa: E731
        compute = lambda: end_round(pl_module.model, self._snapshots, self._start_state,  # noqa: E731
                                    pl_module.reward_model, pl_module.tokenizer, trainer.datamodule.splits,
                                    self._round, self._start, self.config, base_reward_model)
        end = compute() if trainer.world_size == 1 else self._end_from_rank_zero(trainer, pl_module, compute,
                                                                                  base_reward_model)
        self._rows.append(self._row(self._round, self._start, end))
        if end.reward_model is not None:
            pl_module.reward_model = end.reward_model
        trainer.should_stop = trainer.should_stop or end.stopped
        self._start, self._start_state, self._snapshots = None, {}, []

    def _end_from_rank_zero(self, trainer: L.Trainer, pl_module: L.LightningModule, compute: Callable[[], RoundEnd],
                            base_reward_model: Callable[[], torch.nn.Module]) -> RoundEnd:
        """Rank zero's round end on every rank: its outcome and r_t's weights are broadcast; π_t is loaded from the
        rank's own snapshot (equal on every rank under DDP) and r_t rebuilt from r_0 with the broadcast weights."""
        def decide() -> tuple[RoundEnd, Optional[State]]:
            end = compute()
            return replace(end, reward_model=None), None if end.reward_model is None else end.reward_model.state_dict()

        end, reward_state = run_on_rank_zero(decide)
        pl_module.model.load_state_dict(self._start_state if end.stopped else self._snapshots[end.checkpoint])
        if reward_state is not None:
            end.reward_model = base_reward_model()
            end.reward_model.load_state_dict(reward_state)
        return end

    @staticmethod
    def _row(round_index: int, start: RoundStart, end: RoundEnd) -> dict[str, Any]:
        row: dict[str, Any] = {"round": round_index + 1, "e_pairs": len(start.pairs)}
        if start.gsa_chosen is not None:
            row["e_gsa_chosen"] = start.gsa_chosen
        row.update({"rm_win_rate": end.win_rates[end.checkpoint], "checkpoint": end.checkpoint + 1,
                    "stopped": end.stopped, **end.m_step})
        return row

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self._rows, "round": self._round,
                "start": None if self._start is None else asdict(self._start),
                "start_state": self._start_state, "snapshots": self._snapshots}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        start = state_dict["start"]
        self._rows, self._round = [dict(row) for row in state_dict["rows"]], state_dict["round"]
        self._start = None if start is None else RoundStart(**start)
        self._start_state, self._snapshots = state_dict["start_state"], list(state_dict["snapshots"])
