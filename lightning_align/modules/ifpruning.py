"""Joint training of an LLM and its sparsity predictor: the module behind the `ifprune` stage (IFPruning).

Each example's prompt (`prompt_mask`, from `InstructionTextMixDataModule`) goes through the predictor; SoftTopK turns
its logits into masks with exactly `active_width` neurons per FFN, fixed for the whole sequence; the masked LLM's
loss on the tokens after the prompt trains both (Hou et al. 2025, §3). Validation runs the hard masks inference
uses. Export writes the full model plus the predictor (`IFPruningLM.save_with_predictor`), which `lightning_align.load_pretrained`
turns back into a model that generates with the per-prompt sub-network.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt

from lightning_align.algorithms.instruction_following_pruning import (
    IFPruningLM, MaskHead, SparsityPredictor, ffn_masks, neuron_prior, soft_topk,
)
from lightning_align.algorithms.sampling import sequence_logprobs
from lightning_align.data.instruction_text_mix import InstructionTextMixDataModule
from lightning_align.errors import ConfigError
from lightning_align.models.loading import load_dir, load_model, load_tokenizer
from lightning_align.models.mlp_width import mlp_widths
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig, build_optimizer
from lightning_align.modules.plain_hparams import save_plain_hyperparameters

KEY = "model.init_args"
PRIOR_BATCHES = 4  # training batches the neuron prior is measured on


@dataclass(frozen=True)
class PredictorConfig:
    """Where the prompt representation comes from: `path`, a small causal LM directory with the LLM's vocabulary
    (trained jointly, saved with the model), or None for the LLM's own first `num_layers` decoder layers (no extra
    weights; the cheap default for the embedded model). `hidden` is the mask head's hidden width."""

    path: Optional[str] = None
    num_layers: PositiveInt = 1
    hidden: PositiveInt = 64


def active_width_of(width: int, active_width: Optional[int], active_ratio: Optional[float]) -> int:
    """The k of every layer: `active_width` neurons, or `active_ratio` of the model's own FFN width."""
    if (active_width is None) == (active_ratio is None):
        raise ConfigError(f"{KEY}.active_width", f"give exactly one of active_width and active_ratio, got "
                          f"{active_width} and {active_ratio}")
    if active_ratio is not None:
        if not 0 < active_ratio < 1:
            raise ConfigError(f"{KEY}.active_ratio", f"must be in (0, 1), got {active_ratio}")
        return max(1, round(active_ratio * width))
    if not 0 < active_width < width:
        raise ConfigError(f"{KEY}.active_width", f"must be in (0, {width}) (the model's FFN width), got {active_width}")
    return active_width


class IFPruningModule(L.LightningModule):
    """Logs `train/loss`, `val/loss` (hard masks) and `val/mask_overlap` (mean Jaccard of the masks of two
    different examples: 1.0 would mean the predictor ignores the prompt, i.e. static pruning)."""

    def __init__(self, model: ModelSpec = ModelSpec(), predictor: PredictorConfig = PredictorConfig(),
                 active_width: Optional[PositiveInt] = None, active_ratio: Optional[float] = None,
                 temperature: PositiveFloat = 1.0, optim: OptimConfig = OptimConfig()) -> None:
        super().__init__()
        save_plain_hyperparameters(self)
        if model.lora is not None or model.quantization is not None:
            raise ConfigError(f"{KEY}.model.lora", "IFPruning trains the full model with its predictor; drop lora "
                              "and quantization")
        self.spec, self.optim, self.temperature = model, optim, temperature
        self.tokenizer = load_tokenizer(model)
        llm = load_model(model, self.tokenizer)
        if isinstance(llm, IFPruningLM):
            raise ConfigError(f"{KEY}.model.path", f"'{model.path}' is already an IFPruning model; start from a "
                              "dense model")
        widths = set(mlp_widths(llm))
        if len(widths) != 1:
            raise ConfigError(f"{KEY}.model.path", f"IFPruning needs one FFN width in every layer, got {sorted(widths)}")
        width = widths.pop()
        k = active_width_of(width, active_width, active_ratio)
        backbone = self._load_backbone(predictor) if predictor.path is not None else None
        reader = llm if backbone is None else backbone
        if predictor.num_layers > reader.config.num_hidden_layers:
            raise ConfigError(f"{KEY}.predictor.num_layers", f"the predictor reads {reader.config.num_hidden_layers} "
                              f"layers at most, got {predictor.num_layers}")
        head = MaskHead(reader.config.hidden_size, predictor.hidden, len(mlp_widths(llm)), width)
        self.register_buffer("prior_ready", torch.tensor(False))  # saved in checkpoints: a resume keeps its head
        self.model = IFPruningLM(llm.train(), SparsityPredictor(head, predictor.num_layers, backbone), k,
                                 prompt_tokens=0)

    def _load_backbone(self, predictor: PredictorConfig) -> torch.nn.Module:
        spec = ModelSpec(path=predictor.path)
        try:
            same_vocabulary = load_tokenizer(spec).get_vocab() == self.tokenizer.get_vocab()
        except ConfigError as err:
            raise ConfigError(f"{KEY}.predictor.path", err.problem) from None
        if not same_vocabulary:
            raise ConfigError(f"{KEY}.predictor.path", f"'{predictor.path}' has another vocabulary than the model; "
                              "the predictor reads the model's token ids")
        return load_dir(Path(predictor.path), self.spec.dtype).train()

    def setup(self, stage: str) -> None:
        """Plain text's prompt length is the datamodule's; the exported model uses it for language modelling."""
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, InstructionTextMixDataModule):
            raise ConfigError("data.class_path", f"IFPruning reads each example's prompt apart from its answer: use "
                              f"InstructionTextMixDataModule, not {type(datamodule).__name__}")
        self.model.prompt_tokens = datamodule.prompt_tokens

    def on_fit_start(self) -> None:
        self._start_at_prior()

    def on_validation_start(self) -> None:
        self._start_at_prior()  # validation before training measures the starting point training really has

    def _start_at_prior(self) -> None:
        """Start the mask head's bias at the activation prior of the first training batches (once per model)."""
        if bool(self.prior_ready):
            return
        batches = itertools.islice(self.trainer.datamodule.train_dataloader(), PRIOR_BATCHES)
        prior = neuron_prior(self.model.llm, ((b["input_ids"].to(self.device), b["attention_mask"].to(self.device))
                                              for b in batches))
        with torch.no_grad():
            self.model.predictor.head.net[2].bias.copy_(prior.flatten())
        self.prior_ready.fill_(True)

    def _masks(self, batch: dict[str, torch.Tensor], hard: bool) -> torch.Tensor:
        length = int(batch["prompt_mask"].sum(1).max())
        ids, mask = batch["input_ids"][:, :length], batch["prompt_mask"][:, :length].long()
        if hard:
            return self.model.select(ids, mask).float()
        return soft_topk(self.model.predictor(self.model.llm, ids, mask), self.model.active_width, self.temperature)

    def _loss(self, batch: dict[str, torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        with ffn_masks(self.model.llm, masks):
            logps = sequence_logprobs(self.model.llm, batch["input_ids"], batch["attention_mask"],
                                      batch["response_mask"])
        return -logps.sum() / batch["response_mask"][:, 1:].sum()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, self._masks(batch, hard=False))
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        masks = self._masks(batch, hard=True)
        size = batch["input_ids"].shape[0]
        self.log("val/loss", self._loss(batch, masks), prog_bar=True, batch_size=size)
        if size > 1:
            shared = (masks * masks.roll(1, 0)).sum(-1)
            self.log("val/mask_overlap", (shared / (2 * self.model.active_width - shared)).mean(), batch_size=size)

    def configure_optimizers(self) -> dict:
        return build_optimizer(self.model.named_parameters(), self.optim, int(self.trainer.estimated_stepping_batches))

    def export(self, out_dir: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        return self.model.save_with_predictor(out_dir, self.tokenizer, metadata)
