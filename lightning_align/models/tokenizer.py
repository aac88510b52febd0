"""Byte-level BPE trained on the embedded corpus, so the default run needs no download."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lightning_align.data.corpus import load_texts

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>"}


def cache_dir() -> Path:
    """Where trained tokenizers are kept; override with LIGHTNING_ALIGN_CACHE."""
    return Path(os.environ.get("LIGHTNING_ALIGN_CACHE", Path.home() / ".cache" / "lightning_align"))


def train_bpe(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE; byte fallback means any text encodes, whatever the training corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def embedded_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """The tokenizer of the built-in corpus, trained once per vocab size and cached on disk."""
    texts = load_texts("embedded")
    digest = hashlib.sha256("".join(texts).encode()).hexdigest()[:12]
    target = cache_dir() / f"bpe-{vocab_size}-{digest}"
    if (target / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(target)
    tokenizer = train_bpe(texts, vocab_size)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process cached it first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer
