"""A run directory is held by one run at a time, cleaned of dead writers' debris, named plainly, and stoppable."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lightning_align.cli import main
from lightning_align.run_lock import LOCK_FILE
from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
QUICK = ["stages.pretrain.trainer.max_steps=2", "stages.pretrain.trainer.val_check_interval=1",
         "~pipeline.stages.evaluate"]
HOLD = ("import sys, time; from pathlib import Path; from lightning_align.run_lock import run_lock\n"
        "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(600)")


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", f"run.dir={tmp_path}", "run.name=t", *TINY_OVERRIDES, *PRETRAIN_EVALUATE, *QUICK, *extra]


def test_second_run_is_refused_and_a_dead_holder_is_taken_over_with_its_debris(tmp_path, capsys):
    run_dir = tmp_path / "t"
    run_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_args(tmp_path)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == (f"error: config key 'run.name': run directory {run_dir} is in use by process {holder.pid} "
                           f"(lock {run_dir / LOCK_FILE}); wait for it to finish or choose another run.name")
        assert not (run_dir / "state.json").exists() and not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    dead = holder.pid
    assert (run_dir / LOCK_FILE).read_text().strip() == str(dead), "a killed holder leaves its lock file behind"
    (run_dir / f".pretrain.tmp{dead}").mkdir()
    (run_dir / f".pretrain.tmp{dead}" / "model.safetensors").write_bytes(b"half")
    (run_dir / f".state.json.tmp{dead}").write_text('{"done": ')
    (run_dir / ".pretrain.tmp1").mkdir()  # pid 1 is alive: not ours to remove

    assert main(_args(tmp_path)) == 0
    left = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))
    assert left == [".pretrain.tmp1"], "dead writers' temps removed, the lock released"
    assert list(json.loads((run_dir / "state.json").read_text())["done"]) == ["pretrain"]


@pytest.mark.parametrize("name", ["../x", "/tmp/abs", "a/b", "", ".."])
def test_run_name_must_be_a_plain_directory_name(tmp_path, capsys, name):
    workdir = tmp_path / "runs"
    assert main(["run", f"run.dir={workdir}", f"run.name={name}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: config key 'run.name': '{name}' is not a plain directory name")
    assert not workdir.exists() and not (tmp_path / "x").exists()


def test_model_dir_with_its_own_code_is_refused_without_a_prompt(tmp_path, tokenizer):
    """`auto_map` + an unknown model type: transformers would ask at the terminal whether to run the directory's
    code; the project passes trust_remote_code=False, so the answer 'y' waiting on stdin is never read."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "custom_lm", "auto_map": {
        "AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}}))
    marker = tmp_path / "ran"  # transformers imports a copy of the file from its cache: the marker path is absolute
    (model / "custom.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
    tokenizer.save_pretrained(model)
    command = [sys.executable, "-m", "lightning_align", "generate", "--model", str(model), "--prompt", "hi"]
    done = subprocess.run(command, input="y\n", capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"'{model}' needs to run the Python code it ships (config.json auto_map); set model.trust_remote_code=true "
        "only if you trust that code")
    assert not marker.exists()


@pytest.mark.slow
def test_ctrl_c_during_a_stage_stops_with_one_line_and_resumes(tmp_path):
    """Finished stages stay done; the interrupted one is neither exported nor marked done, and reruns."""
    align = ["pipeline=align", "~pipeline.stages.reward", "~pipeline.stages.mutual_taught", "~pipeline.stages.evaluate",
             "stages.pretrain.trainer.max_steps=2", "stages.pretrain.trainer.val_check_interval=1",
             "stages.sft.data.init_args.num_records=64", "stages.sft.trainer.limit_val_batches=1"]
    base = ["run", f"run.dir={tmp_path}", "run.name=t", *TINY_OVERRIDES, *align]
    proc = subprocess.Popen([sys.executable, "-m", "lightning_align", *base, "stages.sft.trainer.max_steps=100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            lines.append(line)
            if "stage sft (fit)" in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(300), "".join(lines[-20:])
        time.sleep(3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 130, "".join(lines[-20:])
    finally:
        proc.kill()
    reader.join(10)
    assert lines[-1].strip() == "interrupted during stage sft; run the same command to resume", "".join(lines[-20:])
    run_dir = tmp_path / "t"
    assert list(json.loads((run_dir / "state.json").read_text())["done"]) == ["pretrain"]
    assert not (run_dir / "sft").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "no temp dirs, no lock left behind"

    weights = run_dir / "pretrain" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert main([*base, "stages.sft.trainer.max_steps=2", "stages.sft.trainer.val_check_interval=1"]) == 0
    assert weights.stat().st_mtime_ns == stamp, "the finished stage stays done"
    assert list(json.loads((run_dir / "state.json").read_text())["done"]) == ["pretrain", "sft"]
