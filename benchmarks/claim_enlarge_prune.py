"""Claim: enlarge → prune → recover on one shared LR curve beats the naive re-warm-up and the target size trained
from scratch, at equal optimizer steps, and carrying AdamW moments across stages helps it. Reported beside it: the
target size trained with the same compute (more steps), and KD from the enlarged model during recovery.

Runs ``benchmarks/enlarge_prune_compare.py``'s arms once per seed (model init and training seed = the seed). Value:
held-out perplexity of the final model, all arms at the same parameter count.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.enlarge_prune_compare import CONF, equal_compute_steps, overrides, run_all, split_budget
from benchmarks.reproduce_types import ClaimResult, Scale
from lightning_align.eval.report import read_metric_series
from lightning_align.run_config import compose

ARMS = ("enlarge_prune", "enlarge_prune_no_carry", "enlarge_prune_kd", "naive_prune", "baseline_target",
        "baseline_equal_compute")
QUICK_STEPS, FULL_STEPS = 8, 400
CONVERGED_FALL = 0.01  # "close to convergence": training perplexity falls less than this over the last fifth


def enlarged_progress(run_dir: Path) -> tuple[float, float]:
    """(held-out perplexity of the enlarged model when it is handed to pruning, the relative fall of its training
    perplexity from the stage's second-to-last fifth of logged steps to its last): how far from convergence the
    paper's premise, pruning a converged enlarged model, is at this budget."""
    held_out = json.loads((run_dir / "state.json").read_text())["done"]["enlarge"]["metrics"]["val/ppl"]
    losses = [loss for _, loss in read_metric_series(run_dir / "logs" / "enlarge" / "metrics.csv", "train/loss")]
    k = max(1, len(losses) // 5)
    before, last = losses[-2 * k:-k], losses[-k:]
    if not before:
        return held_out, math.nan
    return held_out, 1.0 - math.exp(sum(last) / len(last) - sum(before) / len(before))


def run(scale: Scale) -> ClaimResult:
    total = scale.steps or (QUICK_STEPS if scale.quick else FULL_STEPS)
    values: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    progress = []
    for seed in range(scale.seeds):
        out = scale.out / "enlarge_prune" / f"seed{seed}"
        for row in run_all(out, total, scale.quick, seed=seed, arms=ARMS):
            values.setdefault(row["pipeline"], []).append(row["ppl"])
            seconds[row["pipeline"]] = seconds.get(row["pipeline"], 0.0) + row["seconds"]
        progress.append(enlarged_progress(out / "enlarge_prune"))
    comparisons = [("enlarge_prune", "naive_prune"), ("enlarge_prune", "baseline_target"),
                   ("enlarge_prune", "enlarge_prune_no_carry"), ("enlarge_prune", "baseline_equal_compute"),
                   ("enlarge_prune_kd", "enlarge_prune")]
    cfg = compose(CONF, "config", overrides("enlarge_prune", scale.out, total, scale.quick))
    data = cfg.stages.enlarge.data.init_args
    tokens = total * data.batch_size * data.block_size
    sizes = "the tiny quick model" if scale.quick else "the embedded tiny LLaMA"
    setup = (f"{sizes}, {total} optimizer steps per arm (enlarged half, prune and recover a quarter each) of "
             f"{data.batch_size}x{data.block_size} tokens: {tokens:,} training tokens per arm; "
             f"`baseline_equal_compute` trains the target size for {equal_compute_steps(cfg, total)} steps, the "
             "training FLOPs of `enlarge_prune` (6 per matmul weight and token; the prune stage computes at the "
             "enlarged width). Model and training seed = the seed. Value: held-out perplexity of the final model "
             "(lower is better).")
    held_out = sum(p for p, _ in progress) / len(progress)
    fall = sum(f for _, f in progress) / len(progress)
    close = "close to" if fall < CONVERGED_FALL else "not close to"
    finding = (f"The enlarged model when pruning starts ({split_budget(total)['enlarge']} steps, "
               f"{split_budget(total)['enlarge'] * data.batch_size * data.block_size:,} tokens): held-out perplexity "
               f"{held_out:.1f}, and its training perplexity still fell {fall:.1%} over the stage's last fifth (means "
               f"over seeds), so it is {close} convergence (under {CONVERGED_FALL:.0%} would count as close): the "
               "verdicts speak for this regime, not for pruning a converged model.")
    return ClaimResult(values=values, seconds=seconds, comparisons=comparisons, setup=setup, findings=[finding])
