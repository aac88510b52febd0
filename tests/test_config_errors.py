"""Bad config input stops before any work with one line naming the key, exit code 2."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lightning_align.cli import PACKAGE_CONF, main
from lightning_align.config import condense_parser_error
from tests.conftest import TINY_OVERRIDES

ROUNDS = "stages.mutual_taught.trainer.callbacks.0.init_args"
SAMPLING = f"{ROUNDS}.sampling"


def _run(tmp_path: Path, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["run", *args, "pipeline=align", f"run.dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize(
    "override, key",
    [
        ("stages.pretrian.trainer.max_steps=5", "stages.pretrian.trainer.max_steps"),
        ("model.hiden_size=5", "model.hiden_size"),
        ("+stages.pretrain.model.init_args.optim.lrr=1", "stages.pretrain.model.init_args.optim.lrr"),
        ("stages.pretrain.model.init_args.optim.lr=abc", "stages.pretrain.model.init_args.optim.lr"),
        ("stages.pretrain.model.init_args.optim.lr=-1", "stages.pretrain.model.init_args.optim.lr"),
        ("model.hidden_size=0", "model.hidden_size"),
        ("data.corpus=missing.txt", "stages.pretrain.data.init_args.corpus"),
        ("pipeline.stages.pretrain=train", "pipeline.stages.pretrain"),
        ("+trainer.max_stepz=3", "stages.pretrain.trainer.max_stepz"),
        ("+stages.mutual_taught.data.init_args.max_length=32", "stages.mutual_taught.data.init_args.max_length"),
        ("+stages.reward.data.init_args.max_length=32", "stages.reward.data.init_args.max_length"),
        (f"{SAMPLING}.top_p=0", f"{SAMPLING}.top_p"),
        (f"{SAMPLING}.temperature=-1", f"{SAMPLING}.temperature"),
        (f"{SAMPLING}.max_new_tokens=0", f"{SAMPLING}.max_new_tokens"),
        (f"{ROUNDS}.tau=1.5", f"{ROUNDS}.tau"),
        (f"{ROUNDS}.checkpoints=0", f"{ROUNDS}.checkpoints"),
        (f"{ROUNDS}.fit.lr=0", f"{ROUNDS}.fit.lr"),
    ],
)
def test_bad_override_names_key_and_exits_2(tmp_path, capsys, override, key):
    code, line = _run(tmp_path, capsys, override)
    assert code == 2
    assert line.startswith("error: ") and f"'{key}'" in line
    assert not (tmp_path / "runs").exists(), "nothing may be written before the config is valid"


def test_typo_in_yaml_file_names_key(tmp_path, capsys):
    conf = tmp_path / "conf"
    shutil.copytree(PACKAGE_CONF, conf)
    stage = conf / "stages" / "pretrain.yaml"
    stage.write_text(stage.read_text().replace("weight_decay:", "weight_decai:"))
    code, line = _run(tmp_path, capsys, "--config-path", str(conf), *TINY_OVERRIDES)
    assert code == 2
    assert "'stages.pretrain.model.init_args.optim.weight_decai'" in line and "unknown key" in line


def test_missing_config_file(tmp_path, capsys):
    code, line = _run(tmp_path, capsys, "--config-path", str(tmp_path), "--config-name", "nope")
    assert code == 2 and "nope.yaml" in line


@pytest.mark.parametrize(
    "message, key",
    [
        ("Group 'trainer' does not accept option 'max_stepz'", "trainer.max_stepz"),
        ('Parser key "model":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
         "    - Problem with given class_path 'x.M':\n        Parser key \"optim.lr\":\n"
         "          Not of type PositiveFloat: -1 does not conform to restriction v>0",
         "model.init_args.optim.lr"),
        ("unrecognized arguments: --trainer.max_stepz=5", "trainer.max_stepz"),
    ],
)
def test_condense_parser_error(message, key):
    assert condense_parser_error(message)[0] == key
