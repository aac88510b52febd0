"""Claim: enlarge → prune → recover on one shared LR curve beats the naive re-warm-up and the target size trained
from scratch, at equal optimizer steps, and carrying AdamW moments across stages helps it. Reported beside it: the
target size trained with the same compute (more steps), and KD from the enlarged model during recovery.

Runs ``benchmarks/enlarge_prune_compare.py``'s arms once per seed (model init and training seed = the seed). Value:
held-out perplexity of the final model, all arms at the same parameter count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benchmarks.enlarge_prune_compare import CONF, equal_compute_steps, overrides, run_all, split_budget
from benchmarks.reproduce_types import ClaimResult, Scale
from lightning_align.eval.report import read_metric_series
from lightning_align.run_config import compose

ARMS = ("enlarge_prune", "enlarge_prune_no_carry", "enlarge_prune_kd", "naive_prune", "baseline_target",
        "baseline_equal_compute")
QUICK_STEPS, FULL_STEPS = 8, 400
CONVERGED_FALL = 0.02  # "close to convergence": held-out perplexity falls less than this over the last validations


@dataclass(frozen=True)
class Progress:
    """How far the enlarged model is from convergence when pruning starts (the paper prunes a converged one)."""

    held_out: float  # its held-out perplexity then
    fall: float  # relative fall of held-out perplexity between the stage's last two validations
    interval: int  # steps between those validations
    passes: int  # the pass over the training split the stage ends in (the embedded corpus is small)


def enlarged_progress(run_dir: Path) -> Progress:
    """Held-out, not training, perplexity: on a corpus this small the training loss keeps falling by memorising it
    after held-out text stops improving."""
    log = run_dir / "logs" / "enlarge" / "metrics.csv"
    held_out = json.loads((run_dir / "state.json").read_text())["done"]["enlarge"]["metrics"]["val/ppl"]
    checks = read_metric_series(log, "val/ppl")
    last = checks[-1][0]
    step, before = [(s, ppl) for s, ppl in checks if s < last - 1][-1]  # the stage's end validates twice
    passes = int(max(epoch for s, epoch in read_metric_series(log, "epoch") if s < last)) + 1  # not the end's
    return Progress(held_out, 1.0 - held_out / before, last - step, passes)


def progress_finding(progress: list[Progress], steps: int, tokens: int) -> str:
    n = len(progress)
    fall = sum(p.fall for p in progress) / n
    close = "close to" if fall < CONVERGED_FALL else "not close to"
    return (f"The enlarged model when pruning starts ({steps} steps, {tokens:,} tokens, pass "
            f"{max(p.passes for p in progress)} over the training split): held-out perplexity "
            f"{sum(p.held_out for p in progress) / n:.1f}, still falling {fall:.1%} over its last "
            f"{progress[0].interval} steps (means over seeds), so it is {close} convergence (a fall under "
            f"{CONVERGED_FALL:.0%} would count as close): the verdicts speak for this regime.")


def run(scale: Scale) -> ClaimResult:
    total = scale.steps or (QUICK_STEPS if scale.quick else FULL_STEPS)
    values: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    reused: dict[str, int] = {}
    progress = []
    corpus = str(scale.corpus.resolve()) if scale.corpus else None
    for seed in range(scale.seeds):
        out = scale.out / "enlarge_prune" / (scale.corpus.stem if scale.corpus else "") / f"seed{seed}"
        for row in run_all(out, total, scale.quick, corpus=corpus, seed=seed, arms=ARMS):
            values.setdefault(row["pipeline"], []).append(row["ppl"])
            seconds[row["pipeline"]] = seconds.get(row["pipeline"], 0.0) + row["seconds"]
            reused[row["pipeline"]] = reused.get(row["pipeline"], 0) + row["reused"]
        progress.append(enlarged_progress(out / "enlarge_prune"))
    comparisons = [("enlarge_prune", "naive_prune"), ("enlarge_prune", "baseline_target"),
                   ("enlarge_prune", "enlarge_prune_no_carry"), ("enlarge_prune", "baseline_equal_compute"),
                   ("enlarge_prune_kd", "enlarge_prune")]
    cfg = compose(CONF, "config", overrides("enlarge_prune", scale.out, total, scale.quick, corpus=corpus))
    data = cfg.stages.enlarge.data.init_args
    tokens = total * data.batch_size * data.block_size
    sizes = "the tiny quick model" if scale.quick else "the embedded tiny LLaMA"
    text = f"corpus `{scale.corpus.name}`" if scale.corpus else "the embedded corpus"
    setup = (f"{sizes} on {text}, {total} optimizer steps per arm (enlarged half, prune and recover a quarter each) of "
             f"{data.batch_size}x{data.block_size} tokens: {tokens:,} training tokens per arm; "
             f"`baseline_equal_compute` trains the target size for {equal_compute_steps(cfg, total)} steps, the "
             "training FLOPs of `enlarge_prune` (6 per matmul weight and token; the prune stage computes at the "
             "enlarged width). Model and training seed = the seed. Value: held-out perplexity of the final model "
             "(lower is better).")
    enlarge = split_budget(total)["enlarge"]
    finding = progress_finding(progress, enlarge, enlarge * data.batch_size * data.block_size)
    return ClaimResult(values=values, seconds=seconds, comparisons=comparisons, setup=setup, findings=[finding],
                       reused={arm: n for arm, n in reused.items() if n})
