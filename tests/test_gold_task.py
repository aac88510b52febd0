import pytest

from lightning_align.data.gold_task import (
    gold_reward, gold_win_rate, preference_records, sft_records, task_prompts,
)


def test_gold_reward_hand_values():
    assert gold_reward(" the value is returned, unchanged.") == 1.0
    assert gold_reward(" call __init__() with x=3 now") == pytest.approx(3 / 5)
    assert gold_reward(" The Value Is Returned") == 0.0
    assert gold_reward(" too short") == 0.0


def test_gold_win_rate_counts_ties_half():
    new = [" a b c d", " A B C D", " a b c d"]
    old = [" A b c d", " a b c d", " a b c d"]
    assert gold_win_rate(new, old) == pytest.approx((1 + 0 + 0.5) / 3)


def test_records_are_deterministic_and_labelled_by_gold():
    prompts = task_prompts(200, seed=3)
    assert prompts == task_prompts(200, seed=3) and prompts != task_prompts(200, seed=4)
    pairs = preference_records(100, seed=3)
    assert len(pairs) == 100
    assert all(gold_reward(p["chosen"]) >= gold_reward(p["rejected"]) + 0.1 for p in pairs)
    assert any(len(p["rejected"].split()) < 4 for p in pairs)
    sft = sft_records(100, seed=3)
    assert all(gold_reward(r["response"]) >= 0.5 for r in sft)
