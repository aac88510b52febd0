"""`lightning-align`: a thin command line over the pipeline, Lightning's CLI and the report.

  run       compose conf/ with Hydra (plus overrides) and run the whole pipeline
  fit|validate   one stage through Lightning's CLI: --config conf/stages/<stage>.yaml [--key=value]
  report    rebuild report.md and plots of a run directory
  prune     BlockPruner (or a whole-layer baseline) on a local model directory, with a report
  generate  answer prompts with a model directory: one sample, best-of-n by a reward model, or GSA

User errors (config, data, a path that cannot be written) print one line on stderr and exit with code 2; a full
disk prints one line and exits with 1. A traceback means a bug in lightning_align.
"""
from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path

from lightning_align.errors import Interrupted, LightningAlignError

LIGHTNING_SUBCOMMANDS = ("fit", "validate")  # our modules have no test_step/predict_step
PACKAGE_CONF = Path(__file__).parent / "conf"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-align",
        description="Train, compress and align causal language models in one multi-stage run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="One stage alone: lightning-align fit --config conf/stages/pretrain.yaml --trainer.max_steps=5\n"
        "(fit/validate take Lightning CLI arguments; see `lightning-align fit --help`).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,fit,validate,report,prune,generate}")
    run = sub.add_parser("run", help="run the pipeline composed from conf/ (Hydra overrides as key=value)")
    run.add_argument("--config-path", type=Path, default=PACKAGE_CONF, help="config directory (default: packaged conf/)")
    run.add_argument("--config-name", default="config", help="primary config file name without .yaml")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. run.name=exp1 stages.pretrain.trainer.max_steps=50")
    report = sub.add_parser("report", help="rebuild report.md and plots of a run directory")
    report.add_argument("run_dir", type=Path)
    prune = sub.add_parser("prune", help="remove attention/MLP blocks by calibration perplexity; writes model + report")
    prune.add_argument("--model", required=True, help="local Hugging Face model directory (or a run's stage directory)")
    stop = prune.add_mutually_exclusive_group(required=True)
    stop.add_argument("--target-ratio", type=float, help="stop once this share of all parameters is removed")
    stop.add_argument("--blocks", type=int, help="stop after this many blocks")
    prune.add_argument("--calibration",
                       help="a .txt file, a data file with a text column or a .npy array of token ids, used whole "
                            "(default: held-out embedded corpus)")
    prune.add_argument("--method", default="blockpruner", choices=["blockpruner", "layer-ppl", "block-influence"])
    prune.add_argument("--output", required=True, type=Path, help="directory for the pruned model and report.md")
    prune.add_argument("--num-sequences", type=int, default=32, help="calibration blocks the search sees")
    prune.add_argument("--eval-sequences", type=int,
                       help="other held-out blocks that measure perplexity for the report (default: --num-sequences)")
    prune.add_argument("--batch-size", type=int, default=8, help="blocks per forward in the search and evaluation")
    prune.add_argument("--device", default="cpu", help="cpu, cuda or cuda:<index> (default: cpu)")
    prune.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                       help="precision of the model while pruning and when saved; perplexities stay fp32")
    prune.add_argument("--block-size", type=int, default=128, help="tokens per calibration block")
    prune.add_argument("--search-cache-mb", type=float,
                       help="MiB of hidden states kept across greedy steps (default 1024; 0: none; picks never change)")
    prune.add_argument("--no-compare", action="store_true", help="skip the two other methods in the report")
    prune.add_argument("--export", default="compact", choices=["compact", "dense_compatible"],
                       help="how blocks removed from a layer that stays are saved (docs/pruning.md)")
    generate = sub.add_parser("generate", help="answer prompts with a model: sample, best-of-n or gsa")
    generate.add_argument("--model", required=True, help="local Hugging Face model directory (or a run's stage directory)")
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt (a user message when the tokenizer has a chat template)")
    source.add_argument("--prompts", help="a data file with a prompt or messages column, or \"gold\" (built-in task)")
    generate.add_argument("--num-samples", type=int, default=1, help="N draws per prompt (default: 1)")
    generate.add_argument("--strategy", default="sample", choices=["sample", "best-of-n", "gsa"],
                          help="sample: every draw is an answer; best-of-n: the reward model picks one; "
                               "gsa: the model writes one answer with the N draws in context")
    generate.add_argument("--reward-model", help="reward-model directory (a reward stage's output); needed by best-of-n")
    generate.add_argument("--num-prompts", type=int, help="only the first n prompts of --prompts")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    generate.add_argument("--top-p", type=float, default=0.95)
    generate.add_argument("--seed", type=int, default=0, help="the same seed gives the same draws to every strategy")
    generate.add_argument("--output", type=Path, help="write JSON Lines here instead of printing the answers")
    for name in LIGHTNING_SUBCOMMANDS:
        sub.add_parser(name, help=f"Lightning CLI `{name}` of one stage (--config conf/stages/<stage>.yaml)",
                       add_help=False)
    return parser


def _run(args: argparse.Namespace) -> None:
    from lightning_align.pipeline import MultiStageTrainer, is_rank_zero
    from lightning_align.run_config import compose

    trainer = MultiStageTrainer(compose(args.config_path, args.config_name, args.overrides))
    results = trainer.run()
    if not is_rank_zero():  # rank zero writes state.json and the report, so it alone summarises them
        return
    print(f"\nrun directory: {trainer.run_dir}")
    for stage, metrics in results.items():
        shown = ", ".join(f"{k}={'null' if v is None else format(v, '.4g')}" for k, v in sorted(metrics.items()))
        print(f"  {stage}: {shown}")
    done = trainer.state()["done"]
    for stage in results:
        for warning in done[stage].get("warnings", []):
            print(f"\nWARNING [{stage}] {warning}")
    for stage in results:
        stage_report = trainer.run_dir / stage / "report.md"
        if stage_report.is_file():
            print(f"\n[{stage}] {stage_report}\n{stage_report.read_text().strip()}")
    print(f"\nreport: {trainer.run_dir / 'report.md'}")


def _lightning(argv: list[str]) -> None:
    from lightning_align.interrupt import sigint_raises_interrupted
    from lightning_align.stages.lightning_stage import run_lightning_cli

    with sigint_raises_interrupted():  # Ctrl-C: our one line and 130, not Lightning's sys.exit(1)
        run_lightning_cli(argv)


def _report(args: argparse.Namespace) -> None:
    from lightning_align.eval.report import write_run_report

    print(write_run_report(args.run_dir))


def _prune(args: argparse.Namespace) -> None:
    from lightning_align.stages.prune import run_prune_command

    values = {"model": args.model, "method": args.method, "target_ratio": args.target_ratio, "num_blocks": args.blocks,
              "num_sequences": args.num_sequences, "eval_sequences": args.eval_sequences, "block_size": args.block_size,
              "batch_size": args.batch_size, "device": args.device, "dtype": args.dtype, "compare": not args.no_compare,
              "export": args.export}
    if args.calibration is not None:
        values.update(calibration=args.calibration, val_fraction=None)
    if args.search_cache_mb is not None:
        values.update(search_cache_mb=args.search_cache_mb)
    print(run_prune_command(values, args.output))


def _generate(args: argparse.Namespace) -> None:
    from lightning_align.stages.generate import run_generate_command

    values = {"model": args.model, "strategy": args.strategy, "num_samples": args.num_samples,
              "reward_model": args.reward_model, "num_prompts": args.num_prompts, "seed": args.seed,
              "sampling": {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}}
    if args.prompts is not None:
        values["prompts"] = args.prompts
    print(run_generate_command(values, args.prompt, args.output))


def _log_to_stderr() -> None:
    """Our own INFO lines (stage starts, skips); Lightning configures its loggers itself."""
    logger = logging.getLogger("lightning_align")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[lightning_align] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    # On CPUs with AVX512-BF16, bitsandbytes warns at import that an optional kernel from the hub is missing; its
    # built-in CPU path is used instead and nothing can be fetched offline, so the line is noise on every command.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    try:
        if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
            _lightning(argv)
            return 0
        args = _parser().parse_args(argv)
        {"run": _run, "report": _report, "prune": _prune, "generate": _generate}[args.command](args)
    except (Interrupted, KeyboardInterrupt) as err:  # Ctrl-C: one line, the shell's code for SIGINT, run resumable
        print(err if isinstance(err, Interrupted) else Interrupted(), file=sys.stderr)
        return 130
    except (LightningAlignError, FileNotFoundError) as err:  # user errors and a stage that went non-finite
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        problem = _machine_problem(err)
        if problem is None:
            raise
        print(f"error: {problem[0]}", file=sys.stderr)
        return problem[1]
    return 0


def _machine_problem(err: Exception) -> tuple[str, int] | None:
    """One line and an exit code for what the machine refused rather than what the project got wrong: a path the
    user may not write, or one with a file where a directory must be (2, like other bad input), or a full disk (1).
    Libraries that write files in native code (safetensors, torch) report a full disk in their message only."""
    if isinstance(err, OSError):
        refused = err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
        if refused or (err.errno == errno.EEXIST and os.path.isfile(err.filename or "")):  # a file where a dir goes
            return f"{err.filename}: {err.strerror} (give a run.dir or output directory you can write)", 2
    full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
    if full or os.strerror(errno.ENOSPC) in str(err):
        where = f" while writing {err.filename}" if getattr(err, "filename", None) else ""
        return f"no space left on device{where}: free disk space and run the same command again", 1
    return None


if __name__ == "__main__":
    sys.exit(main())
