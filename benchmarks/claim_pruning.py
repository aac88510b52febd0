"""Claim: BlockPruner beats whole-layer perplexity and Block Influence at equal removed parameters.

The budgets are the parameter share of one, two and three whole layers, so the whole-layer methods can meet them
exactly and BlockPruner gets no extra room. Each method's held-out perplexity is read at its last step within the
budget. The held-out documents of the training split are cut into blocks once; every seed reshuffles those blocks and
takes disjoint calibration and evaluation sets from them, so the search never sees the text that judges it and the
model never trained on either. In quick mode every seed also trains the tiny model from its own seed; the full-size
model takes minutes to train, so full mode trains it once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from benchmarks.reproduce_types import ClaimResult, Scale
from lightning_align.algorithms.block_pruner import BlockRunner, StopRule, block_pruner
from lightning_align.algorithms.layer_pruning import block_influence, layer_ppl
from lightning_align.data.calibration import calibration_sets
from lightning_align.eval.prune_report import MethodRun, budget_step
from lightning_align.models.blocks import Block, block_parameters, count_parameters
from lightning_align.models.checkpoint import load_pretrained
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose
from lightning_align.stages.prune import heldout_curve

CONF = Path(__file__).resolve().parents[1] / "conf"
METHODS = {"blockpruner": block_pruner, "layer-ppl": layer_ppl, "block-influence": block_influence}
BUDGET_LAYERS = (1, 2, 3)


@dataclass(frozen=True)
class Sizes:
    """The embedded model's shape and training steps, and the calibration/evaluation blocks of every seed."""

    layers: int
    overrides: tuple[str, ...]
    steps: int
    block_size: int
    calibration: int
    evaluation: int
    model_per_seed: bool  # train the model from each seed (else once, from seed 0: the full model takes minutes)


QUICK = Sizes(layers=4, steps=20, block_size=32, calibration=4, evaluation=8, model_per_seed=True,
              overrides=("model.vocab_size=300", "model.hidden_size=32", "model.intermediate_size=64",
                         "model.num_attention_heads=2", "model.num_key_value_heads=2",
                         "model.max_position_embeddings=64", "stages.pretrain.data.init_args.block_size=32",
                         "stages.pretrain.trainer.limit_val_batches=1",
                         "stages.pretrain.trainer.val_check_interval=10"))
FULL = Sizes(layers=8, steps=300, block_size=128, calibration=32, evaluation=32, model_per_seed=False, overrides=())
REAL = Sizes(layers=0, steps=0, block_size=128, calibration=8, evaluation=32, model_per_seed=False, overrides=())


def train_embedded(out: Path, sizes: Sizes, seed: int) -> Path:
    """The embedded model pretrained by the pipeline (kept under ``out``: a rerun reuses it); its directory."""
    args = ["pipeline=pretrain_prune", "~pipeline.stages.prune", "~pipeline.stages.evaluate", f"run.dir={out}",
            f"run.name=model_seed{seed}", f"model.seed={seed}", f"run.seed={seed}",
            "+trainer.enable_progress_bar=false",
            f"model.num_hidden_layers={sizes.layers}", f"stages.pretrain.trainer.max_steps={sizes.steps}",
            *sizes.overrides]
    trainer = MultiStageTrainer(compose(CONF, "config", args))
    trainer.run()
    return trainer.run_dir / "pretrain"


def heldout_blocks(model_dir: Path, sizes: Sizes, held_out_only: bool) -> torch.Tensor:
    """Every block of the corpus the model did not train on (the training split's held-out documents), or of the
    whole corpus for a model trained elsewhere."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    many = 10**6
    calibration, evaluation = calibration_sets(tokenizer, "embedded", sizes.block_size, many, many,
                                               0.1 if held_out_only else None, 0)
    return torch.cat([calibration, evaluation])


def split(blocks: torch.Tensor, sizes: Sizes, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint calibration and evaluation blocks, drawn by ``seed``."""
    if blocks.size(0) < sizes.calibration + sizes.evaluation:
        raise SystemExit(f"only {blocks.size(0)} held-out blocks of {sizes.block_size} tokens; "
                         f"{sizes.calibration + sizes.evaluation} needed")
    order = torch.randperm(blocks.size(0), generator=torch.Generator().manual_seed(seed))
    cut = sizes.calibration
    return blocks[order[:cut]], blocks[order[cut:cut + sizes.evaluation]]


def layer_share(model: torch.nn.Module) -> float:
    """Parameter share of one whole layer (all layers of these models have the same size)."""
    sizes = block_parameters(model)
    return (sizes[Block(0, "attn")] + sizes[Block(0, "mlp")]) / count_parameters(model)


def run_methods(model: torch.nn.Module, calibration: torch.Tensor, evaluation: torch.Tensor,
                seconds: dict[str, float]) -> dict[str, MethodRun]:
    stop = StopRule(target_ratio=max(BUDGET_LAYERS) * layer_share(model) - 1e-9)
    evaluator = BlockRunner(model, evaluation, batch_size=8)
    runs = {}
    for name, method in METHODS.items():
        start = time.perf_counter()
        result = method(model, calibration, stop, batch_size=8, progress=False)
        runs[name] = MethodRun(result, heldout_curve(evaluator, result))
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
    return runs


def arm(method: str, layers: int, share: float) -> str:
    return f"{method} @ {100 * layers * share:.1f}%"


def run(scale: Scale) -> ClaimResult:
    real = scale.model is not None
    sizes = REAL if real else QUICK if scale.quick else FULL
    values: dict[str, list[float]] = {}
    fits: dict[str, list[float]] = {}  # calibration perplexity at the same steps
    seconds: dict[str, float] = {}
    blocks = heldout_blocks(scale.model, sizes, held_out_only=False) if real else None
    model = load_pretrained(scale.model, dtype=torch.float32).eval() if real else None
    for seed in range(scale.seeds):
        if not real and (sizes.model_per_seed or seed == 0):
            start = time.perf_counter()
            model_dir = train_embedded(scale.out / "pruning", sizes, seed if sizes.model_per_seed else 0)
            seconds["train the model"] = seconds.get("train the model", 0.0) + time.perf_counter() - start
            model = load_pretrained(model_dir, dtype=torch.float32).eval()
            blocks = heldout_blocks(model_dir, sizes, held_out_only=True)
        calibration, evaluation = split(blocks, sizes, seed)
        runs = run_methods(model, calibration, evaluation, seconds)
        share = layer_share(model)
        for layers in BUDGET_LAYERS:
            for method, method_run in runs.items():
                k = budget_step(method_run, layers * share)
                values.setdefault(arm(method, layers, share), []).append(method_run.heldout_ppl[k])
                fits.setdefault(arm(method, layers, share), []).append(method_run.calibration_ppl[k])
    share = layer_share(model)
    comparisons = [(arm("blockpruner", k, share), arm(other, k, share))
                   for k in BUDGET_LAYERS for other in ("layer-ppl", "block-influence")]
    where = (f"`{Path(scale.model).name}` ({len(model.model.layers)} layers), the whole embedded corpus (it never trained on it)"
             if real else f"the embedded {sizes.layers}-layer tiny LLaMA pretrained {sizes.steps} steps with "
                          "`pipeline=pretrain_prune` "
                          + ("(model and training seed = the seed)" if sizes.model_per_seed else
                             "once (model and training seed 0; seeds vary the calibration and evaluation draw)"))
    setup = (f"{where}; per seed {sizes.calibration} calibration and {sizes.evaluation} evaluation blocks of "
             f"{sizes.block_size} tokens, disjoint, drawn by the seed from the held-out blocks "
             f"({blocks.size(0)} in all, so the seeds' sets overlap: they vary the draw, not the corpus). Budgets: "
             f"the parameters of 1, 2 and 3 whole layers ({share:.1%} each). "
             "Value: held-out perplexity at the method's last step within the budget.")
    return ClaimResult(values=values, seconds=seconds, comparisons=comparisons, setup=setup,
                       findings=[fit_finding(values, fits, share)])


def fit_finding(values: dict[str, list[float]], fits: dict[str, list[float]], share: float) -> str:
    """Calibration against held-out perplexity: a search that fits its calibration set better yet loses on held-out
    text over-fits that set; one that does not even fit it better is held back by its search path."""
    parts = []
    for layers in BUDGET_LAYERS:
        fit = {method: fits[arm(method, layers, share)] for method in METHODS}
        means = ", ".join(f"{method} {sum(v) / len(v):.3f}" for method, v in fit.items())
        ours, layer = arm("blockpruner", layers, share), arm("layer-ppl", layers, share)
        better_fit = [i for i, (a, b) in enumerate(zip(fits[ours], fits[layer])) if a < b]
        still_worse = sum(values[ours][i] > values[layer][i] for i in better_fit)
        parts.append(f"at {100 * layers * share:.1f}%: {means} (BlockPruner fits it better than layer-ppl in "
                     f"{len(better_fit)} of {len(fits[ours])} seeds and is still worse on held-out text in "
                     f"{still_worse} of those)")
    return ("Calibration perplexity, the objective every method searches on (mean over seeds), "
            + "; ".join(parts) + ".")
