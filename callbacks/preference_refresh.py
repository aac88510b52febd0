"""E-step of Mutual-Taught (§4.1): fresh DPO pairs at round start, checkpoint selection with the τ stop at round end."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveInt

from lightning_align.algorithms.generation_strategies import AGGREGATION_TEMPLATE, check_template, self_aggregate
from lightning_align.algorithms.mutual_taught import e_step_pair, e_step_pairs, select_checkpoint, win_rate
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, score_responses
from lightning_align.errors import ConfigError


def round_generator(seed: int, round_index: int, purpose: int) -> torch.Generator:
    """A generator per (seed, round, purpose): reruns and resumes draw the same samples."""
    return torch.Generator().manual_seed(seed * 1_000_003 + round_index * 101 + purpose)


class PreferenceRefresh(L.Callback):
    """Round start: k samples per prompt of the round's split from π_{t-1}, scored by r_{t-1}, one pair per prompt
    (chosen = shortest above-mean, rejected = lowest), reference log-probs of π_{t-1} attached.

    With `self_aggregation`, the pool of each prompt is the k samples plus one Generative Self-Aggregation response
    (arXiv 2503.04104: the policy writes a new answer with the k samples in its context, `self_aggregate`), ranked
    by the RM like the samples; the round row then records how often it became the chosen response. The
    `aggregation_template` matters for a model that does not follow instructions (docs/generation.md).

    During the round, `checkpoints` evenly spaced snapshots of the policy are kept in CPU memory. Round end: each
    snapshot's responses on the selection prompts are scored by r_{t-1} against π_{t-1}'s (same random draws for
    all, so only the policy differs); the best becomes π_t, or, if its win rate is below τ, π_{t-1} is restored and
    training stops (the paper returns (π_{t-1}, r_{t-1})). Must precede `RewardRefresh` in the callback list.
    """

    def __init__(self, num_samples: int = 4, sampling: SamplingConfig = SamplingConfig(), tau: ClosedUnitInterval = 0.6,
                 checkpoints: PositiveInt = 2, seed: int = 0, self_aggregation: bool = False,
                 aggregation_template: str = AGGREGATION_TEMPLATE) -> None:
        if num_samples < 2:
            raise ConfigError("num_samples", "needs at least 2 samples per prompt to form a pair")
        check_template(aggregation_template, "aggregation_template")
        self.num_samples, self.sampling, self.tau, self.checkpoints, self.seed = \
            num_samples, sampling, tau, checkpoints, seed
        self.self_aggregation, self.aggregation_template = self_aggregation, aggregation_template
        self._start_state: dict[str, torch.Tensor] = {}
        self._candidates: list[dict[str, torch.Tensor]] = []
        self._save_at: set[int] = set()
        self._baseline: list[float] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "reward_model", None) is None:
            raise ConfigError("model.init_args.reward_model", "Mutual-Taught needs a reward model directory")

    def _selection_scores(self, pl_module: L.LightningModule, prompts: list[str], round_index: int) -> list[float]:
        responses = sample_responses(pl_module.model, pl_module.tokenizer, prompts, 1, self.sampling,
                                     round_generator(self.seed, round_index, 1))
        return score_responses(pl_module.reward_model, pl_module.tokenizer, prompts, [r[0] for r in responses],
                               pl_module.max_length)

    @staticmethod
    def _snapshot(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """A CPU copy of the policy: k+1 of them live through a round, which device memory need not hold."""
        return {k: v.detach().to("cpu", copy=True) for k, v in pl_module.model.state_dict().items()}

    def candidate_pool(self, pl_module: L.LightningModule, prompts: list[str], round_index: int) -> list[list[str]]:
        """The responses the RM ranks for each prompt: k samples of π_{t-1}, plus their aggregate with GSA on."""
        responses = sample_responses(pl_module.model, pl_module.tokenizer, prompts, self.num_samples,
                                     self.sampling, round_generator(self.seed, round_index, 0))
        if not self.self_aggregation:
            return responses
        aggregates = self_aggregate(pl_module.model, pl_module.tokenizer, prompts, responses, self.sampling,
                                    self.aggregation_template)
        return [group + [aggregate] for group, aggregate in zip(responses, aggregates)]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        t, data = trainer.current_epoch, trainer.datamodule
        prompts = data.splits.policy[t]
        responses = self.candidate_pool(pl_module, prompts, t)
        pool = len(responses[0])
        flat = score_responses(pl_module.reward_model, pl_module.tokenizer, [p for p in prompts for _ in range(pool)],
                               [r for group in responses for r in group], pl_module.max_length)
        scores = [flat[i * pool:(i + 1) * pool] for i in range(len(prompts))]
        records = e_step_pairs(prompts, responses, scores)
        pl_module.annotate(records)
        data.set_round_pairs(records)
        self._baseline = self._selection_scores(pl_module, data.splits.selection, t)
        self._start_state, self._candidates = self._snapshot(pl_module), []
        batches = trainer.num_training_batches
        self._save_at = {math.ceil(batches * (j + 1) / self.checkpoints) - 1 for j in range(self.checkpoints)}
        row = {"round": t + 1, "e_pairs": len(records)}
        if self.self_aggregation:
            pairs = [(e_step_pair(group, values), group[-1]) for group, values in zip(responses, scores)]
            chosen = [pair[0] == aggregate for pair, aggregate in pairs if pair is not None]
            row["e_gsa_chosen"] = sum(chosen) / max(1, len(chosen))
        pl_module.rounds.append(row)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx in self._save_at:
            self._candidates.append(self._snapshot(pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        t, data = trainer.current_epoch, trainer.datamodule
        rates = []
        for state in self._candidates:
            pl_module.model.load_state_dict(state)
            rates.append(win_rate(self._selection_scores(pl_module, data.splits.selection, t), self._baseline))
        best, stop = select_checkpoint(rates, self.tau)
        pl_module.model.load_state_dict(self._start_state if stop else self._candidates[best])
        if stop:
            trainer.should_stop = True
        pl_module.rounds[-1].update({"rm_win_rate": rates[best], "checkpoint": best + 1, "stopped": stop})
        self._candidates, self._start_state = [], {}
