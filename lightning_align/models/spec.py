"""What model a stage starts from: a local Hugging Face directory, or a tiny LLaMA built from sizes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from jsonargparse.typing import PositiveInt


@dataclass(frozen=True)
class ModelSpec:
    """A model to load (`path`) or to build (the size fields, used only when `path` is None).

    The built model is a LLaMA-architecture `LlamaForCausalLM`; its tokenizer is a byte-level BPE trained on the
    embedded corpus with `vocab_size` entries, so the size fields fully determine a reproducible model.
    """

    path: Optional[str] = None
    vocab_size: PositiveInt = 2048
    hidden_size: PositiveInt = 128
    intermediate_size: PositiveInt = 344
    num_hidden_layers: PositiveInt = 4
    num_attention_heads: PositiveInt = 4
    num_key_value_heads: PositiveInt = 4
    max_position_embeddings: PositiveInt = 256
    tie_word_embeddings: bool = False
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    quantization: Optional[Literal["8bit", "4bit"]] = None
    chat_template: bool = True
    """Encode prompts through the tokenizer's chat template (if it has one). False drops the template, e.g. to train
    an instruct model on raw text; the saved tokenizer then has none either, so later stages follow."""
