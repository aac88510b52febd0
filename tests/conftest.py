"""Shared fixtures: tiny real LLaMA models and an isolated tokenizer cache."""
from __future__ import annotations

import pytest
import torch

from lightning_align.models.spec import ModelSpec

TINY = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64)

# Hydra overrides that shrink the default pipeline to seconds.
TINY_OVERRIDES = [f"model.{k}={v}" for k, v in TINY.items()] + [
    "stages.pretrain.trainer.max_steps=30",
    "stages.pretrain.trainer.val_check_interval=15",
    "stages.pretrain.trainer.limit_val_batches=2",
    "stages.pretrain.data.init_args.block_size=32",
    "stages.evaluate.data.init_args.block_size=32",
    "stages.evaluate.trainer.limit_val_batches=2",
    "+trainer.enable_progress_bar=false",
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("LIGHTNING_ALIGN_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(1)  # tiny models gain little from a second thread and lose a lot when cores are shared
    yield
    mp.undo()


@pytest.fixture
def tiny_spec() -> ModelSpec:
    return ModelSpec(**TINY)
