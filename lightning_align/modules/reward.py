"""Reward-model training: Bradley–Terry on preference pairs (the `reward` stage, and r_0 of Mutual-Taught)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from lightning_align import strict_json
from lightning_align.algorithms.losses import bradley_terry_loss
from lightning_align.algorithms.reward_training import pair_rewards
from lightning_align.models.adapters import export_model_dir, prepare_for_training
from lightning_align.models.loading import load_tokenizer
from lightning_align.models.reward_model import load_reward_model
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig, build_optimizer
from lightning_align.modules.plain_hparams import save_plain_hyperparameters

HELDOUT_PAIRS = "heldout_pairs.jsonl"  # the pairs an exported RM was validated on, never trained on
TRAIN_PAIRS = "train_pairs.jsonl"  # the pairs it was trained on (Mutual-Taught's replay extension reads them)
PAIR_KEYS = ("prompt", "chosen", "rejected")


class RewardModule(L.LightningModule):
    """Scalar-head RM on a causal-LM backbone; loss −log σ(r(y_w) − r(y_l) − margin).

    `model.path` may be a causal LM (e.g. the SFT output: its backbone gets a fresh head) or an RM directory.
    `max_length` (prompt + response tokens) truncates the pairs the datamodule batches for it.
    Logs `train/loss`, `val/loss`, `rm/accuracy` (share of pairs ranked right) and `rm/margin` (mean r_w − r_l).
    The export carries the datamodule's validation pairs (`heldout_pairs.jsonl`), so later evaluation of this RM
    uses exactly its held-out set instead of re-deriving the split, and its training pairs (`train_pairs.jsonl`).
    """

    def __init__(self, model: ModelSpec = ModelSpec(), optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=5),
                 margin: Optional[float] = None, max_length: PositiveInt = 64) -> None:
        super().__init__()
        save_plain_hyperparameters(self)
        self.spec, self.optim, self.margin, self.max_length = model, optim, margin, max_length
        self.tokenizer = load_tokenizer(model)
        self.model = prepare_for_training(load_reward_model(model, self.tokenizer), model, heads=("score",)).train()
        self.val_accuracy = BinaryAccuracy()
        self.val_margin = MeanMetric()
        self.heldout_pairs: list[dict[str, Any]] = []
        self.train_pairs: list[dict[str, Any]] = []

    def setup(self, stage: str) -> None:
        """Keep the datamodule's pairs (Lightning sets the datamodule up before the module)."""
        for name, kept in (("val_set", self.heldout_pairs), ("train_set", self.train_pairs)):
            records = getattr(getattr(self.trainer.datamodule, name, None), "records", None)
            if records is not None:
                kept[:] = [{k: r[k] for k in PAIR_KEYS} for r in records]

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        chosen, rejected = pair_rewards(self.model, batch)
        loss, stats = bradley_terry_loss(chosen, rejected, self.margin)
        return loss, stats, (chosen - rejected).detach()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, stats, diff = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(diff))
        self.log("train/rm_accuracy", stats["accuracy"], batch_size=len(diff))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, _, diff = self._loss(batch)
        self.val_accuracy(diff > 0, torch.ones_like(diff, dtype=torch.long))
        self.val_margin(diff)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(diff))
        self.log("rm/accuracy", self.val_accuracy, prog_bar=True, batch_size=len(diff))
        self.log("rm/margin", self.val_margin, batch_size=len(diff))

    def configure_optimizers(self) -> dict:
        return build_optimizer(self.model.named_parameters(), self.optim, int(self.trainer.estimated_stepping_batches))

    def export(self, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Save the RM as a Hugging Face directory; `load_reward_model(ModelSpec(path=out_dir), ...)` reloads it."""
        files = {name: "".join(strict_json.dumps(pair) + "\n" for pair in pairs)
                 for name, pairs in ((HELDOUT_PAIRS, self.heldout_pairs), (TRAIN_PAIRS, self.train_pairs)) if pairs}
        return export_model_dir(self.model, self.spec, load_reward_model, self.tokenizer, out_dir,
                                {"kind": "reward_model", **(metadata or {})}, files)


def read_saved_pairs(reward_model_dir: str | Path, name: str = HELDOUT_PAIRS) -> list[dict[str, Any]] | None:
    """Pairs `RewardModule.export` saved with a reward model (held-out ones, or `TRAIN_PAIRS`); None if it has none
    (an RM trained elsewhere)."""
    path = Path(reward_model_dir) / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else None
