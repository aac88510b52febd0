"""Reproduce the methods' claims over seeds: means, 95% intervals, paired tests and a verdict per claim.

    python -m benchmarks.reproduce                    # full mode, 5 seeds, every claim (hours on a shared CPU)
    python -m benchmarks.reproduce --quick            # tiny sizes, 2 seeds: checks that every claim runs
    python -m benchmarks.reproduce --only blockpruner --seeds 5
    python -m benchmarks.reproduce --only blockpruner --model MODEL_DIR --seeds 3
    python -m benchmarks.reproduce --only enlarge_prune --steps 1000   # a longer budget, its own record

Each claim's numbers are kept in ``<results>/results/<record>.json`` (one value per arm and seed, the command, the
machine); ``<results>/results.md`` is rendered from every kept record, so ``--only`` replaces one claim's section and
keeps the others. The statistics are computed at rendering time from the kept values (``benchmarks/statistics.py``).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks import claim_enlarge_prune, claim_mutual_taught, claim_pruning
from benchmarks.page import machine_lines
from benchmarks.reproduce_types import Claim, Scale
from benchmarks.results_page import write_results

CLAIMS = {claim.name: claim for claim in (
    Claim("blockpruner", "BlockPruner reaches a lower held-out perplexity than whole-layer perplexity pruning and "
          "Block Influence (ShortGPT) at equal removed parameters.", "held-out perplexity", True,
          "Whole layers are the same size in these models, so at budgets of whole layers the finer search can only "
          "win by dropping an attention block of one layer and an MLP of another. Where the verdict stays open, the "
          "calibration line above tells two causes apart: a search that fits its calibration set better yet loses "
          "on held-out text over-fits too few calibration tokens; a search that does not even fit it better is "
          "limited by its greedy path (each step takes the cheapest single block, which can end on a worse set "
          "than taking whole layers). Test: more calibration tokens for the first; budgets between whole layers, "
          "and a lookahead over pairs of blocks at the budget's last steps, for the second.",
          claim_pruning.run),
    Claim("enlarge_prune", "Enlarge → prune → recover on one shared LR curve (AdamW moments carried) ends with a lower "
          "held-out perplexity than the naive re-warm-up, than the target size trained from scratch, and than the "
          "same curve without the moments carried, at equal optimizer steps; also tested: against the target size "
          "trained with equal compute, and whether KD from the enlarged model helps recovery.",
          "held-out perplexity", True,
          "The finding above shows the enlarged model pruned while its held-out perplexity still falls fast, which "
          "is not the paper's regime: with so short an enlarged stage, the target size given the enlarged model's "
          "extra FLOPs as extra steps gains as much, and a teacher this far from convergence does not help. Longer "
          "budgets do not reach that regime on the embedded corpus (about 105k tokens a pass): at 1,000 steps the "
          "enlarged model is in its 5th pass when pruning starts and the arms end after 10 to 15 passes, held-out "
          "perplexity rises again during long low-learning-rate "
          "stretches (the shared curve's recovery, the compute-matched baseline), and KD, which regularises, "
          "becomes the best arm. Most likely the corpus, not the method, decides these rows. Test: the same arms "
          "on a corpus large enough for one pass (`--corpus FILE --steps N`), where the enlarged model can converge "
          "on held-out text before it is pruned.",
          claim_enlarge_prune.run),
    Claim("mutual_taught", "Mutual-Taught (reward model refreshed every round) ends with a higher gold reward and gold "
          "win rate vs π_0 than iterative DPO with r_0 frozen, on a task where r_0 has a blind spot the policy can "
          "drift into; the gold-reward oracle ranker is the ceiling; replaying r_0's pairs (an extension) helps "
          "further.", "gold reward / win rate", False,
          "The M-step labels y_new ≻ y_old on the premise that the E-step improved the policy. Where the policy "
          "improved only in r_{t-1}'s eyes (it drifted into the blind spot), those labels teach r_t the blind spot "
          "too, and no pair in the loop carries the information r_0 lacks; the per-round table shows whether r_t "
          "beats r_{t-1} on π_t's samples. Test: more RM prompts per round and more rounds, or an RM prompt split "
          "drawn from where the policy goes; with no gain even then, the refresh cannot repair a blind spot at this "
          "scale.",
          claim_mutual_taught.run),
)}
FULL_SEEDS, QUICK_SEEDS = 5, 2


def record_name(claim: str, model: Path | None, steps: int | None, corpus: Path | None = None) -> str:
    """One record per claim and setting: a model directory, a corpus or a step budget other than the mode's gets
    its own, so a run at another scale sits beside the default one instead of replacing it."""
    if model is not None:
        return f"{claim}-{model.name}"
    if claim != "enlarge_prune":
        return claim
    return claim + (f"-{corpus.stem}" if corpus is not None else "") + (f"-{steps}steps" if steps is not None else "")


def public_args(argv: list[str]) -> list[str]:
    """The command line as the page shows it: where runs and records go left out, a model directory by its name
    (the numbers depend on neither, and a page should not carry one machine's paths)."""
    shown, args = [], iter(argv)
    for arg in args:
        name, equals, value = arg.partition("=")
        if name in ("--out", "--results", "--model", "--corpus"):
            value = value if equals else next(args, "")
            if name in ("--model", "--corpus"):
                shown += [name, Path(value).name]
            continue
        shown.append(arg)
    return shown


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help=f"tiny sizes and budgets, {QUICK_SEEDS} seeds by default")
    mode.add_argument("--full", action="store_true", help=f"the claims' own sizes, {FULL_SEEDS} seeds (the default)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 for every arm")
    parser.add_argument("--only", nargs="+", choices=list(CLAIMS), default=list(CLAIMS), help="which claims to run")
    parser.add_argument("--model", type=Path, default=None,
                        help="a local pretrained model directory for the blockpruner claim (tiny calibration)")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps per enlarge_prune arm")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="a local .txt/.jsonl/.parquet corpus for the enlarge_prune claim (default: embedded)")
    parser.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="where the runs go (reused)")
    parser.add_argument("--results", type=Path, default=Path("docs"), help="where results.md and its records go")
    args = parser.parse_args(argv)
    if args.seeds is not None and args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model}: not a model directory (no config.json)")
    if args.model is not None and args.only != ["blockpruner"]:
        parser.error("--model applies to the blockpruner claim only: add --only blockpruner")
    if args.steps is not None and (args.steps < 4 or "enlarge_prune" not in args.only):
        parser.error("--steps: at least 4 (each stage needs a step), and it applies to the enlarge_prune claim only")
    if args.corpus is not None and (not args.corpus.is_file() or "enlarge_prune" not in args.only):
        parser.error(f"--corpus {args.corpus}: must be a file, and it applies to the enlarge_prune claim only")
    torch.set_num_threads(1)  # shared CPUs time badly with more, and seeds must not race each other for cores
    seeds = args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)
    command = "python -m benchmarks.reproduce " + shlex.join(public_args(argv if argv is not None else sys.argv[1:]))
    records = args.results / "results"
    records.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        out = args.out / ("quick" if args.quick else "full")
        scale = Scale(quick=args.quick, seeds=seeds, out=out, model=args.model, steps=args.steps, corpus=args.corpus)
        start = time.perf_counter()
        result = CLAIMS[name].run(scale)
        record = {"claim": name, "command": command.strip(), "mode": "quick" if args.quick else "full",
                  "seeds": seeds, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "machine": machine_lines()[0], "wall_s": time.perf_counter() - start, "values": result.values,
                  "seconds": result.seconds, "comparisons": result.comparisons, "setup": result.setup,
                  "notes": result.notes, "findings": result.findings, "reused": result.reused,
                  **({"per_round": result.per_round} if result.per_round else {})}
        path = records / f"{record_name(name, args.model, args.steps, args.corpus)}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: {seeds} seed(s) in {record['wall_s']:.0f} s -> {path}")
    page = write_results(args.results, CLAIMS)
    print(f"results: {page}")
    return page


if __name__ == "__main__":
    main()
