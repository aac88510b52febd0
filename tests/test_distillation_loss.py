"""Knowledge-distillation loss: hand-computed KL values, temperature scaling, masking."""
from __future__ import annotations

import math

import pytest
import torch

from lightning_align.algorithms.losses import distillation_loss


def test_two_token_vocab_by_hand() -> None:
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # p = (3/4, 1/4)
    student = torch.tensor([[0.0, 0.0]])  # q = (1/2, 1/2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert distillation_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_temperature_softens_and_rescales() -> None:
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])  # at T=2: p = (3/4, 1/4)
    student = torch.tensor([[0.0, 0.0]])
    expected = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert distillation_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_identical_logits_give_zero_and_mask_ignores_padding() -> None:
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    assert distillation_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    student = logits.clone()
    student[1, 3, 0] += 5.0  # differs only at a padded position
    mask = torch.ones(2, 5)
    mask[1, 3] = 0
    assert distillation_loss(student, logits, mask=mask).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(student, logits).item() > 1e-3
