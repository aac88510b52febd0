"""The IFPruning stage module and its data: joint training, prompt-only predictor input, export and reload."""
from __future__ import annotations

import lightning as L
import pytest
import torch

import lightning_align
from lightning_align.algorithms.instruction_following_pruning import IFPruningLM
from lightning_align.data.instruction_text_mix import InstructionTextMixDataModule, collate_examples, mix
from lightning_align.errors import ConfigError
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.ifpruning import IFPruningModule, PredictorConfig
from lightning_align.modules.optim import OptimConfig


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     check_val_every_n_epoch=1000, limit_val_batches=2)


def test_mix_keeps_the_ratio_and_masks_split_prompt_from_loss():
    instructions = [([1, 2, 3, 4], 2)] * 6
    blocks = [([5, 6, 7, 8, 9], 3), ([9, 8, 7, 6, 5], 3)]
    mixed = mix(instructions, blocks, 0.75, seed=0)
    assert len(mixed) == 8 and sum(prompt == 3 for _, prompt in mixed) == 2
    batch = collate_examples([([1, 2, 3, 4], 2), ([5, 6, 7, 8, 9], 3)], pad=0)
    assert batch["prompt_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]
    assert batch["response_mask"].tolist() == [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_joint_training_lowers_loss_and_exports_a_reloadable_model(tiny_lm_dir, tmp_path):
    torch.manual_seed(0)
    module = IFPruningModule(ModelSpec(path=str(tiny_lm_dir)), PredictorConfig(num_layers=1, hidden=16),
                             active_width=24, optim=OptimConfig(lr=5e-3, warmup_steps=0, min_lr_ratio=1.0))
    data = InstructionTextMixDataModule(num_records=64, max_length=24, block_size=24, prompt_tokens=6,
                                        batch_size=8, val_fraction=0.25)
    trainer = _trainer(20)
    head_before = module.model.predictor.head.net[0].weight.detach().clone()
    start = trainer.validate(module, datamodule=data, verbose=False)[0]["val/loss"]
    trainer.fit(module, datamodule=data)
    end = trainer.validate(module, datamodule=data, verbose=False)[0]
    assert end["val/loss"] < start - 0.5
    assert 0.0 < end["val/mask_overlap"] <= 1.0
    assert not torch.equal(head_before, module.model.predictor.head.net[0].weight)
    assert bool(module.prior_ready) and module.model.predictor.head.net[2].bias.std() > 0.5  # prior, then training
    module.export(tmp_path / "out", {"stage": "ifprune"})
    loaded = lightning_align.load_pretrained(tmp_path / "out")
    assert isinstance(loaded, IFPruningLM) and loaded.active_width == 24 and loaded.prompt_tokens == 6
    batch = next(iter(trainer.datamodule.val_dataloader()))
    length = int(batch["prompt_mask"].sum(1).max())
    prompt = batch["input_ids"][:, :length], batch["prompt_mask"][:, :length].long()
    assert torch.equal(loaded.select(*prompt), module.model.eval().select(*prompt))


def test_a_separate_predictor_model_is_trained_and_saved(tiny_lm_dir, tmp_path):
    module = IFPruningModule(ModelSpec(path=str(tiny_lm_dir)), PredictorConfig(path=str(tiny_lm_dir), num_layers=2),
                             active_ratio=0.5)
    assert module.model.predictor.backbone is not None and module.model.active_width == 32
    module.model.prompt_tokens = 4
    module.export(tmp_path / "out")
    loaded = lightning_align.load_pretrained(tmp_path / "out")
    ids = torch.randint(3, 300, (2, 8))
    with torch.no_grad():
        assert torch.allclose(module.model.eval()(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("kwargs, key", [
    (dict(active_width=64), "active_width"),
    (dict(active_width=8, active_ratio=0.5), "active_width"),
    (dict(active_ratio=1.0), "active_ratio"),
    (dict(active_ratio=0.5, predictor=PredictorConfig(num_layers=3)), "predictor.num_layers"),
])
def test_bad_settings_name_their_key(tiny_lm_dir, kwargs, key):
    with pytest.raises(ConfigError, match=f"model.init_args.{key}"):
        IFPruningModule(ModelSpec(path=str(tiny_lm_dir)), **kwargs)


def test_bad_mix_settings_name_their_key():
    with pytest.raises(ConfigError, match="instruction_ratio"):
        InstructionTextMixDataModule(instruction_ratio=0.0)
    with pytest.raises(ConfigError, match="prompt_tokens"):
        InstructionTextMixDataModule(block_size=16, prompt_tokens=16)


def test_validation_before_training_already_uses_the_prior(tiny_lm_dir):
    module = IFPruningModule(ModelSpec(path=str(tiny_lm_dir)), PredictorConfig(hidden=8), active_width=24)
    data = InstructionTextMixDataModule(num_records=32, max_length=24, block_size=24, prompt_tokens=6, batch_size=8)
    _trainer(1).validate(module, datamodule=data, verbose=False)
    assert bool(module.prior_ready) and module.model.predictor.head.net[2].bias.abs().sum() > 0


def test_a_datamodule_without_prompts_is_refused(tiny_lm_dir):
    from lightning_align.data.lm_datamodule import LMDataModule

    module = IFPruningModule(ModelSpec(path=str(tiny_lm_dir)), PredictorConfig(hidden=8), active_width=24)
    with pytest.raises(ConfigError, match="data.class_path.*InstructionTextMixDataModule"):
        _trainer(1).fit(module, datamodule=LMDataModule(block_size=16, batch_size=2))
