"""The ``generate`` stage and ``lightning-align generate``: answer prompts with a model by sample, best-of-n or GSA.

Inside a pipeline (``pipeline.stages.<name>: generate``, config ``conf/stages/generate.yaml``) the model is the
previous stage's output unless ``model`` is set. The stage writes no model: its directory holds ``generations.jsonl``
(one record per answer) and ``report.md``, and the pipeline hands the model the stage read on to the stage after it
(the action is declared with ``writes_model=False``), so generating in the middle of a pipeline changes nothing
downstream. Config problems are refused at planning; the model and reward-model directories, which may be outputs
of earlier stages, are checked when the stage starts, before anything is loaded.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import torch
from jsonargparse.typing import PositiveInt

from lightning_align.algorithms.generation_strategies import (
    AGGREGATION_TEMPLATE, Generation, check_template, generate,
)
from lightning_align.algorithms.sampling import SamplingConfig, score_responses
from lightning_align import strict_json
from lightning_align.config import keys_under, validate_dataclass
from lightning_align.data.gold_task import gold_reward, heldout_prompts
from lightning_align.data.loaders import check_source
from lightning_align.data.preference import GOLD, Prompt
from lightning_align.data.records import read_prompts
from lightning_align.errors import ConfigError
from lightning_align.models.checkpoint import atomic_dir
from lightning_align.models.loading import load_model, load_tokenizer, model_dir_problem
from lightning_align.models.reward_model import load_reward_model
from lightning_align.models.spec import ModelSpec
from lightning_align.stages.context import StageContext

GOLD_PROMPTS = 64
RECORDS_FILE = "generations.jsonl"


@dataclass(frozen=True)
class GenerateConfig:
    """One generation run.

    ``prompts``: "gold" (held-out prompts of the built-in task; the metrics then include its gold reward) or a data
    file with a ``prompt`` or ``messages`` column (TRL prompt-only or conversational). ``num_prompts``: the first n
    (None: a whole file, or 64 gold prompts). ``strategy``: "sample" (each of the ``num_samples`` draws is an
    answer), "best-of-n" (the ``reward_model`` picks one of them) or "gsa" (the model writes one new answer with the
    draws in its context, through ``aggregation_template``). A ``reward_model`` also scores every answer.
    ``seed`` seeds the draws (the same seed gives every strategy the same candidates) and, for "gold", the task's
    line order; equal to the Mutual-Taught prompts' seed, the gold prompts are lines those rounds never take.
    """

    model: Optional[str] = None
    prompts: str = GOLD
    num_prompts: Optional[PositiveInt] = None
    strategy: Literal["sample", "best-of-n", "gsa"] = "sample"
    num_samples: PositiveInt = 4
    reward_model: Optional[str] = None
    aggregation_template: str = AGGREGATION_TEMPLATE
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int = 0


def parse_config(values: dict[str, Any], where: str) -> GenerateConfig:
    """Typed config with every check that needs no model file; ``where`` prefixes the keys in error messages."""
    cfg = validate_dataclass(GenerateConfig, values, where)
    with keys_under(where):
        if cfg.strategy == "best-of-n" and cfg.reward_model is None:
            raise ConfigError("reward_model", "best-of-n picks by reward-model score: give a reward model directory")
        check_template(cfg.aggregation_template)
        check_source(cfg.prompts, GOLD, "prompts")
        sampling = cfg.sampling
        if sampling.max_new_tokens < 1 or sampling.batch_size < 1:
            raise ConfigError("sampling", "max_new_tokens and batch_size must be at least 1")
        if sampling.temperature < 0:
            raise ConfigError("sampling.temperature", f"must be >= 0 (0 is greedy), got {sampling.temperature}")
        if not 0 < sampling.top_p <= 1:
            raise ConfigError("sampling.top_p", f"must be in (0, 1], got {sampling.top_p}")
    return cfg


def check_model_dirs(model_dir: Path, reward_dir: Path | None) -> None:
    """From config files alone: a causal LM with a tokenizer, and a reward model (a scalar head, not a bare LM
    whose fresh zero head would score everything 0 and make best-of-n pick the first sample)."""
    for key, path in (("model", model_dir), ("reward_model", reward_dir)):
        problem = model_dir_problem(path) if path is not None else None
        if problem is not None:
            raise ConfigError(key, f"'{path}' {problem}")
    if reward_dir is not None:
        architectures = json.loads((reward_dir / "config.json").read_text()).get("architectures") or [""]
        if not architectures[0].endswith("ForSequenceClassification"):
            raise ConfigError("reward_model", f"'{reward_dir}' is a {architectures[0] or 'model'} without a reward "
                              "head; give a reward stage's output (a *ForSequenceClassification directory)")


def load_prompt_list(cfg: GenerateConfig) -> list[Prompt]:
    if cfg.prompts == GOLD:
        return heldout_prompts(cfg.num_prompts or GOLD_PROMPTS, cfg.seed)
    return [record["prompt"] for record in read_prompts(cfg.prompts)][:cfg.num_prompts]


def _token_count(tokenizer: Any, texts: Sequence[str]) -> int:
    return sum(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts)


def answer(cfg: GenerateConfig, model_dir: Path, prompts: list[Prompt],
           gold: bool = False) -> tuple[list[Generation], dict[str, float]]:
    """Load, generate and measure. Metrics: answers, mean answer tokens, all tokens generated (candidates and
    aggregates included: the strategy's cost), wall time of generation and scoring, mean reward-model score of the
    answers (with a reward model) and mean gold reward (``gold``: prompts of the built-in task)."""
    reward_dir = Path(cfg.reward_model) if cfg.reward_model is not None else None
    check_model_dirs(model_dir, reward_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(ModelSpec(path=str(model_dir)))
    model = load_model(ModelSpec(path=str(model_dir))).to(device).eval()
    scorer = None
    if reward_dir is not None:
        reward_tokenizer = load_tokenizer(ModelSpec(path=str(reward_dir)))
        reward_model = load_reward_model(ModelSpec(path=str(reward_dir)), reward_tokenizer).to(device)
        context = reward_model.config.max_position_embeddings

        def scorer(ps: Sequence[Prompt], rs: Sequence[str]) -> list[float]:
            return score_responses(reward_model, reward_tokenizer, ps, rs, context, cfg.sampling.batch_size)

    start = time.perf_counter()
    generations = generate(model, tokenizer, prompts, cfg.strategy, cfg.num_samples, cfg.sampling,
                           torch.Generator().manual_seed(cfg.seed), scorer, cfg.aggregation_template)
    wall = time.perf_counter() - start
    responses = [g.response for g in generations]
    generated = [t for g in generations  # a best-of-n answer is one of its candidates, the others are new text
                 for t in (g.candidates if cfg.strategy == "best-of-n" else [g.response, *g.candidates])]
    metrics = {
        "generate/prompts": float(len(prompts)),
        "generate/answers": float(len(generations)),
        "generate/response_tokens": _token_count(tokenizer, responses) / len(responses),
        "generate/tokens_generated": float(_token_count(tokenizer, generated)),
        "generate/wall_s": wall,
    }
    if scorer is not None:
        metrics["generate/rm_score"] = sum(g.score for g in generations) / len(generations)
    if gold:
        metrics["generate/gold_reward"] = sum(map(gold_reward, responses)) / len(responses)
    return generations, metrics


def records(strategy: str, generations: list[Generation]) -> list[dict[str, Any]]:
    """JSON records: prompt, strategy, response, then what the answer came from where there is any."""
    out = []
    for g in generations:
        record: dict[str, Any] = {"prompt": g.prompt, "strategy": strategy, "response": g.response}
        if g.score is not None:
            record["score"] = g.score
        if g.candidates:
            record["candidates"] = g.candidates
        if g.candidate_scores:
            record["candidate_scores"] = g.candidate_scores
        out.append(record)
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(strict_json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def check(config: dict[str, Any], where: str) -> None:
    parse_config(config, where)


def run(ctx: StageContext) -> dict[str, float]:
    """Generate from the stage's model; the directory gets ``generations.jsonl`` and ``report.md``, written
    atomically so an interrupted stage leaves nothing a resume would take for done."""
    where = f"stages.{ctx.name}"
    cfg = parse_config(ctx.config, where)
    model_dir = Path(cfg.model) if cfg.model is not None else ctx.input_dir
    if model_dir is None:
        raise ConfigError(f"{where}.model", "no model to generate with: set it, or put this stage after one that "
                          "writes a model")
    with keys_under(where):
        generations, metrics = answer(cfg, model_dir, load_prompt_list(cfg), gold=cfg.prompts == GOLD)
    with atomic_dir(ctx.output_dir) as tmp:
        write_jsonl(tmp / RECORDS_FILE, records(cfg.strategy, generations))
        rows = "\n".join(f"| {key} | {value:.4g} |" for key, value in sorted(metrics.items()))
        (tmp / "report.md").write_text(
            f"Strategy `{cfg.strategy}`, N={cfg.num_samples}, model `{model_dir}`, prompts `{cfg.prompts}`; "
            f"answers in `{RECORDS_FILE}`.\n\n| metric | value |\n|---|---|\n{rows}\n")
    return metrics


def run_generate_command(values: dict[str, Any], prompt: str | None, output: Path | None) -> str:
    """``lightning-align generate``: validate, generate, write ``output`` (JSONL) if given; returns the text to
    print (the answers when there is no output file, else a summary)."""
    cfg = parse_config(values, "generate")
    prompts = [prompt] if prompt is not None else load_prompt_list(cfg)
    with keys_under("generate"):
        generations, metrics = answer(cfg, Path(cfg.model), prompts, gold=prompt is None and cfg.prompts == GOLD)
    summary = ", ".join(f"{key.split('/')[1]}={value:.4g}" for key, value in sorted(metrics.items()))
    if output is None:
        blocks = [f"### {g.prompt if isinstance(g.prompt, str) else g.prompt[-1]['content']}\n{g.response}"
                  for g in generations]
        return "\n\n".join(blocks) + f"\n\n({cfg.strategy}: {summary})"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, records(cfg.strategy, generations))
    return f"{len(generations)} answers ({cfg.strategy}) written to {output}\n{summary}"
