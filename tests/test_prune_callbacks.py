"""Callbacks on a real tiny student: the shared LR curve (also across a resume), gradual width pruning, KD."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from lightning_align.algorithms.losses import distillation_loss
from lightning_align.algorithms.schedule import RunSchedule
from lightning_align.callbacks.shared_schedule import SharedSchedule
from lightning_align.callbacks.width_pruning import GradualWidthPruning
from lightning_align.data.lm_datamodule import LMDataModule
from lightning_align.errors import ConfigError
from lightning_align.models.mlp_width import mlp_widths
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.optim import OptimConfig
from lightning_align.modules.student import DistillConfig, StudentModule
from lightning_align.stages.lightning_stage import check_stage_config

CONF = Path(__file__).resolve().parents[1] / "conf"

SPEC = ModelSpec(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, max_position_embeddings=64)
BUDGETS = {"enlarge": 6, "prune": 8, "recover": 6}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("corpus") / "texts.txt"
    path.write_text("\n\n".join(f"Section {i}: the quick brown fox jumps over lazy dog number {i * 7}." * 3
                                for i in range(60)))
    return str(path)


class LRRecorder(L.Callback):
    """The LR each optimizer step actually used."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _trainer(steps: int, callbacks: list[L.Callback], root: Path | None = None) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     callbacks=callbacks, default_root_dir=root)


def _data(corpus: str) -> LMDataModule:
    return LMDataModule(corpus=corpus, block_size=16, batch_size=4)


def _student(**kwargs) -> StudentModule:
    L.seed_everything(0)
    return StudentModule(model=kwargs.pop("model", SPEC), optim=OptimConfig(lr=1e-2, warmup_steps=2), **kwargs)


def test_stage_follows_the_run_curve_and_resumes_on_it(corpus: str, tmp_path: Path) -> None:
    expected = [1e-2 * RunSchedule(BUDGETS, 3).multiplier("prune", k) for k in range(8)]
    first = LRRecorder()
    trainer = _trainer(4, [SharedSchedule(BUDGETS, "prune", 3), first])
    trainer.fit(_student(), _data(corpus))
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    second = LRRecorder()
    resumed = _trainer(8, [SharedSchedule(BUDGETS, "prune", 3), second])
    resumed.fit(_student(), _data(corpus), ckpt_path=tmp_path / "mid.ckpt", weights_only=False)
    assert first.lrs + second.lrs == pytest.approx(expected, rel=1e-9)

    changed = _trainer(8, [SharedSchedule({**BUDGETS, "recover": 99}, "prune", 3)])
    with pytest.raises(ConfigError, match="another schedule"):
        changed.fit(_student(), _data(corpus), ckpt_path=tmp_path / "mid.ckpt", weights_only=False)


def test_gradual_width_pruning_reaches_target_and_exports_plain_hf(corpus: str, tmp_path: Path) -> None:
    pruning = GradualWidthPruning(target_width=16, start_step=2, end_step=7, every_n_steps=1)
    widths = []

    class WidthRecorder(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            widths.append(pruning.pruner.kept_widths()[0])

    module = _student()
    _trainer(9, [pruning, WidthRecorder()]).fit(module, _data(corpus))
    assert widths[0] == 48 and widths[-1] == 16 and all(b <= a for a, b in zip(widths, widths[1:]))
    assert len(set(widths)) >= 4, "neurons go a few at a time"
    assert mlp_widths(module.model) == [16, 16] and module.model.config.intermediate_size == 16
    module.export(tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    batch = torch.randint(3, 300, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch).logits, module.model.eval()(batch).logits)


def test_width_pruning_resumes_mid_window_with_its_masks(corpus: str, tmp_path: Path) -> None:
    class MaskRecorder(L.Callback):
        def __init__(self, pruning: GradualWidthPruning) -> None:
            self.pruning, self.at_start, self.after = pruning, None, []

        def on_train_start(self, trainer, pl_module) -> None:
            self.at_start = self.pruning.pruner.masks.clone()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.after.append(self.pruning.pruner.masks.clone())

    first = GradualWidthPruning(target_width=16, start_step=1, end_step=5)
    first_masks = MaskRecorder(first)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="{step}", every_n_train_steps=3,
                                                save_top_k=-1)
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[first, first_masks, saver])
    trainer.fit(_student(), _data(corpus))
    second = GradualWidthPruning(target_width=16, start_step=1, end_step=5)
    second_masks = MaskRecorder(second)
    module = _student()
    _trainer(6, [second, second_masks]).fit(module, _data(corpus), ckpt_path=tmp_path / "step=3.ckpt",
                                             weights_only=False)
    assert 16 < int(first_masks.after[2][0].sum()) < 48, "the checkpoint is inside the pruning window"
    assert torch.equal(second_masks.at_start, first_masks.after[2])
    assert mlp_widths(module.model) == [16, 16]


def test_stopping_inside_the_window_still_cuts_to_target(corpus: str) -> None:
    module = _student()
    _trainer(2, [GradualWidthPruning(target_width=10, start_step=1, end_step=50, scope="global", min_width=4)]).fit(
        module, _data(corpus))
    assert sum(mlp_widths(module.model)) == 20 and min(mlp_widths(module.model)) >= 4


def test_distillation_mixes_teacher_kl_into_the_loss(corpus: str, tmp_path: Path) -> None:
    teacher = _student(model=ModelSpec(**{**SPEC.__dict__, "intermediate_size": 96, "seed": 1}))
    teacher.export(tmp_path / "teacher")
    student = _student(distill=DistillConfig(teacher=str(tmp_path / "teacher"), weight=0.25, temperature=2.0))
    batch = torch.randint(3, 300, (2, 16))
    output = student.model(input_ids=batch, labels=batch)
    kd = distillation_loss(output.logits, teacher.model(input_ids=batch).logits, 2.0)
    expected = 0.75 * output.loss + 0.25 * kd
    student.log = lambda *args, **kwargs: None
    assert student.training_step(batch, 0).item() == pytest.approx(expected.item(), rel=1e-5)
    frozen = [p.clone() for p in student.teacher.parameters()]
    _trainer(3, []).fit(student, _data(corpus))
    assert all(torch.equal(a, b) for a, b in zip(frozen, student.teacher.parameters()))
    assert not student.teacher.training

    with pytest.raises(ConfigError, match="distill.teacher"):
        _student(distill=DistillConfig(teacher=str(tmp_path / "missing")))


@pytest.mark.parametrize("name", ["enlarge", "prune_width", "prune_blocks", "recover"])
def test_stage_files_parse_alone(name: str) -> None:
    """Each stage file is a valid Lightning CLI `--config` on its own (callback arguments type-checked)."""
    config = yaml.safe_load((CONF / "stages" / f"{name}.yaml").read_text())
    check_stage_config(config, f"stages.{name}")
    config["trainer"]["callbacks"][0]["init_args"]["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        check_stage_config(config, f"stages.{name}")
