"""Loggers come from the `logger` group next to the CSV the pipeline always keeps; the report reads only that CSV."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lightning_align.cli import main
from lightning_align.stages.loggers import LoggerSection, stage_loggers
from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES

SHORT = ["pipeline.stages={pretrain:fit}", "stages.pretrain.trainer.max_steps=12",
         "+stages.pretrain.trainer.log_every_n_steps=2"]


def _run(tmp_path: Path, *extra: str) -> int:
    return main(["run", f"run.dir={tmp_path}", "run.name=t", *TINY_OVERRIDES, *PRETRAIN_EVALUATE, *SHORT, *extra])


def test_report_plots_the_loss_when_the_user_logs_to_tensorboard_only(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    own = "+stages.pretrain.trainer.logger={class_path:lightning.pytorch.loggers.TensorBoardLogger," \
          f"init_args:{{save_dir:{tmp_path / 'own'}}}}}"
    assert _run(tmp_path, "logger=tensorboard", own) == 0
    run_dir = tmp_path / "t"
    assert list((run_dir / "tensorboard" / "t" / "pretrain").glob("events.out.tfevents.*"))
    assert list((tmp_path / "own").rglob("events.out.tfevents.*")), "the stage's own logger is kept"
    assert (run_dir / "logs" / "pretrain" / "metrics.csv").is_file()
    assert "![training loss](train_loss.png)" in (run_dir / "report.md").read_text()
    assert (run_dir / "train_loss.png").is_file()


@pytest.mark.parametrize("kind", ["wandb", "mlflow"])
def test_a_logger_without_its_package_is_one_line_and_exit_2(tmp_path: Path, capsys, kind: str) -> None:
    if importlib.util.find_spec(kind):
        pytest.skip(f"{kind} is installed")
    assert main(["run", f"run.dir={tmp_path}", f"logger={kind}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config key 'logger'")
    assert f"logger={kind} needs the {kind} package" in err[0] and "conf/logger/" in err[0]
    assert not (tmp_path / "default").exists()


def test_each_logger_names_the_run_and_the_stage(tmp_path: Path) -> None:
    section = LoggerSection(kinds=["csv", "tensorboard", "wandb", "mlflow"])
    csv, tensorboard, wandb, mlflow = stage_loggers(section, False, tmp_path, "exp1", "prune")
    assert csv["init_args"] == {"save_dir": str(tmp_path / "logs"), "name": "prune", "version": ""}
    assert (tensorboard["init_args"]["name"], tensorboard["init_args"]["version"]) == ("exp1", "prune")
    assert (wandb["init_args"]["group"], wandb["init_args"]["name"], wandb["init_args"]["offline"]) == (
        "exp1", "prune", True)
    assert (mlflow["init_args"]["experiment_name"], mlflow["init_args"]["run_name"]) == ("exp1", "prune")
    assert mlflow["init_args"]["tracking_uri"].startswith("file:")


@pytest.mark.parametrize("kind", ["wandb", "mlflow"])
def test_an_installed_offline_logger_constructs(tmp_path: Path, kind: str) -> None:
    pytest.importorskip(kind)
    from jsonargparse import ArgumentParser
    from lightning.pytorch.loggers import Logger

    config = stage_loggers(LoggerSection(kinds=[kind]), None, tmp_path, "exp1", "prune")[1]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--logger", type=Logger)
    assert isinstance(parser.instantiate_classes(parser.parse_object({"logger": config})).logger, Logger)
