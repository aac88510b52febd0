"""Lightning strategies that run on CPU (DDP over gloo, 2 processes); GPU-only paths are skipped with a reason."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES


@pytest.mark.slow
def test_pipeline_under_ddp_two_gloo_processes(tmp_path):
    """Both ranks join each stage; rank zero alone writes outputs, and the next stage starts from them."""
    cmd = [sys.executable, "-m", "lightning_align", "run", f"run.dir={tmp_path}", "run.name=ddp", *TINY_OVERRIDES,
           *PRETRAIN_EVALUATE,
           "trainer.strategy=ddp", "trainer.devices=2", "stages.pretrain.trainer.max_steps=6",
           "stages.pretrain.trainer.val_check_interval=3"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stderr + done.stdout
    state = json.loads((tmp_path / "ddp" / "state.json").read_text())["done"]
    assert list(state) == ["pretrain", "evaluate"]
    assert state["pretrain"]["metrics"]["val/ppl"] < state["pretrain"]["metrics"]["val/ppl_start"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16-mixed and FSDP need a CUDA device")
def test_fsdp_bf16_on_gpu(tmp_path):
    cmd = [sys.executable, "-m", "lightning_align", "run", f"run.dir={tmp_path}", *TINY_OVERRIDES, *PRETRAIN_EVALUATE,
           "trainer.accelerator=gpu", f"trainer.devices={torch.cuda.device_count()}", "trainer.strategy=fsdp",
           "trainer.precision=bf16-mixed"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
