"""Shared fixtures: tiny real LLaMA models and an isolated tokenizer cache."""
from __future__ import annotations

import json

import pytest
import torch

from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.loading import build_llama
from lightning_align.models.spec import ModelSpec
from lightning_align.models.tokenizer import train_bpe

TINY = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64)

# Hydra overrides that shrink the `align` pipeline's pretrain and evaluate stages to seconds.
TINY_OVERRIDES = [f"model.{k}={v}" for k, v in TINY.items()] + [
    "stages.pretrain.trainer.max_steps=30",
    "stages.pretrain.trainer.val_check_interval=15",
    "stages.pretrain.trainer.limit_val_batches=2",
    "stages.pretrain.data.init_args.block_size=32",
    "stages.evaluate.data.init_args.block_size=32",
    "stages.evaluate.trainer.limit_val_batches=2",
    "+trainer.enable_progress_bar=false",
]

# The alignment pipeline without its alignment stages (they have their own end-to-end test,
# test_mutual_taught_pipeline.py), leaving pretrain → evaluate.
PRETRAIN_EVALUATE = ["pipeline=align", "~pipeline.stages.sft", "~pipeline.stages.reward", "~pipeline.stages.mutual_taught"]


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


# Preference tests: a tiny tokenizer trained on a few sentences, and pairs separable by tokens alone
# (chosen responses are plain words, rejected ones carry digits and symbols).
TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "a class defines attributes and methods for its instances",
    "the for statement iterates over the items of a sequence",
    "Exceptions are raised by the raise statement: raise ValueError(x)",
    "numbers like 3.14 and 42 are literals; names like my_var are identifiers",
] * 4

PAIRS = [{"prompt": p, "chosen": c, "rejected": r}
         for p in ("the quick", "a class", "the for")
         for c, r in ((" brown fox jumps", " 3.14 42 my_var"), (" over the lazy dog", " ValueError(x) 42"),
                      (" defines attributes", " raise 3.14:"), (" iterates over items", " my_var(42)"))]


def write_pairs(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe(TEXTS, 300)


@pytest.fixture
def tiny_lm(tokenizer):
    return build_llama(ModelSpec(**TINY), tokenizer).eval()


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory, tokenizer):
    """A tiny causal LM saved as a model directory, as a previous stage would hand it on."""
    return save_model_dir(build_llama(ModelSpec(**TINY), tokenizer), tokenizer,
                          tmp_path_factory.mktemp("lm") / "model")
