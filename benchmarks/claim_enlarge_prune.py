"""Claim: enlarge → prune → recover on one shared LR curve beats the naive re-warm-up and the target size trained
from scratch, at equal optimizer steps, and carrying AdamW moments across stages helps it.

Runs ``benchmarks/enlarge_prune_compare.py``'s arms once per seed (model init and training seed = the seed). Value:
held-out perplexity of the final model, all arms at the same parameter count.
"""
from __future__ import annotations

from benchmarks.enlarge_prune_compare import run_all
from benchmarks.reproduce_types import ClaimResult, Scale

ARMS = ("enlarge_prune", "enlarge_prune_no_carry", "naive_prune", "baseline_target")
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
                   ("enlarge_prune", "enlarge_prune_no_carry")]
    sizes = "the tiny quick model" if scale.quick else "the embedded tiny LLaMA"
    setup = (f"{sizes}, {total} optimizer steps per arm (enlarged half, prune and recover a quarter each), "
             "model and training seed = the seed. Value: held-out perplexity of the final model (lower is better).")
    return ClaimResult(values=values, seconds=seconds, comparisons=comparisons, setup=setup,
                       notes=["Not yet run: the compute-matched row, the near-convergence regime and the KD arm."])
