"""Causal-LM training of a student model: the module behind pretraining, enlarging and recovery stages."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.text import Perplexity

from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.loading import load_model, load_tokenizer
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig, build_optimizer


class StudentModule(L.LightningModule):
    """Next-token cross-entropy on packed blocks; validation perplexity = exp(mean token NLL) over the val set."""

    def __init__(self, model: ModelSpec = ModelSpec(), optim: OptimConfig = OptimConfig()) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.spec, self.optim = model, optim
        self.tokenizer = load_tokenizer(model)
        self.model = load_model(model, self.tokenizer)
        self.val_ppl = Perplexity()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.model(input_ids=batch, labels=batch).loss
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        # A reset inside this loop's grad mode keeps metric state usable when `validate` runs before `fit`.
        self.val_ppl.reset()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        logits = self(batch)[:, :-1].float()
        targets = batch[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        self.val_ppl.update(logits, targets)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self.log("val/ppl", self.val_ppl, prog_bar=True)

    def configure_optimizers(self) -> dict:
        return build_optimizer(self.model.named_parameters(), self.optim, int(self.trainer.estimated_stepping_batches))

    def export(self, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Save the model as a Hugging Face directory the next stage (or plain transformers) can load."""
        return save_model_dir(self.model, self.tokenizer, out_dir, metadata)
