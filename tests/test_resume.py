"""Mid-stage resume: a run SIGKILLed after a step checkpoint and run again ends exactly where an uninterrupted run
does; checkpoints of another stage identity are not resumed from; `fit --ckpt_path` reads the project's own."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lightning_align.cli import main
from lightning_align.data.preference import PreferenceDataModule
from lightning_align.data.resumable import EpochOrder, ResumableLoader
from lightning_align.stage_checkpoints import IDENTITY_FILE, LAST, StageCheckpoints
from lightning_align.stages.resumed_log import read_rows
from tests.conftest import TINY_OVERRIDES
from tests.test_mutual_taught_pipeline import SMALL_ALIGNMENT

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ["model.vocab_size=300", "model.hidden_size=32", "model.intermediate_size=32",
              "model.num_hidden_layers=2", "model.num_attention_heads=2", "model.num_key_value_heads=2",
              "model.max_position_embeddings=64"]
# enlarge -> prune (gradual FFN-width pruning on the shared LR curve, AdamW moments carried), 6 steps each
TWO_STAGES = ["pipeline=enlarge_prune", "~pipeline.stages.recover", "~pipeline.stages.evaluate",
              "pipeline.schedule.warmup_steps=1", "pipeline.schedule.budgets.enlarge=6",
              "pipeline.schedule.budgets.prune=6", "pipeline.schedule.budgets.recover=2",
              "stages.prune.trainer.callbacks.0.init_args.start_step=1",
              "stages.prune.trainer.callbacks.0.init_args.end_step=5",
              "stages.prune.trainer.callbacks.0.init_args.every_n_steps=1",
              "stages.enlarge.model.init_args.model.intermediate_size=84", "+trainer.enable_progress_bar=false",
              *TINY_MODEL,
              *[f"stages.{stage}.{key}" for stage in ("enlarge", "prune")
                for key in ("data.init_args.block_size=32", "data.init_args.batch_size=4",
                            "trainer.limit_val_batches=2", "trainer.log_every_n_steps=1")]]


# pipeline overrides, checkpoint interval, and the steps a kill may follow in each stage (in run order)
CASES = {
    "enlarge_prune": ([*TWO_STAGES, "run.checkpoint_every_n_steps=2"], {"enlarge": [2, 4], "prune": [2, 4]}),
    # SFT and preference data, then one Mutual-Taught stage killed twice (two rounds of 2 steps)
    "align": (["pipeline=align", *TINY_OVERRIDES, *SMALL_ALIGNMENT, "~pipeline.stages.evaluate",
               "run.checkpoint_every_n_steps=1"], {"sft": [2, 5], "reward": [3, 6], "mutual_taught": [1, 2]}),
}


def _command(tmp_path: Path, name: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "lightning_align", "run", f"run.dir={tmp_path}", f"run.name={name}", *overrides]


def _run_until(command: list[str], line: str) -> str:
    """Run `command`, SIGKILL it as soon as it logs `line`; returns what it logged."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = []
    for text in proc.stdout:
        seen.append(text)
        if line in text:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    return "".join(seen)


def _finish(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def _result(run_dir: Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    done = json.loads((run_dir / "state.json").read_text())["done"]
    return ({name: stage["metrics"] for name, stage in done.items()},
            {name: load_file(run_dir / name / "model.safetensors") for name in done})


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_sigkill_after_step_checkpoints_resumes_to_the_uninterrupted_result(tmp_path, case):
    overrides, steps = CASES[case]
    rng = random.Random(10)  # the kill steps: fixed, so CI is reproducible
    kills = [(stage, rng.choice(choices)) for stage, choices in steps.items()]
    if case == "align":
        kills.append(("mutual_taught", 3))  # killed again in the same stage, in its second round
    _finish(_command(tmp_path, "whole", overrides))
    command = _command(tmp_path, "killed", overrides)
    run_dir = tmp_path / "killed"
    for stage, step in kills:
        _run_until(command, f"checkpoint at step {step}: {run_dir / 'checkpoints' / stage / LAST}")
        assert (run_dir / "checkpoints" / stage / LAST).is_file()
    log = _finish(command)
    assert f"stage {kills[-1][0]} resumes from {run_dir / 'checkpoints' / kills[-1][0] / LAST}" in log
    whole, killed = _result(tmp_path / "whole"), _result(run_dir)
    assert killed[0] == whole[0], "the same final metrics, to the last bit"
    for stage, weights in whole[1].items():
        assert killed[1][stage].keys() == weights.keys()
        assert all(torch.equal(killed[1][stage][key], weights[key]) for key in weights), stage
    assert not (run_dir / "checkpoints").exists(), "a stage's checkpoints go once it is done"
    # Not checked for mutual_taught: after a resume from a round's last batch (an epoch's end), Lightning labels the
    # later rows one step low (values right, step column one behind).
    for stage in (name for name in steps if name != "mutual_taught"):
        whole_rows, killed_rows = (read_rows(tmp_path / name / "logs" / stage / "metrics.csv")
                                   for name in ("whole", "killed"))
        # the row of the batch that ended at a checkpoint reaches the disk after it; a kill before that loses it
        lost = [row for row in whole_rows if row not in killed_rows]
        assert {row["step"] for row in lost} <= {str(step - 1) for name, step in kills if name == stage}
        assert killed_rows == [row for row in whole_rows if row not in lost], "rows before a kill kept, once each"


def test_checkpoint_of_another_identity_is_deleted_and_not_resumed(tmp_path, caplog):
    stale = StageCheckpoints.of(tmp_path, "prune", "aaaa", every_n_steps=2)
    stale.prepare()
    (stale.directory / LAST).write_bytes(b"weights of the old config")
    assert stale.resume_path() == stale.directory / LAST
    fresh = StageCheckpoints.of(tmp_path, "prune", "bbbb", every_n_steps=2)
    assert fresh.resume_path() is None, "never resumed from a checkpoint of another identity"
    with caplog.at_level("INFO"):
        fresh.prepare()
    assert not (fresh.directory / LAST).exists()
    assert (fresh.directory / IDENTITY_FILE).read_text().strip() == "bbbb"
    assert "stage identity aaaa, now bbbb" in caplog.text
    fresh.clear()
    assert not (tmp_path / "checkpoints").exists()


def test_loader_resumes_at_the_batch_after_the_saved_position_in_any_epoch():
    data = torch.arange(23)
    epoch = [0]
    loader = ResumableLoader(data, 4, seed=7, epoch=lambda: epoch[0], drop_last=True)
    for current in range(3):
        epoch[0] = current
        whole = [batch.tolist() for batch in loader]
        assert loader.state_dict() == {"epoch": current, "served": 5}
        for served in (0, 2, 5):
            loader.resume = {"epoch": current, "served": served}
            assert [batch.tolist() for batch in loader] == whole[served:]
        loader.resume = {"epoch": current - 1, "served": 3}  # saved at an earlier epoch's batch: a full epoch now
        assert [batch.tolist() for batch in loader] == whole
    orders = []
    for current in range(2):
        epoch[0] = current
        orders.append([batch.tolist() for batch in loader])
    assert orders[0] != orders[1], "each epoch has its own order"


def test_fit_resumes_a_student_stage_from_its_own_checkpoint(tmp_path, caplog):
    """`fit --ckpt_path` reads a StudentModule checkpoint (hyperparameters and optimizer state are plain values, as
    `torch.load(weights_only=True)` wants) and continues it exactly: the model equals one trained without a stop."""
    model = [f"--model.model.{key}" for key in ("vocab_size=300", "hidden_size=32", "intermediate_size=64",
                                                "num_hidden_layers=2", "num_attention_heads=2",
                                                "num_key_value_heads=2", "max_position_embeddings=64")]
    ckpt = tmp_path / "step4.ckpt"
    args = ["fit", "--config", str(REPO / "conf" / "stages" / "pretrain.yaml"), *model, "--trainer.max_steps=6",
            "--trainer.limit_val_batches=1", "--trainer.val_check_interval=6", "--data.block_size=32",
            "--data.batch_size=4", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'logs'}"]
    checkpoint = ["--trainer.enable_checkpointing=true",
                  "--trainer.callbacks+=lightning_align.callbacks.step_checkpoint.StepCheckpoint",
                  f"--trainer.callbacks.path={ckpt}", "--trainer.callbacks.every_n_steps=4"]
    assert main([*args, *checkpoint, f"--export_dir={tmp_path / 'whole'}"]) == 0
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4
    with caplog.at_level("INFO"):
        assert main([*args, *checkpoint, f"--ckpt_path={ckpt}", f"--export_dir={tmp_path / 'resumed'}"]) == 0
    assert f"Restored all states from the checkpoint at {ckpt}" in caplog.text
    whole, resumed = (load_file(tmp_path / name / "model.safetensors") for name in ("whole", "resumed"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[key], resumed[key]) for key in whole), "steps 5-6 after the resume as without it"


def test_preference_data_resumes_with_the_reference_log_probs_it_was_annotated_with():
    """A resumed DPO stage keeps the initial policy's reference log-probs instead of annotating with the resumed
    weights: they travel in the checkpoint with the loader position."""
    saved = PreferenceDataModule(num_pairs=12, val_fraction=0.25)
    saved.setup("fit")
    records = saved.train_set.records + saved.val_set.records
    for i, record in enumerate(records):
        record["ref_chosen"], record["ref_rejected"] = -float(i), -float(i) - 0.5
    state = saved.state_dict()
    resumed = PreferenceDataModule(num_pairs=12, val_fraction=0.25)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    assert resumed.train_set.records + resumed.val_set.records == records


def test_ranks_share_one_epoch_order_and_resume_within_their_share():
    """Under DDP each rank takes every second index of the same permutation (Lightning keeps the sampler because it
    is a DistributedSampler); together the shares cover the epoch, and `start` skips within a rank's own share."""
    whole = list(EpochOrder(10, seed=3))
    shares = [EpochOrder(10, seed=3, rank=rank, world_size=2) for rank in (0, 1)]
    assert [list(share) for share in shares] == [whole[0::2], whole[1::2]]
    shares[1].begin(epoch=0, start=2)
    assert list(shares[1]) == whole[1::2][2:]
