"""Planning fills every stage from one source per value and refuses, before any stage runs, what cannot work."""
from __future__ import annotations

import pytest
import yaml

from lightning_align.cli import PACKAGE_CONF, main
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose
from lightning_align.stages.lightning_stage import instantiate


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
    assert "{run,fit,validate,report,prune,generate}" in capsys.readouterr().out


def test_a_shared_schedule_stage_trains_for_its_budget(tmp_path):
    enlarge = _plan(tmp_path, "pipeline=enlarge_prune", "pipeline.schedule.budgets.enlarge=30").stages[0]
    assert "max_steps" not in enlarge.config["trainer"], "the budget is the only place the step count is written"
    assert instantiate(enlarge.config, "stages.enlarge").trainer.max_steps == 30


@pytest.mark.parametrize("override, key, also", [
    ("pipeline.schedule.budgets.enlarge=0", "pipeline.schedule.budgets.enlarge", "positive integer"),
    ("stages.prune.trainer.callbacks.0.init_args.end_step=0", "stages.prune.trainer.callbacks.0.init_args.end_step",
     "start_step < end_step"),
    ("stages.recover.trainer.callbacks.0.init_args.stage=sft", "stages.recover.trainer.callbacks.0.init_args.stage",
     "no budget"),
    ("+stages.prune.trainer.max_steps=50", "stages.prune.trainer.max_steps", "pipeline.schedule.budgets.prune"),
])
def test_callback_arguments_are_checked_at_planning(tmp_path, capsys, override, key, also):
    assert main(["run", f"run.dir={tmp_path}", "pipeline=enlarge_prune", override]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: config key '{key}'") and also in line
    assert not tmp_path.joinpath("default").exists(), "nothing may run before every stage is planned"


@pytest.mark.parametrize("lora", ["+stages.prune.model.init_args.model.lora={r: 4}", "+model.lora={r: 4}"])
def test_lora_is_refused_on_a_stage_that_reshapes_the_model(tmp_path, capsys, lora):
    assert main(["run", f"run.dir={tmp_path}", "pipeline=enlarge_prune", lora]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: config key 'stages.prune.model.init_args.model.lora'")
    assert "at stages.prune.trainer.callbacks.0;" in line and "sliced or removed" in line
    assert not tmp_path.joinpath("default").exists()


def test_trusting_the_run_models_code_reaches_every_later_stage(tmp_path):
    """Later stages load the previous stage's output, which ships the same code as the run's model."""
    def trusted(trainer: MultiStageTrainer) -> dict[str, bool]:
        return {ctx.name: ctx.config["model"]["init_args"]["model"].get("trust_remote_code", False)
                for ctx in trainer.stages if "model" in (ctx.config.get("model") or {}).get("init_args", {})}

    assert not any(trusted(_plan(tmp_path)).values())
    assert all(trusted(_plan(tmp_path, "+model.trust_remote_code=true")).values())
