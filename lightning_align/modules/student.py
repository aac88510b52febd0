"""Causal-LM training of a student model: the module behind pretraining, enlarging and recovery stages."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from jsonargparse.typing import ClosedUnitInterval, PositiveFloat
from torchmetrics.text import Perplexity

from lightning_align.algorithms.losses import distillation_loss
from lightning_align.errors import ConfigError
from lightning_align.models.adam_moments import (
    MOMENTS_FILE,
    NamedMoments,
    load_moments,
    moments_bytes,
    named_moments,
    read_moments,
)
from lightning_align.models.adapters import export_model_dir, prepare_for_training
from lightning_align.models.loading import load_dir, load_model, load_tokenizer
from lightning_align.models.spec import ModelSpec, Quantization
from lightning_align.modules.optim import OptimConfig, build_optimizer
from lightning_align.modules.plain_hparams import save_plain_hyperparameters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation from a frozen teacher directory (e.g. the enlarged model, IDEA Prune).

    Training loss = (1 - weight) × LM loss + weight × KL(teacher ‖ student) at `temperature`. The teacher is frozen,
    so it may be loaded in 8 or 4 bits (`quantization`).
    """

    teacher: str
    weight: ClosedUnitInterval = 0.5
    temperature: PositiveFloat = 2.0
    quantization: Optional[Quantization] = None


class StudentModule(L.LightningModule):
    """Next-token cross-entropy on packed blocks; validation perplexity = exp(mean token NLL) over the val set.

    With `distill`, a frozen teacher's logits are mixed into the training loss (validation stays plain LM loss).
    With `carry_optimizer_state`, AdamW starts from the moments saved next to the incoming model directory (if its
    stage saved any) and the export saves this stage's moments, so stages on one LR curve continue one optimizer
    (`models.adam_moments`). Adapters (LoRA, QLoRA) and 8-bit AdamW have no full-weight float moments to hand on:
    they train with a fresh optimizer and say so in the log.
    """

    def __init__(self, model: ModelSpec = ModelSpec(), optim: OptimConfig = OptimConfig(),
                 distill: Optional[DistillConfig] = None, carry_optimizer_state: bool = False) -> None:
        super().__init__()
        save_plain_hyperparameters(self)
        self.spec, self.optim, self.distill = model, optim, distill
        self.carry = carry_optimizer_state and self._can_carry()
        self.moments: NamedMoments | None = None
        self.tokenizer = load_tokenizer(model)
        # loaded directories come back in eval mode
        self.model = prepare_for_training(load_model(model, self.tokenizer), model).train()
        self.teacher = self._load_teacher(distill) if distill is not None else None
        self.val_ppl = Perplexity()

    @staticmethod
    def _load_teacher(distill: DistillConfig) -> torch.nn.Module:
        if not (Path(distill.teacher) / "config.json").is_file():
            raise ConfigError("model.init_args.distill.teacher",
                              f"'{distill.teacher}' is not a Hugging Face model directory (no config.json)")
        return load_dir(Path(distill.teacher), quantization=distill.quantization,
                        key="model.init_args.distill.quantization").requires_grad_(False).eval()

    def _can_carry(self) -> bool:
        reason = ("LoRA adapters are merged on export" if self.spec.lora is not None else
                  f"optim.name={self.optim.name} keeps quantized moments" if self.optim.name != "adamw" else None)
        if reason is not None:
            log.warning("carry_optimizer_state: %s, so this stage's optimizer starts fresh and saves no moments",
                        reason)
        return reason is None

    def train(self, mode: bool = True) -> StudentModule:
        """Keep the teacher in eval mode whatever Lightning does to the module tree."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        output = self.model(input_ids=batch, labels=batch, use_cache=False)
        loss = output.loss
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=batch, use_cache=False).logits
            kd = distillation_loss(output.logits, teacher_logits, self.distill.temperature)
            self.log("train/lm_loss", output.loss)
            self.log("train/kd_loss", kd)
            loss = (1.0 - self.distill.weight) * output.loss + self.distill.weight * kd
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
        total_steps = int(self.trainer.estimated_stepping_batches)
        config = build_optimizer(self.model.named_parameters(), self.optim, total_steps)
        saved = read_moments(self.spec.path) if self.carry and self.spec.path is not None else None
        if saved is not None:
            load_moments(self.model, config["optimizer"], saved, self.spec.path)
            log.info("AdamW continues from the moments saved in %s", self.spec.path)
        elif self.carry:
            log.info("AdamW starts fresh: %s has no saved moments", self.spec.path or "a newly built model")
        return config

    def on_train_end(self) -> None:
        """Runs after the callbacks' `on_train_end`, so the moments are those of the model after any surgery."""
        if self.carry:
            self.moments = named_moments(self.model, self.trainer.optimizers[0])

    def export(self, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Save the model as a Hugging Face directory the next stage (or plain transformers) can load; with carried
        optimizer state, its moments go next to it."""
        files = {MOMENTS_FILE: moments_bytes(self.moments)} if self.moments is not None else None
        return export_model_dir(self.model, self.spec, load_model, self.tokenizer, out_dir, metadata, files)
