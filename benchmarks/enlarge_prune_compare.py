"""Integrated enlarge → prune → recover vs. the target size from scratch vs. the naive pipeline (IDEA Prune).

Runs `pipeline=enlarge_prune` (with AdamW moments carried across stages, and again without), its `_kd` variant,
`pipeline=naive_prune` and `pipeline=baseline_target` with the same total step budget, and `baseline_target` again
with the training compute of `enlarge_prune` (`baseline_equal_compute`, steps from `equal_compute_steps`), then writes
`<out>/report.md`: final held-out perplexity at equal parameter count (ratio to the baseline) and `<out>/lr.png`, the
LR curves against the global step with stage boundaries.

    python benchmarks/enlarge_prune_compare.py            # the embedded default, a few minutes per pipeline on CPU
    python benchmarks/enlarge_prune_compare.py --quick    # tiny model, seconds: checks that the comparison runs
    python benchmarks/enlarge_prune_compare.py --arms enlarge_prune enlarge_prune_no_carry naive_prune baseline_target
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_align.eval.report import plot_lr_curves, read_lr_curve
from lightning_align.models.checkpoint import load_pretrained
from lightning_align.models.spec import ModelSpec
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose

CONF = Path(__file__).resolve().parents[1] / "conf"
# arm -> (pipeline, extra overrides); every arm runs under its own name in `<out>/<arm>/`
ARMS = {
    "enlarge_prune": ("enlarge_prune", []),
    "enlarge_prune_no_carry": ("enlarge_prune", ["pipeline.schedule.carry_optimizer_state=false"]),
    "enlarge_prune_kd": ("enlarge_prune_kd", []),
    "naive_prune": ("naive_prune", []),
    "baseline_target": ("baseline_target", []),
    "baseline_equal_compute": ("baseline_target", []),  # its step budget: `equal_compute_steps`
}
PRUNED = ("enlarge_prune", "enlarge_prune_kd", "naive_prune")


def split_budget(total: int) -> dict[str, int]:
    """Half the steps for the enlarged model, a quarter each for pruning and recovery (IDEA Prune)."""
    prune = total // 4
    return {"enlarge": total - 2 * prune, "prune": prune, "recover": prune}


def matmul_parameters(spec: dict) -> int:
    """Weights a token passes through in matrix products (the input embedding is a lookup, unless tied to the
    head), for the built model of a ModelSpec; built on the meta device, so it costs neither memory nor time."""
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**ModelSpec(**spec).built_sizes()))
    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    return sum(p.numel() for p in model.parameters()) - (0 if tied else embedding.numel())


def equal_compute_steps(cfg: DictConfig, total: int) -> int:
    """Steps of the target size with the training FLOPs of enlarge → prune → recover at ``total`` steps.

    Training costs ~6 FLOPs per matmul weight and token (attention's sequence term is left out: 128-token blocks);
    the prune stage masks neurons and cuts them out only at its end, so it computes at the enlarged width.
    """
    run_model = OmegaConf.to_container(cfg.model, resolve=True)
    enlarged = {**run_model, **OmegaConf.to_container(cfg.stages.enlarge.model.init_args.model, resolve=True)}
    budgets = split_budget(total)
    ratio = matmul_parameters(enlarged) / matmul_parameters(run_model)
    return round((budgets["enlarge"] + budgets["prune"]) * ratio + budgets["recover"])


def overrides(arm: str, out: Path, total: int, quick: bool, batch_size: int | None = None,
              corpus: str | None = None, seed: int | None = None) -> list[str]:
    """Hydra overrides giving every arm the same total steps (and, with `--quick`, a tiny model)."""
    pipeline, extra = ARMS[arm]
    args = [f"pipeline={pipeline}", f"run.dir={out}", f"run.name={arm}", "+trainer.enable_progress_bar=false", *extra]
    if corpus is not None:
        args.append(f"data.corpus={corpus}")
    budgets = split_budget(total)
    warmup = max(1, total // 20)
    args.append(f"pipeline.schedule.warmup_steps={warmup}")
    if pipeline in PRUNED:
        args += [f"pipeline.schedule.budgets.{name}={steps}" for name, steps in budgets.items()]
        prune = budgets["prune"]
        args += [f"stages.prune.trainer.callbacks.0.init_args.start_step={max(1, prune // 10)}",
                 f"stages.prune.trainer.callbacks.0.init_args.end_step={max(2, prune * 4 // 5)}",
                 f"stages.prune.trainer.callbacks.0.init_args.every_n_steps={max(1, prune // 20)}"]
        stages = ("enlarge", "prune", "recover", "evaluate")
    else:
        steps = total
        if arm == "baseline_equal_compute":
            steps = equal_compute_steps(compose(CONF, "config", overrides("enlarge_prune", out, total, quick)), total)
        args.append(f"pipeline.schedule.budgets.train={steps}")
        stages = ("train", "evaluate")
    if batch_size is not None:
        args += [f"stages.{stage}.data.init_args.batch_size={batch_size}" for stage in stages]
    if seed is not None:
        args += [f"model.seed={seed}", f"run.seed={seed}"]
    if quick:
        args += ["model.vocab_size=300", "model.hidden_size=32", "model.intermediate_size=32",
                 "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
                 "model.max_position_embeddings=64"]
        if pipeline in PRUNED:
            args.append("stages.enlarge.model.init_args.model.intermediate_size=84")
        for stage in stages:
            args += [f"stages.{stage}.data.init_args.block_size=32", f"stages.{stage}.data.init_args.batch_size=4",
                     f"stages.{stage}.trainer.limit_val_batches=2", f"++stages.{stage}.trainer.log_every_n_steps=1"]
    return args


def run_all(out: Path, total: int, quick: bool, batch_size: int | None = None, corpus: str | None = None,
            seed: int | None = None, arms: Sequence[str] = tuple(ARMS)) -> list[dict]:
    rows = []
    for arm in arms:
        start = time.perf_counter()
        args = overrides(arm, out, total, quick, batch_size, corpus, seed)
        trainer = MultiStageTrainer(compose(CONF, "config", args))
        state, timing = trainer.run_dir / "state.json", trainer.run_dir / "wall_seconds.json"
        before = state.stat().st_mtime_ns if state.is_file() else None
        results = trainer.run()
        seconds = time.perf_counter() - start
        reused = before is not None and state.stat().st_mtime_ns == before  # no stage ran: an earlier command's run
        if reused and timing.is_file():
            seconds, reused = json.loads(timing.read_text())["seconds"], False
        elif not reused:
            timing.write_text(json.dumps({"seconds": seconds}))
        model = load_pretrained(trainer.run_dir / "evaluate")
        rows.append({"pipeline": arm, "ppl": results["evaluate"]["val/ppl"],
                     "params": sum(p.numel() for p in model.parameters()),
                     "ffn": model.config.intermediate_size, "seconds": seconds,
                     "reused": reused,  # and its time unknown (made before runs kept their wall time)
                     "lr": read_lr_curve(trainer.run_dir, [c.name for c in trainer.stages])})
    return rows


def write_report(rows: list[dict], out: Path, total: int) -> Path:
    baseline = next(r for r in rows if r["pipeline"] == "baseline_target")
    lines = [f"# Enlarge → prune → recover vs. baselines ({total} optimizer steps each)", "",
             "| pipeline | params | FFN width | held-out ppl | ppl / baseline | wall s |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['pipeline']} | {row['params']:,} | {row['ffn']} | {row['ppl']:.3f} | "
                     f"{row['ppl'] / baseline['ppl']:.3f} | {row['seconds']:.0f} |")
    plot = plot_lr_curves({r["pipeline"]: r["lr"] for r in rows}, out / "lr.png")
    if plot is not None:
        lines += ["", f"![LR curves]({plot.name})"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:len(rows) + 4]))
    return report


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and 16 steps: checks the comparison runs")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps per pipeline (default 400)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size of every stage (default: the YAML's)")
    parser.add_argument("--corpus", default=None, help="a .txt/.jsonl corpus instead of the embedded one")
    parser.add_argument("--seed", type=int, default=None, help="model init and training seed (default: the YAML's)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (shared CPUs time badly with more)")
    parser.add_argument("--out", type=Path, default=Path("runs/enlarge_prune_compare"))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS),
                        help="which arms to run, in this order (default: all; baseline_target gives the ratio column)")
    args = parser.parse_args(argv)
    if "baseline_target" not in args.arms:
        parser.error("--arms must include baseline_target: every perplexity is reported as a ratio to it")
    torch.set_num_threads(args.threads)
    total = args.steps or (16 if args.quick else 400)
    rows = run_all(args.out, total, args.quick, args.batch_size, args.corpus, args.seed, args.arms)
    return write_report(rows, args.out, total)


if __name__ == "__main__":
    main()
