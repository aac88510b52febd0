import math

import pytest
import torch

from lightning_align.algorithms.losses import bradley_terry_loss, dpo_loss


def test_dpo_is_ln2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -7.5, -1.25])
    other = torch.tensor([-2.0, -9.0, -4.0])
    loss, stats = dpo_loss(logps, other, logps.clone(), other.clone(), beta=0.3)
    assert loss.item() == pytest.approx(math.log(2.0))
    assert stats["rewards_margin"].item() == 0.0
    assert stats["rewards_accuracy"].item() == 0.0


def test_dpo_matches_hand_values():
    # pair 1: h = (-1 - -2) - (-3 - -2.5) = 1 + 0.5 = 1.5 ; pair 2: h = (-4 - -3) - (-2 - -2) = -1
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -3.0]), torch.tensor([-2.5, -2.0])
    beta = 0.5
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=beta)
    expected = (math.log1p(math.exp(-0.75)) + math.log1p(math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["rewards_chosen"].item() == pytest.approx((0.5 * 1.0 + 0.5 * -1.0) / 2)
    assert stats["rewards_rejected"].item() == pytest.approx((0.5 * -0.5 + 0.0) / 2)
    assert stats["rewards_margin"].item() == pytest.approx((0.75 - 0.5) / 2)
    assert stats["rewards_accuracy"].item() == pytest.approx(0.5)


def test_ipo_matches_hand_values():
    pc, pr = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
    rc, rr = torch.tensor([-2.0, -3.0]), torch.tensor([-2.5, -2.0])
    loss, _ = dpo_loss(pc, pr, rc, rr, beta=0.25, ipo=True)
    # target 1/(2*0.25) = 2 ; h = 1.5 and -1
    assert loss.item() == pytest.approx(((1.5 - 2) ** 2 + (-1 - 2) ** 2) / 2)


def test_dpo_gradient_pushes_chosen_up():
    pc = torch.tensor([-2.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    loss, _ = dpo_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=1.0)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.5)
    assert pr.grad.item() == pytest.approx(0.5)


def test_bradley_terry_matches_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 1.0, 1.0])
    loss, stats = bradley_terry_loss(chosen, rejected)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1.0)) + math.log(2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["accuracy"].item() == pytest.approx(1 / 3)
    assert stats["margin"].item() == pytest.approx(0.0)


def test_bradley_terry_margin_shifts_the_target():
    chosen, rejected = torch.tensor([2.0]), torch.tensor([1.0])
    loss, stats = bradley_terry_loss(chosen, rejected, margin=1.0)
    assert loss.item() == pytest.approx(math.log(2.0))
    assert stats["margin"].item() == pytest.approx(1.0)
    per_pair, _ = bradley_terry_loss(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 1.0]), margin=torch.tensor([0.0, 3.0]))
    assert per_pair.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0))) / 2, rel=1e-6)
