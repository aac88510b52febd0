"""Reward models: a causal-LM backbone with a scalar head read at the last non-pad token.

We use transformers' `*ForSequenceClassification` with one label, so a saved RM is a plain Hugging Face directory
that any tool loads; but we pool by the attention mask ourselves instead of by `pad_token_id`, because our
responses end with EOS and a tokenizer whose pad token is EOS would make transformers skip that last token.
"""
from __future__ import annotations

import torch
from torch import Tensor
from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification, PreTrainedModel
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lightning_align.models.loading import DTYPES, build_llama, _model_dir
from lightning_align.models.spec import ModelSpec


def load_reward_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """An RM from `spec.path` (an RM directory, or a causal LM whose backbone gets a fresh zero head), or built.

    The head starts at zero so every initial reward is 0 and the first BT gradient is symmetric in the pair.
    """
    if spec.path is None:
        config = build_llama(spec, tokenizer).config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = LlamaForSequenceClassification(config.__class__(**{**config.to_dict(), "num_labels": 1}))
        model = model.to(DTYPES[spec.dtype])
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a causal LM has no head yet and an unused lm_head: expected, not news
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                _model_dir(spec), num_labels=1, local_files_only=True, dtype=DTYPES[spec.dtype])
        finally:
            hf_logging.set_verbosity(verbosity)
        if model.config.architectures and model.config.architectures[0].endswith("ForSequenceClassification"):
            return model
    torch.nn.init.zeros_(model.score.weight)
    return model


def reward_scores(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Scalar reward per right-padded row, read at its last attended token: shape [B]."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(-1) - 1
    return model.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1).float()
