"""A model given by path: no tiny sizes leak into it, the pretrained pipelines run on a chat model, stages run
alone leave Hugging Face directories, and a stage that wrecks its model says so."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lightning_align.cli import main
from lightning_align.eval.divergence import divergence_warnings
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.loading import build_llama
from lightning_align.models.spec import ModelSpec
from lightning_align.models.tokenizer import train_bpe
from tests.conftest import TEXTS, TINY, TINY_OVERRIDES
from tests.test_chat_template import CHATML, SPECIALS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def chat_lm_dir(tmp_path_factory) -> Path:
    """A tiny random LLaMA whose tokenizer has a ChatML template and ends turns with <|im_end|>, like an
    instruct model."""
    tokenizer = train_bpe(TEXTS, 300)
    tokenizer.add_tokens(SPECIALS, special_tokens=True)
    tokenizer.chat_template = CHATML
    tokenizer.eos_token = "<|im_end|>"
    model = build_llama(ModelSpec(**{**TINY, "max_position_embeddings": 256}), tokenizer)
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("chat") / "model")


def _last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_a_path_model_refuses_the_tiny_sizes(tmp_path, capsys, chat_lm_dir):
    assert main(["run", f"run.dir={tmp_path}", "pipeline=enlarge_prune", f"model.path={chat_lm_dir}"]) == 2
    line = _last_line(capsys)
    assert line.startswith("error: config key 'model.vocab_size'") and "pipeline=pretrained_" in line
    assert not (tmp_path / "default").exists(), "refused at planning, before any stage ran"


def test_enlarging_a_path_model_is_refused_at_planning(tmp_path, capsys, chat_lm_dir):
    code = main(["run", f"run.dir={tmp_path}", "pipeline=enlarge_prune", "model=pretrained",
                 f"model.path={chat_lm_dir}", "stages.prune.trainer.callbacks.0.init_args.target_width=32"])
    assert code == 2
    line = _last_line(capsys)
    assert "'stages.enlarge.model.init_args.model.intermediate_size'" in line and "not supported" in line


def test_pretrained_group_needs_a_path(tmp_path, capsys):
    assert main(["run", f"run.dir={tmp_path}", "pipeline=pretrained_prune"]) == 2
    assert _last_line(capsys).startswith("error: config key 'model.path': required but missing")


def test_width_target_as_a_ratio_of_the_incoming_width(tmp_path, chat_lm_dir):
    """pretrained_prune_width keeps 75% of the model's own FFN width (TINY: 64 -> 48), whatever that width is."""
    code = main(["run", f"run.dir={tmp_path}", "run.name=w", "pipeline=pretrained_prune_width",
                 f"model.path={chat_lm_dir}", "data.block_size=32", "+trainer.enable_progress_bar=false",
                 "stages.prune.trainer.max_steps=6", "stages.prune.trainer.limit_val_batches=1",
                 "stages.prune.trainer.callbacks.0.init_args.start_step=1",
                 "stages.prune.trainer.callbacks.0.init_args.end_step=4",
                 "stages.prune.trainer.callbacks.0.init_args.every_n_steps=1",
                 "stages.recover.trainer.max_steps=2", "stages.recover.trainer.limit_val_batches=1",
                 "stages.evaluate.trainer.limit_val_batches=1"])
    assert code == 0
    config = json.loads((tmp_path / "w" / "recover" / "config.json").read_text())
    assert config["intermediate_size"] == round(0.75 * TINY["intermediate_size"])
    assert AutoTokenizer.from_pretrained(tmp_path / "w" / "recover").chat_template == CHATML


def test_divergence_warnings_flag_a_blown_up_or_non_finite_loss():
    assert divergence_warnings({"val/loss_start": 3.0, "val/loss": 2.0, "train/loss": 99.0}) == []
    assert "rose from 3 to 7.5 (2.5x)" in divergence_warnings({"val/loss_start": 3.0, "val/loss": 7.5})[0]
    assert "nan" in divergence_warnings({"val/loss_start": 3.0, "val/loss": float("nan")})[0]


def test_a_stage_that_wrecks_its_model_is_reported_loudly(tmp_path, capsys):
    code = main(["run", f"run.dir={tmp_path}", "run.name=boom", *TINY_OVERRIDES, "pipeline=align",
                 "pipeline.stages={pretrain:fit}", "stages.pretrain.trainer.max_steps=15",
                 "stages.pretrain.model.init_args.optim.lr=3.0", "stages.pretrain.model.init_args.optim.warmup_steps=0"])
    assert code == 0
    out = capsys.readouterr().out
    warnings = json.loads((tmp_path / "boom" / "state.json").read_text())["done"]["pretrain"]["warnings"]
    assert warnings and "WARNING [pretrain] val/loss" in out
    assert "## Warnings" in (tmp_path / "boom" / "report.md").read_text()


def test_fit_alone_leaves_a_hugging_face_directory_and_no_checkpoint(tmp_path, chat_lm_dir):
    cmd = [sys.executable, "-m", "lightning_align", "fit", "--config", str(REPO / "conf/stages/recover_pretrained.yaml"),
           f"--model.model.path={chat_lm_dir}", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
           "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}", "--data.block_size=32",
           f"--export_dir={tmp_path / 'out'}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.hidden_size == TINY["hidden_size"]
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template == CHATML
    assert not list(tmp_path.rglob("*.ckpt"))
    enlarge = [sys.executable, "-m", "lightning_align", "fit", "--config", str(REPO / "conf/stages/enlarge.yaml"),
               f"--model.model.path={chat_lm_dir}"]
    refused = subprocess.run(enlarge, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert refused.returncode == 2 and "intermediate_size" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_pretrained_pipelines_run_on_a_chat_model(tmp_path, chat_lm_dir):
    """pretrained_prune (BlockPruner -> recover -> evaluate) and pretrained_align (sft -> reward -> mutual_taught ->
    evaluate) on a tiny chat model: every stage leaves a loadable directory that keeps the chat template."""
    common = [f"run.dir={tmp_path}", f"model.path={chat_lm_dir}", "data.block_size=32",
              "+trainer.enable_progress_bar=false", "stages.evaluate.trainer.limit_val_batches=1"]
    assert main(["run", "run.name=prune", "pipeline=pretrained_prune", *common, "stages.prune.target_ratio=null",
                 "stages.prune.num_blocks=1", "stages.prune.num_sequences=2", "stages.prune.latency_repeats=1",
                 "stages.recover.trainer.max_steps=2", "stages.recover.trainer.limit_val_batches=1"]) == 0
    done = json.loads((tmp_path / "prune" / "state.json").read_text())["done"]
    assert done["prune"]["metrics"]["prune/blocks_removed"] == 1 and "val/ppl" in done["evaluate"]["metrics"]
    assert main(["run", "run.name=align", "pipeline=pretrained_align", *common, "data.max_length=64",
                 "stages.sft.trainer.max_steps=2", "stages.sft.trainer.limit_val_batches=1",
                 "stages.reward.trainer.max_steps=2", "stages.reward.trainer.limit_val_batches=1",
                 "stages.mutual_taught.trainer.max_epochs=1", "stages.mutual_taught.data.init_args.policy_prompts=4",
                 "stages.mutual_taught.data.init_args.reward_prompts=4",
                 "stages.mutual_taught.data.init_args.selection_prompts=4"]) == 0
    for stage in ("sft", "reward", "mutual_taught", "evaluate"):
        assert AutoTokenizer.from_pretrained(tmp_path / "align" / stage).chat_template == CHATML
