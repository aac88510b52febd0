"""One sample vs best-of-N vs Generative Self-Aggregation at the same N, on the built-in gold task.

Every strategy answers the same held-out gold prompts from the same N draws (same seed), through the code path of
`lightning-align generate`. Columns: mean gold reward of the answers (the task's programmatic reward, never seen by
the models), gold win rate against the first draw of each prompt (ties one half), mean reward-model score (best-of-N
selects by this very score, so its RM column is optimistic by construction), answer tokens, and the cost of one
answer: tokens generated (draws + aggregate) and wall seconds. "sample" answers with every draw, so its row is the
expected quality of one sample.

    python benchmarks/generation_strategies.py --run-dir runs/gen          # policy + RM of an align run (trains one
                                                                           # with pipeline=align if the dir has none)
    python benchmarks/generation_strategies.py --policy DIR --reward-model DIR
    python benchmarks/generation_strategies.py --quick                     # random tiny models; run by the test suite
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from lightning_align.algorithms.generation_strategies import AGGREGATION_TEMPLATE, STRATEGIES, check_template
from lightning_align.algorithms.sampling import SamplingConfig
from lightning_align.data.corpus import load_texts
from lightning_align.data.gold_task import gold_win_rate
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.loading import build_llama
from lightning_align.models.spec import ModelSpec
from lightning_align.models.tokenizer import train_bpe
from lightning_align.stages.generate import GenerateConfig, answer, load_prompt_list

CONF = Path(__file__).resolve().parents[1] / "conf"


def align_run(run_dir: Path, policy_stage: str) -> tuple[Path, Path]:
    """(policy, reward model) of an align run in `run_dir`, running `pipeline=align` there first if they are missing."""
    policy, reward = run_dir / policy_stage, run_dir / "reward"
    if not (policy / "config.json").is_file() or not (reward / "config.json").is_file():
        from lightning_align.pipeline import MultiStageTrainer
        from lightning_align.run_config import compose

        overrides = ["pipeline=align", f"run.dir={run_dir.parent}", f"run.name={run_dir.name}"]
        MultiStageTrainer(compose(CONF, "config", overrides)).run()
    return policy, reward


def random_models(out: Path) -> tuple[Path, Path]:
    """A 2-layer policy and a reward model with a random head: only checks that the comparison runs."""
    tokenizer = train_bpe(load_texts("embedded")[:200], 300)
    sizes = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=256)
    policy = save_model_dir(build_llama(ModelSpec(**sizes), tokenizer), tokenizer, out / "policy")
    torch.manual_seed(0)
    config = LlamaConfig(**{**sizes, "vocab_size": len(tokenizer)}, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(out / "reward")
    tokenizer.save_pretrained(out / "reward")
    return policy, out / "reward"


def compare(policy: Path, reward: Path, prompts: int, num_samples: int, sampling: SamplingConfig, seed: int,
            templates: list[str]) -> list[dict[str, float | str]]:
    """One row per strategy, GSA once per aggregation template (labelled gsa, gsa-2, ...)."""
    runs = [(s, s, AGGREGATION_TEMPLATE) for s in STRATEGIES if s != "gsa"]
    runs += [("gsa" if i == 1 else f"gsa-{i}", "gsa", t) for i, t in enumerate(templates, start=1)]
    rows, first_draws = [], None
    for label, strategy, template in runs:
        cfg = GenerateConfig(model=str(policy), num_prompts=prompts, strategy=strategy, num_samples=num_samples,
                             reward_model=str(reward), aggregation_template=template, sampling=sampling, seed=seed)
        generations, metrics = answer(cfg, policy, load_prompt_list(cfg), gold=True)
        responses = [g.response for g in generations]
        if strategy == "sample":
            first_draws = responses[::num_samples]
            win = gold_win_rate(responses, [r for r in first_draws for _ in range(num_samples)])
        else:
            win = gold_win_rate(responses, first_draws)
        answers = metrics["generate/answers"]
        rows.append({"strategy": label, "gold": metrics["generate/gold_reward"], "win": win,
                     "rm": metrics["generate/rm_score"], "tokens": metrics["generate/response_tokens"],
                     "cost_tokens": metrics["generate/tokens_generated"] / answers,
                     "cost_s": metrics["generate/wall_s"] / answers})
    return rows


def table(rows: list[dict[str, float | str]], num_samples: int) -> str:
    lines = [f"| strategy (N={num_samples}) | gold reward | gold win rate vs 1st draw | RM score | answer tokens | "
             "tokens generated / answer | wall s / answer |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['gold']:.3f} | {r['win']:.3f} | {r['rm']:.3f} | {r['tokens']:.1f} | "
                     f"{r['cost_tokens']:.1f} | {r['cost_s']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/gen"), help="an align run (trained if missing)")
    parser.add_argument("--policy-stage", default="mutual_taught", help="the run's stage to answer with")
    parser.add_argument("--policy", type=Path, help="a policy directory instead of the run's")
    parser.add_argument("--reward-model", type=Path, help="a reward-model directory instead of the run's")
    parser.add_argument("--prompts", type=int, default=128, help="held-out gold prompts")
    parser.add_argument("--num-samples", type=int, default=4, help="N")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (shared CPUs time badly with more)")
    parser.add_argument("--aggregation-template", action="append", dest="templates",
                        help="another GSA template with {prompt} and {candidates}: one more row (gsa-2, gsa-3, ...) "
                             "next to the built-in instruction template's (gsa)")
    parser.add_argument("--quick", action="store_true", help="random tiny models, 4 prompts, 6 new tokens")
    args = parser.parse_args(argv)
    templates = [AGGREGATION_TEMPLATE, *(args.templates or [])]
    for template in templates:
        check_template(template, "--aggregation-template")
    torch.set_num_threads(args.threads)
    sampling = SamplingConfig(max_new_tokens=6 if args.quick else args.max_new_tokens, temperature=args.temperature)
    with tempfile.TemporaryDirectory() as scratch:
        if args.quick:
            policy, reward = random_models(Path(scratch))
        elif args.policy is not None and args.reward_model is not None:
            policy, reward = args.policy, args.reward_model
        else:
            policy, reward = align_run(args.run_dir, args.policy_stage)
        rows = compare(policy, reward, 4 if args.quick else args.prompts, args.num_samples, sampling, args.seed,
                       templates)
    listed = "".join(f"\n  gsa-{i}: {t!r}" for i, t in enumerate(templates[1:], start=2))
    text = f"policy {policy}, reward model {reward}{listed}\n\n{table(rows, args.num_samples)}"
    print(text)
    return text


if __name__ == "__main__":
    main()
