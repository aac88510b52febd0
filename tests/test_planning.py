"""Planning fills every stage from one source per value and refuses, before any stage runs, what cannot work."""
from __future__ import annotations

import pytest
import yaml

from lightning_align.cli import PACKAGE_CONF, main
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose


def _plan(tmp_path, *overrides: str) -> MultiStageTrainer:
    return MultiStageTrainer(compose(PACKAGE_CONF, "config", [f"run.dir={tmp_path}", *overrides]))


def _seeds(trainer: MultiStageTrainer) -> dict[str, int]:
    return {ctx.name: ctx.config["seed_everything"] for ctx in trainer.stages if "seed_everything" in ctx.config}


def test_run_seed_reaches_every_lightning_stage_and_a_stage_may_override_it(tmp_path):
    default = _seeds(_plan(tmp_path))
    assert len(default) == 8 and set(default.values()) == {42}
    seeds = _seeds(_plan(tmp_path, "run.seed=7", "+stages.reward.seed_everything=3"))
    assert seeds == {**{name: 7 for name in default}, "reward": 3}


def test_a_stage_file_alone_is_seeded_like_the_default_run(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(PACKAGE_CONF / "stages" / "pretrain.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["seed_everything"] == 42


def test_test_and_predict_are_not_offered(tmp_path, capsys):
    assert main(["run", f"run.dir={tmp_path}", "pipeline=align", "pipeline.stages.evaluate=test"]) == 2
    assert "'pipeline.stages.evaluate': unknown action 'test'" in capsys.readouterr().err
    assert not tmp_path.joinpath("default").exists()
    for command in ("test", "predict"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--config", str(PACKAGE_CONF / "stages" / "evaluate.yaml")])
        assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{run,fit,validate,report,prune}" in capsys.readouterr().out
