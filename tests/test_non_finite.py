"""A diverged stage stops with one line, exports nothing and leaves the previous good state; JSON stays strict."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_align.callbacks.stop_on_non_finite import StopOnNonFinite
from lightning_align.cli import main
from lightning_align.errors import NonFiniteError
from lightning_align.strict_json import dumps, finite_or_null
from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES

QUICK = ["stages.pretrain.trainer.max_steps=6", "stages.pretrain.trainer.val_check_interval=3"]


def _run(tmp_path: Path, *extra: str) -> int:
    return main(["run", f"run.dir={tmp_path}", "run.name=t", *TINY_OVERRIDES, *PRETRAIN_EVALUATE, *QUICK, *extra])


def _strict(text: str) -> dict:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_huge_learning_rate_stops_the_stage_and_keeps_the_previous_good_state(tmp_path, capsys):
    assert _run(tmp_path) == 0
    run_dir = tmp_path / "t"
    state_text = (run_dir / "state.json").read_text()
    weights = run_dir / "pretrain" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()

    assert _run(tmp_path, "stages.pretrain.model.init_args.optim.lr=1e4") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: stage pretrain: (train/loss|weight \S+) is (nan|inf|-inf) at step \d+; nothing was "
                        r"exported and the stage is not marked done \(lower the learning rate or check the data\)", err), err
    assert (run_dir / "state.json").read_text() == state_text, "the previous good state stays"
    assert weights.stat().st_mtime_ns == stamp, "nothing exported over the previous good model"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "no temp dirs, no lock left behind"
    _strict((run_dir / "state.json").read_text())
    _strict((run_dir / "pretrain" / "lightning_align.json").read_text())

    assert _run(tmp_path) == 0, "the good command still resumes"
    assert weights.stat().st_mtime_ns == stamp


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)


def test_non_finite_weight_stops_before_export():
    """The last optimizer step's loss was computed before it: the weights themselves are checked at train end."""
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    module = _Linear()
    StopOnNonFinite().on_train_end(trainer, module)
    with torch.no_grad():
        module.layer.weight[1, 0] = math.inf
    with pytest.raises(NonFiniteError, match=r"weight layer.weight is inf at step 0"):
        StopOnNonFinite().on_train_end(trainer, module)
    with pytest.raises(NonFiniteError, match=r"train/loss is nan"):
        StopOnNonFinite().on_train_batch_end(trainer, module, {"loss": torch.tensor(math.nan)}, None, 0)


def test_non_finite_values_are_written_as_null():
    payload = {"metrics": {"val/ppl": math.inf, "val/loss": 3.0}, "curve": [1.0, math.nan]}
    clean, replaced = finite_or_null(payload)
    assert clean == {"metrics": {"val/ppl": None, "val/loss": 3.0}, "curve": [1.0, None]}
    assert set(replaced) == {"metrics.val/ppl", "curve.1"} and math.isinf(replaced["metrics.val/ppl"])
    assert _strict(dumps(payload)) == clean
