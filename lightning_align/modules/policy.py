"""Policy training by DPO against a frozen reference: the `dpo` stage and the E-step of the `mutual_taught` stage."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt

from lightning_align.algorithms.losses import dpo_loss
from lightning_align.algorithms.progress import progress_bar
from lightning_align.algorithms.sampling import sequence_logprobs
from lightning_align.data.preference import collate_pairs
from lightning_align.errors import ConfigError
from lightning_align.eval.round_report import RoundRows, merge_rounds, write_round_report
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.adapters import export_model_dir, prepare_for_training
from lightning_align.models.loading import load_model, load_tokenizer
from lightning_align.models.reward_model import load_frozen_reward_model
from lightning_align.models.spec import ModelSpec, Quantization
from lightning_align.modules.optim import OptimConfig, build_optimizer
from lightning_align.modules.plain_hparams import save_plain_hyperparameters

REWARD_MODEL_DIR = "reward_model"
Ranker = Literal["reward_model", "gold"]


class PolicyModule(L.LightningModule):
    """DPO (or IPO with `ipo: true`) on pairs whose reference log-probs were computed once, without grad.

    The reference is the policy as it was when the pairs were annotated (`annotate`): the initial model for a plain
    DPO stage, π_{t-1} at the start of each Mutual-Taught round (§4.1) — so no second model is kept in memory.
    `max_length` (prompt + response tokens) is the only length of the stage: annotation and the datamodule's
    batches both truncate with it, so reference and policy always score the same tokens.
    With IPO, log-probs are length-averaged (as its regression target assumes) for policy and reference alike.

    `reward_model` (a directory) is the RM r_0 the Mutual-Taught rounds score with; `reward_refresh: false`
    keeps it frozen across rounds (the iterative-DPO ablation), otherwise `MutualTaughtRounds` refits it each round.
    `ranker: gold` ranks, selects and filters by the built-in task's gold reward instead (the oracle-RM ceiling):
    the RM is then only evaluated, so it must stay frozen.
    A frozen RM may be loaded in 8 or 4 bits (`reward_quantization`); one that is refitted may not.
    With `model.lora` the policy trains adapters; its reference log-probs are those of the adapted model at
    annotation time (at the start: the base, since fresh adapters add nothing).
    `rounds` is the round table of the callbacks that keep one; `export` writes it as the stage's report.
    """

    def __init__(self, model: ModelSpec = ModelSpec(), optim: OptimConfig = OptimConfig(lr=1e-4, warmup_steps=0,
                 min_lr_ratio=1.0, weight_decay=0.0), beta: PositiveFloat = 0.1, ipo: bool = False,
                 max_length: PositiveInt = 64, annotate_batch_size: PositiveInt = 8,
                 reward_model: Optional[str] = None, reward_refresh: bool = True,
                 reward_quantization: Optional[Quantization] = None, ranker: Ranker = "reward_model") -> None:
        super().__init__()
        save_plain_hyperparameters(self)
        self.check_arguments(beta=beta, reward_refresh=reward_refresh, reward_quantization=reward_quantization,
                             ranker=ranker)
        self.spec, self.optim, self.beta, self.ipo, self.max_length = model, optim, beta, ipo, max_length
        self.annotate_batch_size, self.reward_model_path, self.reward_refresh, self.reward_quantization = \
            annotate_batch_size, reward_model, reward_refresh, reward_quantization
        self.ranker = ranker
        self.tokenizer = load_tokenizer(model)
        self.model = prepare_for_training(load_model(model, self.tokenizer), model).train()
        self.reward_model = None
        if reward_model is not None:
            self.reward_model = self.load_base_reward_model()

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """The round table: the rows of the trainer's callbacks that keep rounds (`round_rows()`), merged by round."""
        if self._trainer is None:
            return []
        return merge_rounds([cb.round_rows() for cb in self._trainer.callbacks if isinstance(cb, RoundRows)])

    @staticmethod
    def check_arguments(beta: float, reward_refresh: bool, reward_quantization: Optional[str],
                        ranker: str = "reward_model", **_: Any) -> None:
        """What the argument types cannot say, checked at planning too (the pipeline calls this with the parsed
        `init_args` before any model is loaded).

        `beta` is the inverse temperature of the KL-regularised objective (DPO, Rafailov et al. 2023, Eq. 3; IPO's τ):
        every finite positive value defines one, larger staying closer to the reference (the DPO paper's own
        reward/KL sweeps go above 1), so only a non-finite value is refused here; `PositiveFloat` refuses <= 0.
        """
        if not math.isfinite(beta):
            raise ConfigError("model.init_args.beta", f"must be a finite positive number, got {beta}")
        if reward_quantization is not None and reward_refresh:
            raise ConfigError("model.init_args.reward_quantization", "the reward model is refitted every round "
                              "(reward_refresh: true), which a quantized model cannot be; set reward_refresh: false "
                              "or drop reward_quantization")
        if ranker not in ("reward_model", "gold"):
            raise ConfigError("model.init_args.ranker", f"'{ranker}' is not one of reward_model, gold")
        if ranker == "gold" and reward_refresh:
            raise ConfigError("model.init_args.ranker", "the gold ranker never reads the reward model, so refitting "
                              "it is pointless: set reward_refresh: false with ranker: gold")

    def load_base_reward_model(self) -> torch.nn.Module:
        """A fresh copy of r_0, frozen: the E-step scores with it and the M-step restarts from it (§4.2)."""
        return load_frozen_reward_model(self.reward_model_path, self.reward_quantization,
                                        "model.init_args.reward_quantization")

    def _logps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sequence_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                 average=self.ipo)

    @torch.no_grad()
    def annotate(self, records: list[dict[str, Any]]) -> None:
        """Add `ref_chosen`/`ref_rejected` (log-probs of the current policy) to each record, in place.

        Call it inside a trainer run, once the model is on its device: the forward runs under the trainer's precision
        (e.g. bf16 autocast), as training forwards do, so at step 0 policy and reference log-probs agree."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        starts = range(0, len(records), self.annotate_batch_size)
        with progress_bar(len(starts), "reference log-probs") as bar, self.trainer.precision_plugin.forward_context():
            for start in starts:
                chunk = records[start:start + self.annotate_batch_size]
                batch = {k: v.to(device) for k, v in collate_pairs(self.tokenizer, chunk, self.max_length).items()}
                logps = self._logps(batch).tolist()
                for i, record in enumerate(chunk):
                    record["ref_chosen"], record["ref_rejected"] = logps[i], logps[len(chunk) + i]
                bar.update()
        self.model.train(was_training)

    def _step(self, batch: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
        logps = self._logps(batch)
        half = logps.shape[0] // 2
        loss, stats = dpo_loss(logps[:half], logps[half:], batch["ref_chosen"], batch["ref_rejected"],
                               self.beta, self.ipo)
        self.log(f"{prefix}/loss", loss, prog_bar=True, batch_size=half)
        for name in ("rewards_accuracy", "rewards_margin", "rewards_chosen", "rewards_rejected"):
            self.log(f"{prefix}/{name}", stats[name], batch_size=half)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> dict:
        return build_optimizer(self.model.named_parameters(), self.optim, int(self.trainer.estimated_stepping_batches))

    def export(self, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Save the policy; after Mutual-Taught rounds also the last RM (`reward_model/`) and the round report.

        A quantized RM is not saved: it was never refitted, so it is r_0, which stays where `reward_model` points."""
        rounds = self.rounds
        out = export_model_dir(self.model, self.spec, load_model, self.tokenizer, out_dir,
                               {**(metadata or {}), "rounds": rounds})
        if rounds:
            if self.reward_model is not None and self.reward_quantization is None:
                save_model_dir(self.reward_model, self.tokenizer, out / REWARD_MODEL_DIR, {"kind": "reward_model"})
            write_round_report(rounds, out)
        return out
