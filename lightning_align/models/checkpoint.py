"""Stage outputs as self-contained Hugging Face directories, written atomically.

A directory holds `save_pretrained` weights + config, the tokenizer, and `lightning_align.json` (our metadata). When
a model was shrunk in a way a plain config cannot express (e.g. one sublayer of a layer removed), the metadata has a
`"structure"` entry and `load_pretrained` replays that shrink on a freshly built model before loading the weights.
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lightning_align.models.blocks import SUPPORTED_MODEL_TYPES, block_structure, replay_removed_blocks
from lightning_align.models.mlp_width import resize_mlp_widths, width_structure

METADATA_FILE = "lightning_align.json"


def save_model_dir(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write to a temporary sibling, then rename: a crash never leaves a half-written directory behind."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        metadata = dict(metadata or {})
        structure = {**model_structure(model), **metadata.get("structure", {})}
        if structure:
            metadata["structure"] = structure
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
    return out_dir


@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling to fill; it replaces `out_dir` only when the block completes, and is removed otherwise."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """Our metadata of a model directory; empty for a plain Hugging Face directory."""
    path = Path(model_dir) / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# Each structural shrink a stage can record, keyed by its entry in metadata["structure"].
STRUCTURE_APPLIERS: dict[str, Callable[[PreTrainedModel, Any], None]] = {
    "removed_blocks": replay_removed_blocks,  # first: widths refer to the MLPs that remain
    "intermediate_sizes": resize_mlp_widths,
}


def model_structure(model: PreTrainedModel) -> dict[str, Any]:
    """What the saved config cannot say about this model's shape; derived from the model, never stored alongside."""
    blocks = block_structure(model) if getattr(model.config, "model_type", None) in SUPPORTED_MODEL_TYPES else {}
    return {**blocks, **width_structure(model)}


def apply_structure(model: PreTrainedModel, structure: dict[str, Any]) -> None:
    """Replay the recorded structural shrink on a model freshly built from the saved config."""
    unknown = set(structure) - set(STRUCTURE_APPLIERS)
    if unknown:
        raise ValueError(f"unknown structure entries {sorted(unknown)} in {METADATA_FILE}")
    for key, applier in STRUCTURE_APPLIERS.items():
        if key in structure:
            applier(model, structure[key])


def load_pretrained(model_dir: str | Path, **kwargs: Any) -> PreTrainedModel:
    """Load a model directory written by lightning_align (or any local Hugging Face causal LM), offline."""
    structure = read_metadata(model_dir).get("structure")
    if not structure:
        return AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, **kwargs)
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=kwargs.get("dtype"))
    apply_structure(model, structure)
    state = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"{model_dir}: weights do not match the recorded structure "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if tied:
        model.tie_weights()
    return model.eval()
