"""Every bad input a user can give stops with one line naming the key or file: config mistakes at planning, before
anything is written; data, permission and disk problems as soon as they are met, never as a traceback."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from lightning_align.cli import PACKAGE_CONF, main
from lightning_align.data.lm_datamodule import LMDataModule
from lightning_align.errors import ConfigError, DataError
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose
from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES

MUTUAL_TAUGHT = "stages.mutual_taught.model.init_args"
WIDTH_PRUNING = "stages.prune.trainer.callbacks.0.init_args"
ROUND_CALLBACKS = "stages.mutual_taught.trainer.callbacks"


def _plan(tmp_path: Path, *overrides: str) -> MultiStageTrainer:
    return MultiStageTrainer(compose(PACKAGE_CONF, "config", [f"run.dir={tmp_path / 'runs'}", *overrides]))


def _refused(tmp_path: Path, *overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        _plan(tmp_path, *overrides)
    assert not (tmp_path / "runs").exists(), "planning may not write anything"
    return err.value


def _error_line(capsys: pytest.CaptureFixture) -> str:
    """The last stderr line (a run prints Lightning's progress before it): `main` returned, so no traceback."""
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


@pytest.mark.parametrize("overrides, key, problem", [
    (["pipeline=enlarge_prune", f"{WIDTH_PRUNING}.target_width=0"], f"{WIDTH_PRUNING}.target_width", "positive"),
    (["pipeline=enlarge_prune", f"{WIDTH_PRUNING}.beta=1.5"], f"{WIDTH_PRUNING}.beta", "[0, 1)"),
    (["pipeline=align", f"{MUTUAL_TAUGHT}.beta=0"], f"{MUTUAL_TAUGHT}.beta", "PositiveFloat"),
    (["pipeline=align", f"{MUTUAL_TAUGHT}.beta=inf"], f"{MUTUAL_TAUGHT}.beta", "finite"),
    (["pipeline=align", f"+{MUTUAL_TAUGHT}.reward_quantization=8bit"], f"{MUTUAL_TAUGHT}.reward_quantization",
     "refitted every round"),
    (["pipeline=align", f"{ROUND_CALLBACKS}.0.init_args.checkpoints=0"], f"{ROUND_CALLBACKS}.0.init_args.checkpoints",
     "PositiveInt"),
    (["pipeline=align", f"{ROUND_CALLBACKS}.0.init_args.tau=1.5"], f"{ROUND_CALLBACKS}.0.init_args.tau",
     "ClosedUnitInterval"),
    (["pipeline=align", f"{ROUND_CALLBACKS}.0.init_args.fit.epochs=0"], f"{ROUND_CALLBACKS}.0.init_args.fit.epochs",
     "PositiveInt"),
    ([*PRETRAIN_EVALUATE, "stages.pretrain.trainer.max_steps=-5"], "stages.pretrain.trainer.max_steps", "-5"),
    ([*PRETRAIN_EVALUATE, "trainer.log_every_n_steps=0"], "stages.pretrain.trainer.log_every_n_steps", "PositiveInt"),
    ([*PRETRAIN_EVALUATE, "+stages.pretrain.trainer.accumulate_grad_batches=0"],
     "stages.pretrain.trainer.accumulate_grad_batches", "PositiveInt"),
    (["pipeline=enlarge_prune", "pipeline.schedule.min_lr_ratio=-3"], "pipeline.schedule.min_lr_ratio", "-3"),
    ([*PRETRAIN_EVALUATE, "stages.pretrain.model.init_args.optim.min_lr_ratio=-3"],
     "stages.pretrain.model.init_args.optim.min_lr_ratio", "-3"),
    ([*PRETRAIN_EVALUATE, "+stages.pretrain.model.init_args.optim.beta1=1.0"],
     "stages.pretrain.model.init_args.optim.beta1", "v<1.0"),
    ([*PRETRAIN_EVALUATE, "model.num_key_value_heads=3"], "model.num_key_value_heads",
     "divide num_attention_heads (4)"),
    ([*PRETRAIN_EVALUATE, "model.hidden_size=72", "model.num_attention_heads=8", "model.num_key_value_heads=8"],
     "model.num_attention_heads", "even size"),
    ([*PRETRAIN_EVALUATE, "+data.corpsu=/nonexistent.txt"], "data.corpsu", "no stage of this pipeline reads it"),
    (["pipeline=enlarge_prune", "+pipeline.schedule.warmup_stpes=3"], "pipeline.schedule.warmup_stpes",
     "unknown key"),
    ([*PRETRAIN_EVALUATE, "+pipeline.order=[pretrain]"], "pipeline.order", "unknown key"),
    ([*PRETRAIN_EVALUATE, "+run.nmae=x"], "run.nmae", "unknown key"),
    (["pipeline=align", f"{MUTUAL_TAUGHT}.reward_model=/nonexistent/rm"], f"{MUTUAL_TAUGHT}.reward_model",
     "does not exist"),
])
def test_bad_config_is_refused_at_planning(tmp_path, overrides, key, problem):
    err = _refused(tmp_path, *overrides)
    assert err.key == key and problem in err.problem


def test_a_dpo_beta_above_one_is_a_valid_objective(tmp_path):
    """β is the inverse temperature of DPO's KL-regularised objective: any finite positive value is one (above 1 it
    stays closer to the reference), so 1.5 plans; only <= 0 and non-finite values are refused (above)."""
    stages = {ctx.name: ctx.config for ctx in _plan(tmp_path, "pipeline=align", f"{MUTUAL_TAUGHT}.beta=1.5").stages}
    assert stages["mutual_taught"]["model"]["init_args"]["beta"] == 1.5


@pytest.mark.parametrize("make, problem", [
    (lambda path: None, "does not exist"),
    (lambda path: path.mkdir(), "is an empty directory (no config.json)"),
    (lambda path: path.write_text("weights"), "is a file, not a model directory"),
    (lambda path: (path.mkdir(), (path / "model.safetensors").write_text("")), "no config.json"),
    (lambda path: (path.mkdir(), (path / "config.json").write_text("{}")), "has no tokenizer"),
    (lambda path: (path.mkdir(), (path / "config.json").write_text("{\"model_type\": ")),
     "has a config.json that is not valid JSON"),
])
def test_a_run_model_path_that_is_not_a_model_dir_names_model_path(tmp_path, make, problem):
    model = tmp_path / "model"
    make(model)
    err = _refused(tmp_path, "pipeline=pretrained_prune", f"model.path={model}")
    assert err.key == "model.path" and problem in err.problem and str(model) in err.problem


def test_a_data_key_interpolated_by_a_stage_is_used(tmp_path, tiny_lm_dir):
    """A prune-only run has no datamodule, but its stage reads `data.corpus`, `data.block_size`... by interpolation."""
    run = ["pipeline=pretrained_prune", f"model.path={tiny_lm_dir}", "~pipeline.stages.recover",
           "~pipeline.stages.evaluate"]
    assert [ctx.name for ctx in _plan(tmp_path, *run).stages] == ["prune"]
    assert _refused(tmp_path, *run, "+data.max_length=32").key == "data.max_length"


def test_a_typo_in_a_users_data_group_file_is_refused(tmp_path, capsys):
    conf = tmp_path / "conf"
    shutil.copytree(PACKAGE_CONF, conf)
    (conf / "data" / "mine.yaml").write_text("corpsu: /nonexistent.txt\nval_fraction: 0.1\nseed: 0\n")
    assert main(["run", "--config-path", str(conf), "data=mine", f"run.dir={tmp_path / 'runs'}"]) == 2
    assert _error_line(capsys).startswith("error: config key 'data.corpsu': no stage of this pipeline reads it")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, problem", [
    (b"corpus: emb\xffedded\n", "mine.yaml:1: is not UTF-8 text: byte 0xff at byte offset 11"),
    (b"seed: 0\ncorpus: [unclosed\n", "mine.yaml:3: is not valid YAML: expected ',' or ']'"),
])
def test_a_users_yaml_that_does_not_read_names_file_and_line(tmp_path, capsys, content, problem):
    conf = tmp_path / "conf"
    shutil.copytree(PACKAGE_CONF, conf)
    (conf / "data" / "mine.yaml").write_bytes(content)
    assert main(["run", "--config-path", str(conf), "data=mine", f"run.dir={tmp_path / 'runs'}"]) == 2
    assert _error_line(capsys).startswith(f"error: {conf / 'data' / problem}")
    assert main(["fit", "--config", str(conf / "data" / "mine.yaml")]) == 2
    assert problem.split(":")[0] in _error_line(capsys)


def test_a_corrupt_state_file_is_named_with_the_fix_before_anything_is_written(tmp_path, capsys):
    trainer = _plan(tmp_path, *PRETRAIN_EVALUATE)
    state = trainer.run_dir / "state.json"
    state.parent.mkdir(parents=True)
    for content in (b"{\"done\": {\"pretrain\": ", b"[]", b"{\"done\": 3}", b"\xff"):
        state.write_bytes(content)
        with pytest.raises(DataError) as err:
            trainer.state()
        assert str(err.value).startswith(f"{state}: is corrupt") and "delete it" in str(err.value)
    assert main(["run", f"run.dir={tmp_path / 'runs'}", *PRETRAIN_EVALUATE]) == 2
    assert _error_line(capsys).startswith(f"error: {state}: is corrupt")
    assert [path.name for path in state.parent.iterdir()] == ["state.json"]
    assert main(["report", str(state.parent)]) == 2
    assert _error_line(capsys).startswith(f"error: {state}: is corrupt")


def _unwritable(tmp_path: Path) -> Path:
    """A directory nothing can be created in: one without write permission, or for root (who ignores modes) sysfs."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    target = locked if not os.access(locked, os.W_OK) else Path("/sys/lightning_align_test")
    try:
        (target / "probe").mkdir(parents=True)
    except PermissionError:
        return target
    pytest.skip("no directory on this machine refuses writes")


def test_an_unwritable_run_dir_is_one_line_naming_the_path(tmp_path, capsys):
    runs = _unwritable(tmp_path) / "runs"
    assert main(["run", f"run.dir={runs}", *PRETRAIN_EVALUATE]) == 2
    line = _error_line(capsys)
    assert str(runs.parent) in line and "give a run.dir or output directory you can write" in line


def test_a_run_dir_under_a_file_is_one_line_naming_the_path(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["run", f"run.dir={tmp_path / 'afile'}", *PRETRAIN_EVALUATE]) == 2
    assert _error_line(capsys).startswith(f"error: {tmp_path / 'afile' / 'default'}: Not a directory")
    assert main(["run", f"run.dir={tmp_path}", "run.name=afile", *PRETRAIN_EVALUATE]) == 2
    assert _error_line(capsys).startswith(f"error: {tmp_path / 'afile'}: File exists")


def test_a_full_disk_is_one_line(tiny_lm_dir, capsys):
    """/dev/full fails every write with ENOSPC, as a full disk does."""
    args = ["generate", "--model", str(tiny_lm_dir), "--prompt", "the", "--max-new-tokens", "2"]
    assert main([*args, "--output", "/dev/full"]) == 1
    assert _error_line(capsys).startswith("error: no space left on device")


def test_a_corpus_smaller_than_one_block_names_the_key_and_sizes(tmp_path, tokenizer):
    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(f"document {i} has a few words" for i in range(10)))
    data = LMDataModule(corpus=str(corpus), block_size=4096, batch_size=2)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(tokenizer=tokenizer))
    with pytest.raises(ConfigError) as err:
        data.setup("fit")
    assert err.value.key == "data.init_args.block_size"
    assert f"the train split of corpus '{corpus}' is too small" in err.value.problem
    assert "one block of 4096" in err.value.problem
    data = LMDataModule(corpus=str(corpus), block_size=8, batch_size=64)
    data.trainer = SimpleNamespace(lightning_module=SimpleNamespace(tokenizer=tokenizer))
    with pytest.raises(ConfigError) as err:
        data.setup("fit")
    assert err.value.key == "data.init_args.batch_size" and "fewer than one batch of 64" in err.value.problem


def test_a_too_small_corpus_in_a_run_is_named_under_its_stage(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text("one short document\n\nand another one\n")
    args = ["run", f"run.dir={tmp_path / 'runs'}", f"data.corpus={corpus}", *PRETRAIN_EVALUATE, *TINY_OVERRIDES]
    assert main(args) == 2
    line = _error_line(capsys)
    assert line.startswith("error: config key 'stages.pretrain.data.init_args.block_size': the train split")
    assert not (tmp_path / "runs" / "default" / "pretrain").exists()
