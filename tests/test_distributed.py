"""Lightning strategies that run on CPU (DDP over gloo, 2 processes); GPU-only paths are skipped with a reason."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_align.callbacks.block_removal import IterativeBlockRemoval
from lightning_align.callbacks.width_pruning import GradualWidthPruning
from lightning_align.cli import main
from lightning_align.errors import ConfigError
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.reward import RewardModule
from lightning_align.stages.strategy_check import check_strategy
from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES
from tests.ddp_worker import TARGET_WIDTH

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pipeline_under_ddp_two_gloo_processes(tmp_path):
    """Both ranks join each Lightning stage, rank zero alone runs the training-free prune stage; rank zero alone
    writes outputs, and the next stage starts from them."""
    cmd = [sys.executable, "-m", "lightning_align", "run", f"run.dir={tmp_path}", "run.name=ddp", *TINY_OVERRIDES,
           "pipeline=pretrain_prune", "trainer.strategy=ddp", "trainer.devices=2",
           "stages.pretrain.trainer.max_steps=6", "stages.pretrain.trainer.val_check_interval=3",
           "stages.prune.num_sequences=4", "stages.prune.block_size=32", "stages.prune.compare=false",
           "stages.prune.latency_repeats=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stderr + done.stdout
    assert (done.stderr + done.stdout).count("| pruned / dense |") == 1, "the prune stage ran once"
    assert "Traceback" not in done.stderr, "no rank may fail, rank zero's exit code alone would not say"
    state = json.loads((tmp_path / "ddp" / "state.json").read_text())["done"]
    assert list(state) == ["pretrain", "prune", "evaluate"]
    assert state["pretrain"]["metrics"]["val/ppl"] < state["pretrain"]["metrics"]["val/ppl_start"]
    assert (tmp_path / "ddp" / "prune" / "config.json").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16-mixed and FSDP need a CUDA device")
def test_fsdp_bf16_on_gpu(tmp_path):
    cmd = [sys.executable, "-m", "lightning_align", "run", f"run.dir={tmp_path}", *TINY_OVERRIDES, *PRETRAIN_EVALUATE,
           "trainer=fsdp"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_pruning_callbacks_remove_the_same_structure_on_both_ranks(tmp_path):
    """Each rank calibrates on its own batches, yet both mask the same neurons and skip the same blocks; rank zero
    exports the pruned model."""
    corpus = tmp_path / "texts.txt"
    corpus.write_text("\n\n".join(f"Section {i}: the quick brown fox jumps over lazy dog number {i * 7}." * 3
                                   for i in range(60)))
    done = subprocess.run([sys.executable, "-m", "tests.ddp_worker", "prune", str(tmp_path), str(corpus)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert first["calibration"] != second["calibration"], "the ranks must see different batches for this to test"
    assert first["order"] == second["order"] and len(first["order"]) == 2
    assert first["keep"] == second["keep"] and {len(keep) for keep in first["keep"]} == {TARGET_WIDTH}
    exported = json.loads((tmp_path / "model" / "config.json").read_text())
    assert exported["intermediate_size"] == TARGET_WIDTH


@pytest.mark.slow
def test_a_mutual_taught_round_agrees_on_both_ranks(tmp_path, tiny_lm_dir):
    """Rank zero samples, selects and refits; each rank trains on its own half of the pairs, and both end the round
    with the same table, policy and reward model."""
    reward_model = RewardModule(ModelSpec(path=str(tiny_lm_dir)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        torch.nn.init.normal_(reward_model.model.score.weight, std=0.5)
    r0 = reward_model.export(tmp_path / "r0")
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "tests.ddp_worker", "rounds", str(out), str(tiny_lm_dir), str(r0)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert len(first["batches"]) == len(second["batches"]) == 2, "8 pair slots, 2 ranks, batches of 2"
    assert first["batches"] != second["batches"]
    assert first["rows"] == second["rows"] and [row["round"] for row in first["rows"]] == [1]
    assert first["rows"][0]["m_pairs"] > 0, "the reward model was refitted"
    assert first["policy"] == second["policy"] and first["reward_model"] == second["reward_model"]
    assert (out / "model" / "config.json").is_file()


def test_rank_zero_work_reaches_every_rank_and_so_does_its_failure(tmp_path):
    """A training-free stage or a round's sampling runs on rank zero; if it fails, the other ranks must stop with its
    message rather than wait for a result forever."""
    done = subprocess.run([sys.executable, "-m", "tests.rank_zero_worker", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert first["value"] == second["value"] == "computed by rank 0"
    assert first["error"] == "ConfigError: config key 'stages.prune.model': no such model"
    assert second["error"] == "LightningAlignError: rank zero stopped: config key 'stages.prune.model': no such model"


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")


@pytest.mark.parametrize("overrides, key, problem", [
    pytest.param(["trainer=fsdp"], "trainer.accelerator", "gpu needs a CUDA device and this machine has none",
                 marks=NO_CUDA),
    (["trainer=fsdp", "trainer.accelerator=cpu"], "trainer.strategy", "fsdp runs on GPUs only"),
    pytest.param(["trainer=deepspeed"], "trainer.strategy", "deepspeed_stage_2 needs the deepspeed package, which is "
                 "not installed", marks=pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None,
                                                           reason="deepspeed is installed")),
])
def test_presets_are_refused_at_planning_where_they_cannot_run(tmp_path, capsys, overrides, key, problem):
    assert main(["run", f"run.dir={tmp_path}", "pipeline=enlarge_prune", *overrides]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: config key 'stages.enlarge.{key}'") and problem in line
    assert not tmp_path.joinpath("default").exists()


def test_pruning_callbacks_are_refused_under_strategies_they_cannot_run_under():
    width = GradualWidthPruning(start_step=0, end_step=2, target_width=8)
    blocks = IterativeBlockRemoval(num_blocks=1, start_step=0, end_step=2)
    for strategy in ("fsdp", {"class_path": "lightning.pytorch.strategies.FSDPStrategy"}):
        with pytest.raises(ConfigError, match="needs whole weights and gradients on every rank"):
            check_strategy(strategy, "gpu", [width])
    with pytest.raises(ConfigError, match="IterativeBlockRemoval skips blocks.*ddp_find_unused_parameters_true"):
        check_strategy("ddp", "cpu", [width, blocks])
    check_strategy("ddp_find_unused_parameters_true", "cpu", [width, blocks])
    check_strategy("ddp", "cpu", [width])
