"""The student module trains: loss goes down on real data; schedule and optimizers behave."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from lightning_align.algorithms.schedule import warmup_cosine
from lightning_align.data.lm_datamodule import LMDataModule
from lightning_align.modules.optim import OptimConfig, build_optimizer
from lightning_align.modules.student import StudentModule


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=3)


def test_a_few_steps_lower_held_out_loss(tiny_spec):
    L.seed_everything(0)
    module = StudentModule(model=tiny_spec, optim=OptimConfig(lr=1e-2, warmup_steps=2))
    data = LMDataModule(block_size=32, batch_size=8)
    trainer = _trainer(25)
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]
    assert after["val/loss"] < before["val/loss"] - 0.5
    assert after["val/ppl"] == pytest.approx(torch.tensor(after["val/loss"]).exp().item(), rel=1e-3)


def test_warmup_cosine_shape():
    values = [warmup_cosine(s, total_steps=100, warmup_steps=10, min_lr_ratio=0.1) for s in range(120)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))
    assert all(a >= b for a, b in zip(values[10:100], values[11:100]))
    assert values[100] == pytest.approx(0.1) and values[119] == pytest.approx(0.1)
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-9)


def test_adamw8bit_optimizer_steps_on_cpu(tiny_spec):
    pytest.importorskip("bitsandbytes")
    module = StudentModule(model=tiny_spec)
    opt = build_optimizer(module.model.named_parameters(), OptimConfig(name="adamw8bit", lr=1e-2), 10)["optimizer"]
    assert type(opt).__name__ == "AdamW8bit"
    batch = torch.randint(3, 300, (2, 16))
    first = module.model(input_ids=batch, labels=batch).loss
    for _ in range(5):
        opt.zero_grad()
        module.model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
    assert module.model(input_ids=batch, labels=batch).loss < first


def test_no_weight_decay_on_norms(tiny_spec):
    module = StudentModule(model=tiny_spec)
    groups = build_optimizer(module.model.named_parameters(), OptimConfig(weight_decay=0.2), 10)["optimizer"].param_groups
    assert groups[0]["weight_decay"] == 0.2 and all(p.ndim >= 2 for p in groups[0]["params"])
    assert groups[1]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in groups[1]["params"])
