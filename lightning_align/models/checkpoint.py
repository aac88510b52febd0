"""Stage outputs as self-contained Hugging Face directories, written atomically.

A directory holds `save_pretrained` weights + config, the tokenizer, and `lightning_align.json` (our metadata). When
a model was shrunk in a way a plain config cannot express (e.g. one sublayer of a layer removed), the metadata has a
`"structure"` entry and `load_pretrained` replays that shrink on a freshly built model before loading the weights.

Plain `from_pretrained` would fill weights missing from such a directory with fresh random ones and only mention
it in its load report, so its `config.json` gets a `model_type` transformers does not know (`MARKED_MODEL_TYPE`, the
real one kept under `structure.model_type`): plain transformers refuses it with that text in the error. Blocks
removed with `export="dense_compatible"` are saved as zeroed sublayers instead (`models.dense_export`), which plain
transformers loads exactly; `load_pretrained` cuts them out again (`structure.zeroed_blocks`).
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from lightning_align import strict_json
from lightning_align.errors import DataError
from lightning_align.models.blocks import (
    SUPPORTED_MODEL_TYPES,
    block_structure,
    replay_removed_blocks,
    replay_zeroed_blocks,
)
from lightning_align.models.dense_export import zeroed_block_tensors
from lightning_align.models.mlp_width import resize_mlp_widths, width_structure

METADATA_FILE = "lightning_align.json"
IFPRUNING_KEY = "ifpruning"
MARKED_MODEL_TYPE = "{} with removed blocks or per-layer widths: load it with lightning_align.load_pretrained"


def save_model_dir(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
    files: dict[str, str | bytes] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write to a temporary sibling, then rename: a crash never leaves a half-written directory behind.

    `files` maps file names to what a stage hands on with its model: text (the reward model's held-out pairs) or
    bytes (the AdamW moments of `models.adam_moments`); `extra` writes whatever else belongs in the directory (e.g.
    an IFPruning predictor) into the temporary one.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        metadata = dict(metadata or {})
        structure = {**model_structure(model), **metadata.get("structure", {})}
        zeroed = zeroed_block_tensors(model) if "zeroed_blocks" in structure else {}
        model.save_pretrained(tmp, **({"state_dict": {**model.state_dict(), **zeroed}} if zeroed else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if set(structure) & set(STRUCTURE_APPLIERS):
            structure["model_type"] = _mark_config(tmp / "config.json")
        if structure:
            metadata["structure"] = structure
        (tmp / METADATA_FILE).write_text(strict_json.dumps(metadata, indent=2, sort_keys=True))
        for name, content in (files or {}).items():
            (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        if extra is not None:
            extra(tmp)
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


def _mark_config(config_file: Path) -> str:
    """Give `config_file` the model type plain transformers refuses; returns the real one."""
    config = json.loads(config_file.read_text())
    model_type = config["model_type"]
    config["model_type"] = MARKED_MODEL_TYPE.format(model_type)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))
    return model_type


def read_model_type(model_dir: str | Path) -> str | None:
    """The model family of a model directory, from `config.json` and our metadata alone (no weights read)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return read_metadata(model_dir).get("structure", {}).get("model_type", config.get("model_type"))


# Each structural shrink a stage can record, keyed by its entry in metadata["structure"], replayed before the
# weights load (in this order).
STRUCTURE_APPLIERS: dict[str, Callable[[PreTrainedModel, Any], None]] = {
    "removed_blocks": replay_removed_blocks,  # first: widths refer to the MLPs that remain
    "intermediate_sizes": resize_mlp_widths,
}
# Entries replayed after the weights load, and the real model type of a marked config.
AFTER_LOADING: dict[str, Callable[[PreTrainedModel, Any], None]] = {"zeroed_blocks": replay_zeroed_blocks}
KNOWN_STRUCTURE = {*STRUCTURE_APPLIERS, *AFTER_LOADING, "model_type"}


def model_structure(model: PreTrainedModel) -> dict[str, Any]:
    """What the saved config cannot say about this model's shape; derived from the model, never stored alongside."""
    if getattr(model.config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return {}
    return {**block_structure(model), **width_structure(model)}


def apply_structure(model: PreTrainedModel, structure: dict[str, Any]) -> None:
    """Replay the recorded structural shrink on a model freshly built from the saved config."""
    for key, applier in STRUCTURE_APPLIERS.items():
        if key in structure:
            applier(model, structure[key])


def load_pretrained(model_dir: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> PreTrainedModel:
    """Load a model directory written by lightning_align (or any local Hugging Face causal LM), offline. The
    directory's own Python code runs only with `trust_remote_code`; weights never go through pickle (safetensors,
    or transformers' `weights_only` loading of `.bin` files).

    An Instruction-Following Pruning directory (metadata `"ifpruning"`) comes back as the LLM with its sparsity
    predictor (`IFPruningLM`), so every caller generates with the per-prompt sub-network, never silently with the
    dense full model. The method's own file knows how to rebuild it; it is imported only for such a directory.
    """
    if IFPRUNING_KEY in read_metadata(model_dir):
        from lightning_align.algorithms.instruction_following_pruning import load_ifpruning

        return load_ifpruning(model_dir, trust_remote_code=trust_remote_code, **kwargs)
    return load_causal_lm(model_dir, trust_remote_code=trust_remote_code, **kwargs)


def load_causal_lm(model_dir: str | Path, trust_remote_code: bool = False, **kwargs: Any) -> PreTrainedModel:
    """The causal LM of a model directory, its recorded structure replayed (the weights alone, no predictor)."""
    structure = read_metadata(model_dir).get("structure") or {}
    unknown = set(structure) - KNOWN_STRUCTURE
    if unknown:
        raise DataError(Path(model_dir) / METADATA_FILE, f"unknown structure entries {sorted(unknown)} (known: "
                        f"{sorted(KNOWN_STRUCTURE)}); was the directory written by another version?")
    if set(structure) & set(STRUCTURE_APPLIERS):
        model = _load_reshaped(Path(model_dir), structure, kwargs.get("dtype"))
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True,
                                                     trust_remote_code=trust_remote_code, **kwargs)
    for key, applier in AFTER_LOADING.items():
        if key in structure:
            applier(model, structure[key])
    return model


def _load_reshaped(model_dir: Path, structure: dict[str, Any], dtype: Any) -> PreTrainedModel:
    """Build from the saved config (its real model type), replay the structure, then load the weights strictly."""
    from safetensors.torch import load_file

    values = json.loads((model_dir / "config.json").read_text())
    saved_type = values.pop("model_type")
    config = CONFIG_MAPPING[structure.get("model_type", saved_type)].from_dict(values)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    apply_structure(model, structure)
    state = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(shard))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise DataError(model_dir, "weights do not match the structure recorded in "
                        f"{METADATA_FILE} (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if tied:
        model.tie_weights()
    return model.eval()
