"""Supervised fine-tuning on (prompt, response) records, prompt tokens masked out of the loss."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch

from lightning_align.algorithms.sampling import sequence_logprobs
from lightning_align.models.adapters import export_model_dir, prepare_for_training
from lightning_align.models.loading import load_model, load_tokenizer
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig, build_optimizer
from lightning_align.modules.plain_hparams import save_plain_hyperparameters


class SFTModule(L.LightningModule):
    """Mean NLL per response token (the same masked log-probs DPO uses), so sampling from the result starts from
    responses shaped like the data. Logs `train/loss`, `val/loss`."""

    def __init__(self, model: ModelSpec = ModelSpec(),
                 optim: OptimConfig = OptimConfig(lr=1e-3, warmup_steps=10, weight_decay=0.0)) -> None:
        super().__init__()
        save_plain_hyperparameters(self)
        self.spec, self.optim = model, optim
        self.tokenizer = load_tokenizer(model)
        self.model = prepare_for_training(load_model(model, self.tokenizer), model).train()

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logps = sequence_logprobs(self.model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        return -logps.sum() / batch["response_mask"][:, 1:].sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def configure_optimizers(self) -> dict:
        return build_optimizer(self.model.named_parameters(), self.optim, int(self.trainer.estimated_stepping_batches))

    def export(self, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        return export_model_dir(self.model, self.spec, load_model, self.tokenizer, out_dir, metadata)
