"""Evaluation of each Mutual-Taught round against the built-in task's gold reward (never used for training)."""
from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import PositiveInt

from lightning_align.algorithms.mutual_taught import round_generator
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, score_responses
from lightning_align.callbacks.mutual_taught_rounds import MutualTaughtRounds
from lightning_align.data.gold_task import gold_reward, gold_win_rate, repetitive, task_gold_reward
from lightning_align.data.preference import GOLD
from lightning_align.errors import ConfigError
from lightning_align.eval.round_report import round_table
from lightning_align.modules.reward import HELDOUT_PAIRS, read_saved_pairs

log = logging.getLogger(__name__)
EVAL_ROUND = 10_000  # generator "round" reserved for evaluation draws, identical every round


class GoldRoundMetrics(L.Callback):
    """Per round (and for the start, round 0), on the held-out selection prompts:

    - `gold_reward`: mean gold reward of π_t's responses; `gold_win_rate`: share of prompts where π_t's response
      beats π_0's in gold reward (ties one half) — same random draws every round, so only the policy differs;
    - `rm_prev_accuracy_fresh` / `rm_accuracy_fresh`: accuracy (vs gold) of r_{t-1} and r_t on fresh pairs: every
      two of `fresh_samples` π_t samples per prompt with different gold rewards — the distribution-shift point of
      the paper (all pairs of a prompt are used, to cut the variance of a small selection set);
    - `rm_accuracy_heldout`: accuracy of r_t on the pairs the reward stage held out, read from the r_0 directory
      (`heldout_pairs.jsonl`, written by `RewardModule.export`); NaN with a warning if that directory has none;
    - `repetitive_share`: share of π_t's responses that are repetitive, the `blind_spot` variant's blind spot.
    The gold reward is that of the datamodule's variant (`gold_task`).
    Must follow `MutualTaughtRounds`, whose round state it only reads (r_{t-1} as `ranking_reward_model`, the
    rows for the log); it keeps its own rows (`round_rows()`, merged into the module's `rounds` by round) and logs
    `round/<name>`. With a user's own prompts (no gold reward) it warns once and does nothing.
    """

    def __init__(self, seed: int = 0, fresh_samples: PositiveInt = 4,
                 sampling: SamplingConfig = SamplingConfig()) -> None:
        if fresh_samples < 2:
            raise ConfigError("fresh_samples", "needs at least 2 samples per prompt to form pairs")
        self.seed, self.fresh_samples, self.sampling = seed, fresh_samples, sampling
        self.heldout: list[dict[str, str]] = []
        self.driver: MutualTaughtRounds | None = None
        self._rows: list[dict[str, Any]] = []
        self._initial: list[str] = []
        self.enabled = True
        self.gold = gold_reward

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.enabled = getattr(trainer.datamodule, "prompts", None) == GOLD
        if not self.enabled:
            log.warning("GoldRoundMetrics: no gold reward for your own prompts; per-round gold metrics are skipped")
        driver = [i for i, cb in enumerate(trainer.callbacks) if isinstance(cb, MutualTaughtRounds)]
        if not driver or driver[0] > trainer.callbacks.index(self):
            raise ConfigError("trainer.callbacks", "GoldRoundMetrics must follow MutualTaughtRounds (it evaluates "
                              "the policy each round selects)")
        self.driver = trainer.callbacks[driver[0]]
        if self.enabled:
            self.gold = task_gold_reward(trainer.datamodule.gold_task)
            self.heldout = read_saved_pairs(pl_module.reward_model_path) or []
            if not self.heldout:
                log.warning("GoldRoundMetrics: %s has no %s (the reward stage writes it); rm_accuracy_heldout is NaN",
                            pl_module.reward_model_path, HELDOUT_PAIRS)

    def _responses(self, pl_module: L.LightningModule, prompts: list[str], k: int, purpose: int) -> list[list[str]]:
        return sample_responses(pl_module.model, pl_module.tokenizer, prompts, k, self.sampling,
                                round_generator(self.seed, EVAL_ROUND, purpose))

    def _accuracy(self, pl_module: L.LightningModule, reward_model, pairs: list[dict[str, str]]) -> float:
        if not pairs:
            return float("nan")
        prompts = [p["prompt"] for p in pairs]
        chosen = score_responses(reward_model, pl_module.tokenizer, prompts, [p["chosen"] for p in pairs],
                                 pl_module.max_length)
        rejected = score_responses(reward_model, pl_module.tokenizer, prompts, [p["rejected"] for p in pairs],
                                   pl_module.max_length)
        return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)

    def _row(self, trainer: L.Trainer, pl_module: L.LightningModule,
             previous: torch.nn.Module) -> dict[str, float]:
        prompts = trainer.datamodule.splits.selection
        responses = [r[0] for r in self._responses(pl_module, prompts, 1, 0)]
        if not self._initial:
            self._initial = responses
        fresh = []
        for prompt, group in zip(prompts, self._responses(pl_module, prompts, self.fresh_samples, 1)):
            for i, a in enumerate(group):
                for b in group[i + 1:]:
                    if self.gold(a) != self.gold(b):
                        chosen, rejected = (a, b) if self.gold(a) > self.gold(b) else (b, a)
                        fresh.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        return {
            "gold_reward": sum(map(self.gold, responses)) / len(responses),
            "gold_win_rate": gold_win_rate(responses, self._initial, self.gold),
            "rm_prev_accuracy_fresh": self._accuracy(pl_module, previous, fresh),
            "rm_accuracy_fresh": self._accuracy(pl_module, pl_module.reward_model, fresh),
            "rm_accuracy_heldout": self._accuracy(pl_module, pl_module.reward_model, self.heldout),
            "fresh_pairs": float(len(fresh)),
            "repetitive_share": sum(map(repetitive, responses)) / len(responses),
        }

    def _add(self, trainer: L.Trainer, pl_module: L.LightningModule, round_number: int,
             previous: torch.nn.Module) -> None:
        row = {"round": round_number, **self._row(trainer, pl_module, previous)}
        self._rows.append(row)
        if trainer.logger is not None:
            numeric = {f"round/{k}": float(v) for k, v in row.items() if isinstance(v, (int, float))}
            trainer.logger.log_metrics(numeric, step=trainer.global_step)
        log.info("Mutual-Taught rounds so far:\n%s", round_table(pl_module.rounds))

    def round_rows(self) -> list[dict[str, Any]]:
        """Round 0 (the start) and one row per finished round (copies)."""
        return [dict(row) for row in self._rows]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not self._rows:
            self._add(trainer, pl_module, 0, pl_module.reward_model)
        elif self.enabled and self._rows[-1]["round"] < self.driver.finished_rounds:
            # resumed from a round's last batch: the driver has just ended that round here, not at an epoch's end
            self._add(trainer, pl_module, self.driver.finished_rounds, self.driver.ranking_reward_model)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._add(trainer, pl_module, trainer.current_epoch + 1, self.driver.ranking_reward_model)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self._rows, "initial": self._initial}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rows, self._initial = [dict(row) for row in state_dict["rows"]], list(state_dict["initial"])
