"""The ``prune`` stage: training-free block pruning of a saved model, with baselines and a report.

Runs inside a pipeline (``pipeline.stages.<name>: prune``, config ``conf/stages/prune.yaml``; the model is the
previous stage's output unless ``model`` is set) and alone (``lightning-align prune``). Everything a user can get
wrong (ranges, unknown method, missing files, a family without a block view, more blocks than the model has) is
refused before the model is loaded.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch
from jsonargparse.typing import NonNegativeFloat, OpenUnitInterval, PositiveInt
from transformers import AutoTokenizer

from lightning_align.algorithms.block_pruner import (
    DEFAULT_CACHE_MB,
    BlockRunner,
    SearchCheckpoint,
    SearchResult,
    StopRule,
    block_pruner,
)
from lightning_align.algorithms.layer_pruning import block_influence, layer_ppl
from lightning_align.config import keys_under, validate_dataclass
from lightning_align.data.calibration import CALIBRATION_SUFFIXES, calibration_sets, is_token_ids
from lightning_align.data.corpus import EMBEDDED
from lightning_align.data.loaders import check_source
from lightning_align.errors import ConfigError
from lightning_align.eval.latency import forward_latency_ms
from lightning_align.eval.prune_report import Footprint, MethodRun, write_prune_report
from lightning_align.models.blocks import Export, block_structure, check_model_type, count_parameters, remove_blocks
from lightning_align.models.checkpoint import (
    METADATA_FILE,
    load_pretrained,
    read_metadata,
    read_model_type,
    save_model_dir,
)
from lightning_align.models.loading import DTYPES, remote_code_refused
from lightning_align.stages.context import StageContext

METHODS = {"blockpruner": block_pruner, "layer-ppl": layer_ppl, "block-influence": block_influence}
GREEDY = ("blockpruner", "layer-ppl")  # searches that checkpoint every step and keep streams across steps
SEARCH_STATE = "search_state"  # under the output directory while a search runs; the final save replaces the directory


@dataclass(frozen=True)
class PruneConfig:
    """One pruning run. Give exactly one stop rule: ``target_ratio`` (share of all parameters) or ``num_blocks``.

    ``calibration`` is "embedded", a .txt file, a data file with a ``text`` column or a ``.npy`` file of token ids
    (1-D integers, one stream; used whole, so ``val_fraction`` must be None). With ``val_fraction`` set only
    the held-out documents of that corpus are used, split exactly as the training data (same ``val_fraction`` and
    ``seed``); ``None`` uses the whole file. ``num_sequences`` blocks of ``block_size`` tokens go to the search and
    ``eval_sequences`` other blocks measure held-out perplexity (``None``: as many as ``num_sequences``, so results from
    before the two were separate stay the same).
    ``device`` and ``dtype`` say where and in what precision the model is loaded, searched, timed and saved; the
    perplexities are computed in fp32 whatever ``dtype`` is. A CUDA device that is not there is refused up front.
    ``latency_threads`` pins torch's CPU threads while timing (None: leave torch's setting).
    ``compare`` also runs the two other methods for the report, each stopping once it has removed at least the
    parameter share the chosen method removed (whole layers may overshoot: that is the cost of coarser units).
    ``search_cache_mb`` bounds the hidden states the greedy searches keep across steps (0: none; the picks are the
    same at any value, only the work changes). The greedy searches save their steps under ``output_dir`` after every
    step; running the same command again after an interruption resumes from there.
    ``export`` says how blocks removed from a layer that stays are saved: ``compact`` (absent; only
    ``lightning_align.load_pretrained`` loads the directory) or ``dense_compatible`` (zeroed sublayers that plain
    transformers loads exactly; no smaller on disk for those blocks).
    """

    model: Optional[str] = None
    method: Literal["blockpruner", "layer-ppl", "block-influence"] = "blockpruner"
    target_ratio: Optional[float] = None
    num_blocks: Optional[int] = None
    calibration: str = EMBEDDED
    num_sequences: PositiveInt = 32
    eval_sequences: Optional[PositiveInt] = None
    block_size: PositiveInt = 128
    batch_size: PositiveInt = 8
    val_fraction: Optional[OpenUnitInterval] = 0.1
    seed: int = 0
    compare: bool = True
    latency_repeats: PositiveInt = 10
    latency_threads: Optional[PositiveInt] = 1
    search_cache_mb: NonNegativeFloat = DEFAULT_CACHE_MB
    export: Export = "compact"
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @property
    def stop(self) -> StopRule:
        return StopRule(self.num_blocks, self.target_ratio)


def parse_config(values: dict[str, Any], where: str) -> PruneConfig:
    """Typed config with every check that needs no model; ``where`` prefixes the keys in error messages."""
    cfg = validate_dataclass(PruneConfig, values, where)
    with keys_under(where):
        if (cfg.num_blocks is None) == (cfg.target_ratio is None):
            raise ConfigError("target_ratio", "give exactly one of target_ratio and num_blocks")
        if cfg.target_ratio is not None and not 0 < cfg.target_ratio < 1:
            raise ConfigError("target_ratio", f"must be in (0, 1), got {cfg.target_ratio}")
        if cfg.num_blocks is not None and cfg.num_blocks < 1:
            raise ConfigError("num_blocks", f"must be at least 1, got {cfg.num_blocks}")
        check_source(cfg.calibration, EMBEDDED, "calibration", CALIBRATION_SUFFIXES)
        if is_token_ids(cfg.calibration) and cfg.val_fraction is not None:
            raise ConfigError("val_fraction", "a token-id file has no documents to hold out: set it to null")
        check_device(cfg.device)
        if cfg.model is not None:
            check_model_dir(Path(cfg.model), cfg)
    return cfg


def check_device(device: str) -> None:
    """A device torch can name and this machine has, so a typo or a missing GPU fails before the model loads."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ConfigError("device", f"expected cpu, cuda or cuda:<index>, got '{device}'")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("device", f"'{device}' asked for, but torch sees no CUDA device here")
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError("device", f"'{device}' asked for, but torch sees only {count} CUDA device(s)")


def check_model_dir(model_dir: Path, cfg: PruneConfig) -> None:
    """Family and block count from ``config.json`` alone, so a bad model fails before its weights are read."""
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise ConfigError("model", f"'{model_dir}' is not a Hugging Face model directory (no config.json)")
    check_model_type(read_model_type(model_dir))
    structure = read_metadata(model_dir).get("structure", {})
    recorded = len(structure.get("removed_blocks", [])) + len(structure.get("zeroed_blocks", []))
    blocks = 2 * int(json.loads(config_file.read_text())["num_hidden_layers"]) - recorded
    if cfg.num_blocks is not None and cfg.num_blocks >= blocks:
        raise ConfigError("num_blocks", f"must be less than the model's {blocks} blocks, got {cfg.num_blocks}")


def check(config: dict[str, Any], where: str) -> None:
    parse_config(config, where)


def run(ctx: StageContext) -> dict[str, float]:
    where = f"stages.{ctx.name}"
    cfg = parse_config(ctx.config, where)
    model_dir = Path(cfg.model) if cfg.model is not None else ctx.input_dir
    if model_dir is None:
        problem = "no model to prune: set it, or put this stage after one that writes a model"
        raise ConfigError(f"{where}.model", problem)
    with keys_under(where):
        check_model_dir(model_dir, cfg)
    return prune(cfg, model_dir, ctx.output_dir, ctx.name, where)


def run_prune_command(values: dict[str, Any], output_dir: Path) -> str:
    """``lightning-align prune``: validate, prune, and return a short summary for the terminal."""
    cfg = parse_config(values, "prune")
    metrics = prune(cfg, Path(cfg.model), output_dir)
    share = 100 * metrics["prune/removed_fraction"]
    return (
        f"removed {int(metrics['prune/blocks_removed'])} blocks ({share:.1f}% of parameters); "
        f"held-out ppl {metrics['prune/ppl_dense']:.3f} -> {metrics['prune/ppl_pruned']:.3f}\n"
        f"pruned model and report: {output_dir / 'report.md'}"
    )


def heldout_curve(runner: BlockRunner, result: SearchResult) -> list[float]:
    """Evaluation perplexity of the dense model and after each step of ``result``."""
    removed: set = set()
    curve = [runner.perplexity(removed)]
    for step in result.steps:
        removed |= set(step.removed)
        curve.append(runner.perplexity(removed))
    return curve


def search_checkpoint(cfg: PruneConfig, method: str, model_dir: Path, output_dir: Path) -> SearchCheckpoint:
    """Where ``method``'s steps are saved, and what must match for them to be replayed (the dense calibration
    perplexity is checked too, so another model or calibration set never resumes from them)."""
    fields = ("calibration", "num_sequences", "block_size", "val_fraction", "seed", "batch_size", "dtype", "device")
    identity = {"method": method, "model": str(model_dir.resolve()), **{key: getattr(cfg, key) for key in fields}}
    return SearchCheckpoint(output_dir / SEARCH_STATE / f"{method}.json", identity)


def prune(
    cfg: PruneConfig, model_dir: Path, output_dir: Path, name: str = "prune", where: str = "prune"
) -> dict[str, float]:
    """Search, compare, cut, measure and save: ``output_dir`` gets the pruned model, ``report.md`` and a PNG."""
    if not (model_dir / "tokenizer.json").is_file() and not (model_dir / "tokenizer_config.json").is_file():
        raise ConfigError(f"{where}.model", f"'{model_dir}' has no tokenizer to encode calibration text")
    with remote_code_refused(model_dir, f"{where}.model", can_trust=False):
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        model = load_pretrained(model_dir, dtype=DTYPES[cfg.dtype]).to(cfg.device).eval()
    with keys_under(where):
        cfg.stop.validate(model)
    calibration, evaluation = calibration_sets(
        tokenizer, cfg.calibration, cfg.block_size, cfg.num_sequences, cfg.eval_sequences or cfg.num_sequences,
        cfg.val_fraction, cfg.seed,
    )
    names = [cfg.method] + ([m for m in METHODS if m != cfg.method] if cfg.compare else [])
    evaluator = BlockRunner(model, evaluation, cfg.batch_size)
    runs = {}
    for method in names:
        stop = cfg.stop if not runs else StopRule(target_ratio=runs[cfg.method].result.steps[-1].removed_fraction)
        greedy = {"cache_mb": cfg.search_cache_mb, "checkpoint": search_checkpoint(cfg, method, model_dir, output_dir)}
        result = METHODS[method](model, calibration, stop, batch_size=cfg.batch_size, **(greedy if method in GREEDY else {}))
        runs[method] = MethodRun(result, heldout_curve(evaluator, result))
    chosen = runs[cfg.method].result
    pruned = remove_blocks(copy.deepcopy(model), chosen.order, cfg.export)
    latency = forward_latency_ms(
        [model, pruned], evaluation[: cfg.batch_size], repeats=cfg.latency_repeats, threads=cfg.latency_threads
    )
    dense = Footprint(count_parameters(model), latency[0], runs[cfg.method].heldout_ppl[0])
    pruned_ppl = BlockRunner(pruned, evaluation, cfg.batch_size).perplexity(set())
    small = Footprint(count_parameters(pruned), latency[1], pruned_ppl)
    metrics = {
        "prune/ppl_dense": dense.heldout_ppl,
        "prune/ppl_pruned": small.heldout_ppl,
        "prune/params_dense": float(dense.params),
        "prune/params_pruned": float(small.params),
        "prune/removed_fraction": chosen.steps[-1].removed_fraction,
        "prune/blocks_removed": float(len(chosen.order)),
        "prune/latency_ms_dense": dense.latency_ms,
        "prune/latency_ms_pruned": small.latency_ms,
        "prune/block_forwards": float(chosen.block_forwards),
        "prune/block_forwards_naive": float(chosen.naive_block_forwards),
        "prune/block_forwards_official": float(chosen.official_block_forwards),
        **{f"prune/ppl_{m}": run_.heldout_ppl[-1] for m, run_ in runs.items()},
    }
    metadata = {
        "stage": name,
        "source": str(model_dir),
        "structure": block_structure(pruned),
        "pruning": {"config": asdict(cfg), "results": {m: r.result.to_json() for m, r in runs.items()}},
        "metrics": metrics,
    }
    save_model_dir(pruned, tokenizer, output_dir, metadata)
    stop_text = f"target_ratio={cfg.target_ratio}" if cfg.target_ratio is not None else f"num_blocks={cfg.num_blocks}"
    setup = (
        f"Model `{model_dir}` ({dense.params:,} parameters). Calibration: {calibration.size(0)} blocks of "
        f"{cfg.block_size} tokens from `{cfg.calibration}`; evaluation: {evaluation.size(0)} other held-out blocks. "
        f"Stop rule: {stop_text}. "
        f"Latency: median of {cfg.latency_repeats} forwards of a {min(cfg.batch_size, evaluation.size(0))}x"
        f"{cfg.block_size} batch in {cfg.dtype} on {next(model.parameters()).device} "
        f"({cfg.latency_threads or torch.get_num_threads()} intra-op threads). Saved model: `{METADATA_FILE}` records "
        f"{'partial-layer removals' if block_structure(pruned) else 'no structure (plain config with fewer layers)'}."
    )
    write_prune_report(output_dir, cfg.method, runs, dense, small, setup)
    return metrics
