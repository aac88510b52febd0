"""Generation strategies (sample, best-of-n, GSA), `lightning-align generate` and the pipeline's `generate` action."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lightning_align.algorithms.generation_strategies import (
    AGGREGATION_TEMPLATE, aggregation_prompt, best_index, check_template, generate, self_aggregate,
)
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses, score_responses
from lightning_align.cli import PACKAGE_CONF, main
from lightning_align.data.gold_task import gold_reward, heldout_prompts, task_prompts
from lightning_align.data.preference import encode_prompt
from lightning_align.errors import ConfigError
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.loading import build_llama
from lightning_align.models.reward_model import load_reward_model
from lightning_align.models.spec import ModelSpec
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose
from tests.conftest import PRETRAIN_EVALUATE, TINY, TINY_OVERRIDES
from tests.test_chat_template import CHATML, CONVERSATION, _chat_tokenizer

SAMPLING = SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=0.95, batch_size=16)
PROMPTS = ["the quick", "a class defines"]


@pytest.fixture(scope="module")
def reward_model(tokenizer):
    """A tiny RM whose head is random (a fresh RM's zero head would score every response 0)."""
    model = load_reward_model(ModelSpec(**TINY), tokenizer)
    torch.nn.init.normal_(model.score.weight, generator=torch.Generator().manual_seed(0))
    return model.eval()


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory, reward_model, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("rm") / "reward"
    reward_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _scorer(reward_model, tokenizer):
    return lambda prompts, responses: score_responses(reward_model, tokenizer, prompts, responses, 64)


def test_sample_gives_every_draw_as_an_answer(tiny_lm, tokenizer):
    out = generate(tiny_lm, tokenizer, PROMPTS, "sample", 3, SAMPLING, torch.Generator().manual_seed(0))
    draws = sample_responses(tiny_lm, tokenizer, PROMPTS, 3, SAMPLING, torch.Generator().manual_seed(0))
    assert [g.prompt for g in out] == [p for p in PROMPTS for _ in range(3)]
    assert [g.response for g in out] == [r for group in draws for r in group]
    assert all(g.candidates == [] and g.score is None for g in out)


def test_best_of_n_picks_the_argmax_of_the_reward_model(tiny_lm, tokenizer, reward_model):
    scorer = _scorer(reward_model, tokenizer)
    out = generate(tiny_lm, tokenizer, PROMPTS, "best-of-n", 4, SAMPLING, torch.Generator().manual_seed(3), scorer)
    assert len(out) == len(PROMPTS)
    for g in out:
        assert g.candidate_scores == scorer([g.prompt] * 4, g.candidates)
        assert len(set(g.candidate_scores)) > 1, "a random head must tell the candidates apart"
        assert g.response == g.candidates[max(range(4), key=g.candidate_scores.__getitem__)]
        assert g.score == max(g.candidate_scores)
    assert best_index([0.5, 2.0, 2.0, -1.0]) == 1


def test_best_of_n_without_a_reward_model_is_refused(tiny_lm, tokenizer):
    with pytest.raises(ConfigError, match="reward_model"):
        generate(tiny_lm, tokenizer, PROMPTS, "best-of-n", 4, SAMPLING, None)


def test_gsa_answers_greedily_from_a_context_holding_every_candidate(tiny_lm, tokenizer, reward_model):
    scorer = _scorer(reward_model, tokenizer)
    out = generate(tiny_lm, tokenizer, PROMPTS, "gsa", 3, SAMPLING, torch.Generator().manual_seed(1), scorer)
    draws = sample_responses(tiny_lm, tokenizer, PROMPTS, 3, SAMPLING, torch.Generator().manual_seed(1))
    assert [g.candidates for g in out] == draws
    greedy = SamplingConfig(max_new_tokens=6, temperature=0.0, batch_size=16)
    for g in out:
        (expected,), = sample_responses(tiny_lm, tokenizer, [aggregation_prompt(g.prompt, g.candidates)], 1, greedy,
                                        None)
        assert g.response == expected
        assert g.score == scorer([g.prompt], [g.response])[0] and len(g.candidate_scores) == 3
    assert self_aggregate(tiny_lm, tokenizer, PROMPTS, draws, SAMPLING) == [g.response for g in out]


def test_aggregation_prompt_holds_the_request_and_all_candidates():
    candidates = ["first answer", " second answer ", "third\nanswer"]
    text = aggregation_prompt("Name a fruit.", candidates)
    assert "Name a fruit." in text and "Write one new, improved response" in text
    for i, candidate in enumerate(candidates, start=1):
        assert f"Response {i}:\n{candidate.strip()}" in text
    assert aggregation_prompt("x", ["a"], "{candidates} | {prompt}") == "Response 1:\na | x"


def test_aggregation_of_a_conversation_rewrites_only_the_last_user_turn_and_uses_the_chat_template():
    chatml = _chat_tokenizer(CHATML)
    messages = aggregation_prompt(CONVERSATION, ["fox", "dog"])
    assert messages[:-1] == CONVERSATION[:-1] and messages[-1]["role"] == "user"
    assert "a class defines" in messages[-1]["content"] and "Response 2:\ndog" in messages[-1]["content"]
    rendered = chatml.decode(encode_prompt(chatml, messages))
    assert "Response 1:\nfox" in rendered and rendered.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("template, problem", [("{prompt} only", "has {prompt}"),
                                               ("{prompt} {candidates} {extra}", "{extra}"),
                                               ("{prompt} {candidates", "valid format string")])
def test_bad_aggregation_templates_are_refused(template, problem):
    with pytest.raises(ConfigError, match=problem):
        check_template(template)
    check_template(AGGREGATION_TEMPLATE)


@pytest.mark.parametrize("strategy", ["sample", "gsa"])
def test_same_seed_same_answers_different_seed_differs(tiny_lm, tokenizer, strategy):
    run = lambda seed: generate(tiny_lm, tokenizer, PROMPTS, strategy, 3, SAMPLING,  # noqa: E731
                                torch.Generator().manual_seed(seed))
    first = run(5)
    assert first == run(5)
    assert [(g.response, g.candidates) for g in first] != [(g.response, g.candidates) for g in run(6)]


def test_gold_evaluation_prompts_are_lines_the_default_rounds_never_take():
    lines = task_prompts(10**6, 0)
    assert heldout_prompts(64, 0) == lines[::-1][:64]
    assert len(lines) - 64 >= 3 * 64 + 128 + 48, "the rounds' first prompts end before the held-out ones begin"


# --- the command ---------------------------------------------------------------------------------------------------

def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_command_writes_jsonl_records(tiny_lm_dir, reward_dir, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    args = ["generate", "--model", str(tiny_lm_dir), "--prompts", "gold", "--num-prompts", "3", "--num-samples", "3",
            "--strategy", "best-of-n", "--reward-model", str(reward_dir), "--max-new-tokens", "6", "--output", str(out)]
    assert main(args) == 0
    assert "3 answers (best-of-n)" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == heldout_prompts(3, 0)
    for row in rows:
        assert row["strategy"] == "best-of-n" and len(row["candidates"]) == 3 and len(row["candidate_scores"]) == 3
        assert row["response"] == row["candidates"][best_index(row["candidate_scores"])]
    assert main(args) == 0 and [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_command_prints_answers_to_one_prompt(tiny_lm_dir, capsys):
    assert main(["generate", "--model", str(tiny_lm_dir), "--prompt", "the quick", "--num-samples", "2",
                 "--strategy", "gsa", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("### the quick\n") and "(gsa: answers=1, prompts=1," in out


@pytest.mark.parametrize("extra, problem", [
    (["--num-samples", "0"], "generate.num_samples"),
    (["--strategy", "best-of-n"], "generate.reward_model"),
    (["--top-p", "1.5"], "generate.sampling.top_p"),
])
def test_command_refuses_bad_arguments_with_one_line(tiny_lm_dir, capsys, extra, problem):
    assert main(["generate", "--model", str(tiny_lm_dir), "--prompt", "the quick", *extra]) == 2
    assert problem in _one_error_line(capsys)


def test_command_refuses_bad_model_and_reward_dirs(tiny_lm_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--prompt", "x"]) == 2
    assert "no config.json" in _one_error_line(capsys)
    assert main(["generate", "--model", str(tiny_lm_dir), "--prompt", "x", "--strategy", "best-of-n",
                 "--reward-model", str(tiny_lm_dir)]) == 2
    assert "without a reward head" in _one_error_line(capsys)


def test_command_refuses_an_empty_prompts_file(tiny_lm_dir, tmp_path, capsys):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    assert main(["generate", "--model", str(tiny_lm_dir), "--prompts", str(empty)]) == 2
    assert "no records" in _one_error_line(capsys)


def test_command_reads_conversational_prompt_files(tmp_path, capsys):
    chatml = _chat_tokenizer(CHATML)
    model_dir = save_model_dir(build_llama(ModelSpec(**TINY), chatml), chatml, tmp_path / "chat")
    prompts = tmp_path / "prompts.jsonl"
    second = [{"role": "user", "content": "the for"}]
    prompts.write_text(json.dumps({"messages": CONVERSATION}) + "\n" + json.dumps({"messages": second}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(model_dir), "--prompts", str(prompts), "--strategy", "gsa",
                 "--num-samples", "2", "--max-new-tokens", "4", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["prompt"] == CONVERSATION and rows[1]["prompt"] == second


# --- the pipeline action -------------------------------------------------------------------------------------------

def _pipeline(tmp_path, *overrides):
    """pretrain -> generate -> evaluate on the tiny model; the generate stage is inserted in the middle."""
    cfg = compose(PACKAGE_CONF, "config", [*PRETRAIN_EVALUATE, *TINY_OVERRIDES, f"run.dir={tmp_path}",
                                           "+stages@stages.generate=generate", *overrides])
    order = cfg.pipeline.stages
    cfg.pipeline.stages = {"pretrain": order.pretrain, "generate": "generate", "evaluate": order.evaluate}
    return cfg


def test_generate_stage_passes_the_previous_model_on(tmp_path):
    stages = MultiStageTrainer(_pipeline(tmp_path)).stages
    assert [s.name for s in stages] == ["pretrain", "generate", "evaluate"]
    assert stages[1].input_dir == stages[2].input_dir == tmp_path / "default" / "pretrain"
    assert stages[2].config["model"]["init_args"]["model"]["path"] == str(tmp_path / "default" / "pretrain")


@pytest.mark.parametrize("override, key", [
    ("stages.generate.strategy=best-of-n", "stages.generate.reward_model"),
    ("stages.generate.strategy=vote", "stages.generate.strategy"),
    ("stages.generate.num_samples=0", "stages.generate.num_samples"),
    ("stages.generate.prompts=missing.jsonl", "stages.generate.prompts"),
    ("stages.generate.aggregation_template=plain", "stages.generate.aggregation_template"),
    ("stages.generate.sampling.temperature=-1", "stages.generate.sampling.temperature"),
])
def test_generate_stage_is_refused_at_planning(tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        MultiStageTrainer(_pipeline(tmp_path, override))
    assert not (tmp_path / "default").exists()


def test_generate_action_writes_answers_and_a_report(tiny_lm_dir, reward_dir, tmp_path):
    config = {"run": {"dir": str(tmp_path), "name": "gen"},
              "pipeline": {"stages": {"answers": "generate"}},
              "stages": {"answers": {"model": str(tiny_lm_dir), "prompts": "gold", "num_prompts": 4,
                                     "strategy": "gsa", "num_samples": 2, "reward_model": str(reward_dir),
                                     "sampling": {"max_new_tokens": 6}}}}
    metrics = MultiStageTrainer(config).run()["answers"]
    stage_dir = tmp_path / "gen" / "answers"
    assert sorted(p.name for p in stage_dir.iterdir()) == ["generations.jsonl", "report.md"]
    rows = [json.loads(line) for line in (stage_dir / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == heldout_prompts(4, 0)
    assert all(r["strategy"] == "gsa" and len(r["candidates"]) == 2 and "score" in r for r in rows)
    assert metrics["generate/gold_reward"] == pytest.approx(sum(gold_reward(r["response"]) for r in rows) / 4)
    assert metrics["generate/rm_score"] == pytest.approx(sum(r["score"] for r in rows) / 4)
    assert metrics["generate/answers"] == 4 and metrics["generate/wall_s"] > 0
    assert "generate/gold_reward" in (tmp_path / "gen" / "report.md").read_text()


def test_generate_stage_without_a_model_is_refused(tmp_path):
    config = {"run": {"dir": str(tmp_path)}, "pipeline": {"stages": {"answers": "generate"}},
              "stages": {"answers": {"num_prompts": 2}}}
    with pytest.raises(ConfigError, match="stages.answers.model"):
        MultiStageTrainer(config).run()


def test_strategies_benchmark_quick_mode_runs(capsys):
    from benchmarks.generation_strategies import main as benchmark

    benchmark(["--quick"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| sample", "| best-of-n", "| gsa"]
