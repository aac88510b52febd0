"""Claim: enlarge → prune → recover on one shared LR curve beats the naive re-warm-up and the target size trained
from scratch, at equal optimizer steps, and carrying AdamW moments across stages helps it. Reported beside it: the
target size trained with the same compute (more steps), and KD from the enlarged model during recovery.

Runs ``benchmarks/enlarge_prune_compare.py``'s arms once per seed (model init and training seed = the seed). Value:
held-out perplexity of the final model, all arms at the same parameter count.
"""
from __future__ import annotations

from benchmarks.enlarge_prune_compare import CONF, equal_compute_steps, overrides, run_all
from benchmarks.reproduce_types import ClaimResult, Scale
from lightning_align.run_config import compose

ARMS = ("enlarge_prune", "enlarge_prune_no_carry", "enlarge_prune_kd", "naive_prune", "baseline_target",
        "baseline_equal_compute")
QUICK_STEPS, FULL_STEPS = 8, 400


def run(scale: Scale) -> ClaimResult:
    total = scale.steps or (QUICK_STEPS if scale.quick else FULL_STEPS)
    values: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    for seed in range(scale.seeds):
        for row in run_all(scale.out / "enlarge_prune" / f"seed{seed}", total, scale.quick, seed=seed, arms=ARMS):
            values.setdefault(row["pipeline"], []).append(row["ppl"])
            seconds[row["pipeline"]] = seconds.get(row["pipeline"], 0.0) + row["seconds"]
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
    return ClaimResult(values=values, seconds=seconds, comparisons=comparisons, setup=setup)
