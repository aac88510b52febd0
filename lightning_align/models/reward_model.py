"""Reward models: a causal-LM backbone with a scalar head read at the last non-pad token.

We use transformers' `*ForSequenceClassification` with one label, so a saved RM is a plain Hugging Face directory
that any tool loads; but we pool by the attention mask ourselves instead of by `pad_token_id`, because our
responses end with EOS and a tokenizer whose pad token is EOS would make transformers skip that last token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from peft import PeftModel
from torch import Tensor
from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification, PreTrainedModel
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lightning_align.models.loading import DTYPES, build_llama, quantization_config, remote_code_refused, _model_dir
from lightning_align.models.spec import ModelSpec, Quantization


def load_reward_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """An RM from `spec.path` (an RM directory, or a causal LM whose backbone gets a fresh zero head), or built.

    The head starts at zero so every initial reward is 0 and the first BT gradient is symmetric in the pair.
    """
    if spec.path is not None:
        return _from_dir(_model_dir(spec), spec.dtype, spec.quantization, "model.quantization",
                         spec.trust_remote_code)
    config = build_llama(spec, tokenizer).config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = LlamaForSequenceClassification(config.__class__(**{**config.to_dict(), "num_labels": 1}))
    torch.nn.init.zeros_(model.score.weight)
    return model.to(DTYPES[spec.dtype])


def load_frozen_reward_model(model_dir: str | Path, quantization: Optional[Quantization], key: str
                             ) -> PreTrainedModel:
    """An RM used only for scoring: eval mode, no gradients, quantized when asked (`key` names that option)."""
    return _from_dir(Path(model_dir), "float32", quantization, key).eval().requires_grad_(False)


def _from_dir(model_dir: Path, dtype: str, quantization: Optional[Quantization], key: str,
              trust_remote_code: bool = False) -> PreTrainedModel:
    quant = quantization_config(quantization, dtype, model_dir, key)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a causal LM has no head yet and an unused lm_head: expected, not news
    try:
        with remote_code_refused(model_dir):
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, num_labels=1, local_files_only=True, dtype=DTYPES[dtype],
                trust_remote_code=trust_remote_code, **({} if quant is None else {"quantization_config": quant}))
    finally:
        hf_logging.set_verbosity(verbosity)
    if not (model.config.architectures and model.config.architectures[0].endswith("ForSequenceClassification")):
        torch.nn.init.zeros_(model.score.weight)
    return model


def reward_scores(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Scalar reward per right-padded row, read at its last attended token: shape [B]."""
    if isinstance(model, PeftModel):  # adapters are injected in place: the wrapped model runs them
        model = model.get_base_model()
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    last = attention_mask.sum(-1) - 1
    return model.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1).float()
