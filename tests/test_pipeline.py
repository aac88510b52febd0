"""`lightning-align run` end to end on a tiny model: outputs, reload, resume, and nothing half-written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from lightning_align.cli import PACKAGE_CONF, main
from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *extra: str) -> int:
    return main(["run", f"run.dir={tmp_path}", "run.name=t", *TINY_OVERRIDES, *PRETRAIN_EVALUATE, *extra])


def test_run_trains_reports_and_resumes(tmp_path, capsys):
    assert _run(tmp_path) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "t"
    state = json.loads((run_dir / "state.json").read_text())["done"]
    assert list(state) == ["pretrain", "evaluate"]
    pre = state["pretrain"]["metrics"]
    assert pre["val/ppl"] < 0.5 * pre["val/ppl_start"], "training must clearly lower held-out perplexity"
    assert state["evaluate"]["metrics"]["val/ppl"] == pre["val/ppl"]
    assert "pretrain: " in out and "val/ppl_start=" in out
    model = AutoModelForCausalLM.from_pretrained(run_dir / "pretrain")
    assert model.config.hidden_size == 32 and (run_dir / "pretrain" / "tokenizer.json").is_file()
    assert (run_dir / "config.yaml").is_file() and "val/ppl" in (run_dir / "report.md").read_text()
    assert (run_dir / "train_loss.png").stat().st_size > 1000

    weights = run_dir / "pretrain" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert _run(tmp_path) == 0
    assert weights.stat().st_mtime_ns == stamp, "a finished stage must be skipped on resume"

    assert _run(tmp_path, "stages.evaluate.trainer.limit_val_batches=1") == 0
    assert weights.stat().st_mtime_ns == stamp
    state2 = json.loads((run_dir / "state.json").read_text())["done"]
    assert state2["evaluate"]["identity"] != state["evaluate"]["identity"], "a changed stage reruns"


def test_bad_data_line_fails_cleanly(tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": "word " * 200}) for _ in range(5)) + "\n{oops\n")
    assert _run(tmp_path, f"data.corpus={corpus}") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: {corpus}:6: malformed JSON (Expecting property name enclosed in double quotes)"
    run_dir = tmp_path / "t"
    assert not (run_dir / "pretrain").exists() and not (run_dir / "state.json").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_fit_subcommand_with_stage_yaml(tmp_path):
    """The stage file is a Lightning CLI config: `lightning-align fit --config ... --trainer.max_steps=5`."""
    cmd = [sys.executable, "-m", "lightning_align", "fit", "--config", str(REPO / "conf/stages/pretrain.yaml"),
           "--trainer.max_steps=5", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
           f"--trainer.default_root_dir={tmp_path}", "--data.block_size=32", "--model.model.hidden_size=32",
           "--model.model.intermediate_size=64", "--model.model.num_hidden_layers=2", "--model.model.vocab_size=300"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "max_steps=5" in done.stderr + done.stdout
    typo = subprocess.run(cmd + ["--trainer.max_stepz=5"], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines()[-1].endswith("'trainer.max_stepz' (in "
                                                           f"{REPO / 'conf/stages/pretrain.yaml'}): unknown key")


def test_report_command_rebuilds(tmp_path, capsys):
    assert _run(tmp_path, "pipeline.stages={pretrain:fit}", "stages.pretrain.trainer.max_steps=3") == 0
    (tmp_path / "t" / "report.md").unlink()
    assert main(["report", str(tmp_path / "t")]) == 0
    assert "| pretrain | fit | val/ppl |" in (tmp_path / "t" / "report.md").read_text()
    assert main(["report", str(tmp_path / "nope")]) == 2


def test_reloaded_stage_model_gives_same_logits_as_next_stage_input(tmp_path):
    assert _run(tmp_path) == 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "t" / "pretrain").eval()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "t" / "evaluate").eval()
    ids = torch.randint(3, 300, (1, 12))
    with torch.no_grad():
        assert torch.equal(a(ids).logits, b(ids).logits)


def test_default_pipeline_composes_all_three_methods(tmp_path):
    """The packaged default runs enlarge → prune → recover → evaluate → sft → reward → mutual_taught → evaluate_policy,
    one LR curve over the first three, and validates as a whole before any work."""
    from lightning_align.pipeline import MultiStageTrainer
    from lightning_align.run_config import compose

    cfg = compose(PACKAGE_CONF, "config", [f"run.dir={tmp_path}"])
    trainer = MultiStageTrainer(cfg)
    assert [s.name for s in trainer.stages] == ["enlarge", "prune", "recover", "evaluate", "sft", "reward",
                                                "mutual_taught", "evaluate_policy"]
    widths = [s.config["model"]["init_args"]["model"].get("intermediate_size") for s in trainer.stages[:1]]
    assert widths[0] > cfg.model.intermediate_size, "the first stage trains an enlarged FFN"
    mt = trainer.stages[6].config["model"]["init_args"]
    assert mt["model"]["path"] == str(tmp_path / "default" / "sft") and mt["reward_model"] == str(tmp_path / "default" / "reward")
    assert not any(tmp_path.iterdir()), "planning writes nothing"
