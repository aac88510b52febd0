import pytest

from lightning_align.algorithms.mutual_taught import (
    e_step_pair, e_step_pairs, m_step_pairs, select_checkpoint, snapshot_batches, split_prompts, win_rate,
)


def test_split_prompts_disjoint_sized_and_seeded():
    prompts = [f"p{i}" for i in range(20)]
    splits = split_prompts(prompts, rounds=2, policy_size=5, reward_size=4, selection_size=3, seed=7)
    groups = splits.policy + [splits.reward, splits.selection]
    assert [len(g) for g in groups] == [5, 5, 4, 3]
    flat = [p for g in groups for p in g]
    assert len(set(flat)) == 17
    assert splits == split_prompts(prompts, 2, 5, 4, 3, seed=7)
    assert splits != split_prompts(prompts, 2, 5, 4, 3, seed=8)


def test_split_prompts_refuses_too_few():
    with pytest.raises(ValueError, match="18 prompts needed"):
        split_prompts(["a"] * 10, rounds=3, policy_size=4, reward_size=4, selection_size=2, seed=0)


def test_e_step_chosen_is_shortest_above_mean_rejected_is_lowest():
    responses = ["a long good answer", "ok", "good", "bad one", "medium answer"]
    scores = [3.0, 0.5, 2.5, -1.0, 2.5]  # mean 1.5 -> above: 0, 2, 4
    assert e_step_pair(responses, scores) == ("good", "bad one")


def test_e_step_ties_and_no_preference():
    assert e_step_pair(["xx", "yy", "z"], [1.0, 1.0, 1.0]) is None
    assert e_step_pair(["bb", "aa", "c", "d"], [2.0, 2.0, 0.0, 0.0]) == ("bb", "c")
    records = e_step_pairs(["p", "q"], [["a", "b"], ["c", "d"]], [[1.0, 1.0], [0.0, 1.0]])
    assert records == [{"prompt": "q", "chosen": "d", "rejected": "c"}]


def test_win_rate_counts_ties_half():
    assert win_rate([1.0, 2.0, 0.0, 3.0], [0.0, 2.0, 1.0, 1.0]) == (1 + 0.5 + 0 + 1) / 4
    assert win_rate([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_select_checkpoint_tau_rule():
    assert select_checkpoint([0.55, 0.7, 0.7, 0.6], tau=0.6) == (1, False)
    assert select_checkpoint([0.55, 0.4], tau=0.6) == (0, True)
    assert select_checkpoint([0.6], tau=0.6) == (0, False)


def test_m_step_epsilon_filter():
    old_scores = [0.0, 2.0, 0.0, 2.0]  # population std = 1.0
    new_scores = [1.0, 0.5, -0.99, 5.0]  # deltas: 1.0, -1.5 (dropped), -0.99 (kept), 3.0
    pairs, eps = m_step_pairs(["a", "b", "c", "d"], ["n1", "n2", "n3", "same"], ["o1", "o2", "o3", "same"],
                              new_scores, old_scores)
    assert eps == pytest.approx(1.0)
    assert pairs == [{"prompt": "a", "chosen": "n1", "rejected": "o1"},
                     {"prompt": "c", "chosen": "n3", "rejected": "o3"}]


def test_snapshot_batches_evenly_spaced_ending_on_the_last():
    assert snapshot_batches(4, 2) == {1, 3}
    assert snapshot_batches(5, 3) == {1, 3, 4}
    assert snapshot_batches(2, 1) == {1}
