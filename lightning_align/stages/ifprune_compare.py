"""The `ifprune_compare` stage: IFPruning vs static width pruning vs a dense model of the active width.

Config (`conf/pipeline/ifpruning_compare.yaml` fills it from its stages): the three model directories, optionally a
full-width reference, the number of held-out prompts per task and the decoding/latency settings. The stage checks
that the baselines really are of the IFPruning model's active width (a comparison at unequal sizes would report a
wrong verdict with exit 0), then writes `report.md` (the table) and passes no model on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from jsonargparse.typing import PositiveInt

from lightning_align.algorithms.instruction_following_pruning import IFPruningLM
from lightning_align.algorithms.sampling import SamplingConfig
from lightning_align.config import keys_under, validate_dataclass
from lightning_align.errors import ConfigError
from lightning_align.eval.ifpruning_compare import (
    latency, overlaps, prompt_masks, response_nll, task_records, task_scores,
)
from lightning_align.models.checkpoint import atomic_dir
from lightning_align.models.loading import load_model, load_tokenizer
from lightning_align.models.mlp_width import mlp_widths
from lightning_align.models.spec import ModelSpec
from lightning_align.stages.context import StageContext


@dataclass(frozen=True)
class CompareConfig:
    """`ifpruning`: an ifprune stage's output; `static`, `dense`: models whose FFNs have its active width;
    `full`: optional full-width reference. `num_prompts` held-out prompts per task, answered greedily with up to
    `max_new_tokens` tokens, and the NLL of their reference answers (prompt + answer cut to `max_length`); latency: `latency_new_tokens` decoded tokens, median of `latency_repeats`, on
    `latency_threads` CPU threads."""

    ifpruning: str
    static: str
    dense: str
    full: Optional[str] = None
    num_prompts: PositiveInt = 64
    max_new_tokens: PositiveInt = 12
    max_length: PositiveInt = 48
    batch_size: PositiveInt = 32
    latency_new_tokens: PositiveInt = 32
    latency_repeats: PositiveInt = 5
    latency_threads: Optional[PositiveInt] = 1
    seed: int = 0


def parse_config(config: dict[str, Any], where: str) -> CompareConfig:
    cfg = validate_dataclass(CompareConfig, config, where)
    if cfg.num_prompts < 2:
        raise ConfigError(f"{where}.num_prompts", f"the overlap within a task needs at least 2 prompts, got "
                          f"{cfg.num_prompts}")
    return cfg


def check(config: dict[str, Any], where: str) -> None:
    parse_config(config, where)


def _load(path: str, key: str) -> Any:
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(key, f"'{path}' is not a model directory (no config.json)")
    return load_model(ModelSpec(path=path)).eval()


@dataclass
class Comparison:
    """Scores per model label (ifpruning, static, dense[, full]) and task, mask overlaps, latency, and k."""

    scores: dict[str, dict[str, float]]
    overlap: dict[str, float]
    timing: dict[str, float]
    active_width: int


def compare(cfg: CompareConfig) -> Comparison:
    models = {label: _load(path, label) for label, path in
              (("ifpruning", cfg.ifpruning), ("static", cfg.static), ("dense", cfg.dense), ("full", cfg.full))
              if path is not None}
    ifp = models["ifpruning"]
    if not isinstance(ifp, IFPruningLM):
        raise ConfigError("ifpruning", f"'{cfg.ifpruning}' is not an IFPruning model (an ifprune stage's output)")
    for label in ("static", "dense"):
        widths = set(mlp_widths(models[label]))
        if widths != {ifp.active_width}:
            raise ConfigError(label, f"'{getattr(cfg, label)}' has FFN widths {sorted(widths)}, not the IFPruning "
                              f"model's active width {ifp.active_width}: the comparison must be at equal width")
    tokenizer = load_tokenizer(ModelSpec(path=cfg.ifpruning))
    records = task_records(cfg.num_prompts, cfg.seed)
    prompts = {task: [r["prompt"] for r in task_list] for task, task_list in records.items()}
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
    scores = {}
    for label, model in models.items():
        scores[label] = task_scores(model, tokenizer, prompts, sampling)
        scores[label].update({f"{task} NLL": response_nll(model, tokenizer, task_list, cfg.max_length, cfg.batch_size)
                              for task, task_list in records.items()})
    overlap = overlaps({task: prompt_masks(ifp, tokenizer, task_list) for task, task_list in prompts.items()})
    timing = latency(ifp, models["dense"], tokenizer, prompts["prose"][0], cfg.latency_new_tokens,
                     cfg.latency_repeats, cfg.latency_threads)
    return Comparison(scores, overlap, timing, ifp.active_width)


LABELS = {"ifpruning": "IFPruning (per-prompt k)", "static": "static width pruning (k)",
          "dense": "dense model of width k", "full": "full width (reference)"}


def report(cfg: CompareConfig, result: Comparison) -> str:
    scores, overlap, timing, active_width = result.scores, result.overlap, result.timing, result.active_width
    tasks = list(next(iter(scores.values())))
    rows = "\n".join(f"| {LABELS[label]} | " + " | ".join(f"{values[t]:.3f}" for t in tasks) + " |"
                     for label, values in scores.items())
    overlap_rows = "\n".join(f"| {pair} | {value:.3f} |" for pair, value in overlap.items())
    timing_rows = "\n".join(f"| {key} | {value:.3f} |" for key, value in timing.items())
    return (f"Active FFN width k = {active_width} per layer; {cfg.num_prompts} held-out prompts per task: score of "
            f"greedy answers (up to {cfg.max_new_tokens} new tokens; higher is better) and NLL per token of the "
            f"reference answers (lower is better).\n\n| model | " + " | ".join(tasks) + " |\n|---|"
            + "---|" * len(tasks) + f"\n{rows}\n\nNeuron-set overlap of IFPruning's masks (Jaccard, mean over "
            f"layers and prompt pairs):\n\n| tasks | Jaccard |\n|---|---|\n{overlap_rows}\n\nDecoding latency "
            f"({cfg.latency_new_tokens} tokens, median of {cfg.latency_repeats}, {cfg.latency_threads} thread(s)):"
            f"\n\n| measure | ms |\n|---|---|\n{timing_rows}\n")


def run(ctx: StageContext) -> dict[str, float]:
    where = f"stages.{ctx.name}"
    cfg = parse_config(ctx.config, where)
    with keys_under(where), torch.no_grad():
        result = compare(cfg)
    with atomic_dir(ctx.output_dir) as tmp:
        (tmp / "report.md").write_text(report(cfg, result))
    metrics = {f"compare/{label}/{task}": value for label, values in result.scores.items()
               for task, value in values.items()}
    metrics.update({f"compare/overlap/{pair}": value for pair, value in result.overlap.items()})
    metrics.update({f"compare/latency/{key}": value for key, value in result.timing.items()})
    return metrics
