"""M-step of Mutual-Taught (§4.2): at round end, a fresh RM from r_0 trained on the policy's before/after outputs."""
from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lightning_align.algorithms.mutual_taught import m_step_pairs
from lightning_align.algorithms.reward_training import RewardFitConfig, fit_reward_model
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, score_responses
from lightning_align.callbacks.preference_refresh import PreferenceRefresh, round_generator
from lightning_align.errors import ConfigError


class RewardRefresh(L.Callback):
    """Round start: y_old ~ π_{t-1} on the RM prompt split. Round end (after `PreferenceRefresh` chose π_t):
    y_new ~ π_t, Δ = r_{t-1}(y_new) − r_{t-1}(y_old), keep y_new ≻ y_old where Δ > −ε (ε = std of r_{t-1}(y_old)),
    add the round's E-step pairs, train a copy of r_0 on them with Bradley–Terry, and make it the module's RM r_t.

    Does nothing when the module has `reward_refresh: false` (frozen-RM ablation) or when the τ rule stopped the
    round. The current RM is a submodule of the policy module, so r_t is saved in (and resumed from) checkpoints.
    """

    def __init__(self, fit: RewardFitConfig = RewardFitConfig(), sampling: SamplingConfig = SamplingConfig(),
                 seed: int = 0) -> None:
        self.fit, self.sampling, self.seed = fit, sampling, seed
        self._old: list[str] = []
        self.refreshed = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        order = [type(cb) for cb in trainer.callbacks]
        if PreferenceRefresh not in order or order.index(PreferenceRefresh) > order.index(RewardRefresh):
            raise ConfigError("trainer.callbacks", "RewardRefresh must come after PreferenceRefresh (it needs π_t)")

    def _sample(self, pl_module: L.LightningModule, prompts: list[str], round_index: int, purpose: int) -> list[str]:
        responses = sample_responses(pl_module.model, pl_module.tokenizer, prompts, 1, self.sampling,
                                     round_generator(self.seed, round_index, purpose))
        return [r[0] for r in responses]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.reward_refresh:
            self._old = self._sample(pl_module, trainer.datamodule.splits.reward, trainer.current_epoch, 2)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not pl_module.reward_refresh or pl_module.rounds[-1]["stopped"]:
            return
        t, data, tokenizer = trainer.current_epoch, trainer.datamodule, pl_module.tokenizer
        prompts = data.splits.reward
        new = self._sample(pl_module, prompts, t, 3)
        score = lambda texts: score_responses(pl_module.reward_model, tokenizer, prompts, texts,  # noqa: E731
                                              pl_module.max_length)
        pairs, epsilon = m_step_pairs(prompts, new, self._old, score(new), score(self._old))
        e_pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.train_set.records]
        reward_model = pl_module.load_base_reward_model().to(pl_module.device)
        reward_model.requires_grad_(True)
        with torch.enable_grad():
            stats = fit_reward_model(reward_model, tokenizer, pairs + e_pairs, self.fit, pl_module.max_length)
        reward_model.requires_grad_(False)
        pl_module.reward_model = reward_model
        self.refreshed += 1
        pl_module.rounds[-1].update({"m_pairs": len(pairs), "epsilon": epsilon, "rm_fit_accuracy": stats["accuracy"]})

    def state_dict(self) -> dict[str, Any]:
        return {"refreshed": self.refreshed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.refreshed = state_dict["refreshed"]
