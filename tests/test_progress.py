"""The loops Lightning does not run show a bar whose total is the number of steps they then take."""
import sys

import lightning as L
import pytest
from tqdm.auto import tqdm

from tests.conftest import PAIRS
from lightning_align.algorithms import progress
from lightning_align.algorithms.reward_training import RewardFitConfig, fit_reward_model
from lightning_align.algorithms.sampling import SamplingConfig, sample_responses
from lightning_align.models.reward_model import load_reward_model
from lightning_align.models.spec import ModelSpec
from lightning_align.modules.policy import PolicyModule


class RecordingBar(tqdm):
    """Counts `update` calls itself: a disabled bar (as under pytest) does not advance `n`."""

    bars: list["RecordingBar"] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps, self.desc_given = 0, kwargs["desc"]
        RecordingBar.bars.append(self)

    def update(self, n=1):
        self.steps += n
        return super().update(n)


@pytest.fixture
def bars(monkeypatch):
    RecordingBar.bars = []
    monkeypatch.setattr(progress, "tqdm", RecordingBar)
    return RecordingBar.bars


def test_sampling_counts_generate_batches(bars, tiny_lm, tokenizer):
    config = SamplingConfig(max_new_tokens=2, temperature=0.0, batch_size=4)
    sample_responses(tiny_lm, tokenizer, ["the quick", "a class", "the for"], 3, config, None)
    (bar,) = bars
    assert (bar.desc_given, bar.total, bar.steps, bar.leave) == ("sampling", 3, 3, False)
    assert bar.disable, "stderr under pytest is not a terminal"


def test_reward_refit_counts_epochs_times_batches(bars, tiny_lm_dir, tokenizer):
    rm = load_reward_model(ModelSpec(path=str(tiny_lm_dir)), tokenizer)
    fit_reward_model(rm, tokenizer, PAIRS, RewardFitConfig(epochs=2, batch_size=5), 64)
    (bar,) = bars
    assert (bar.total, bar.steps) == (2 * 3, 6)


def test_annotation_counts_batches(bars, tiny_lm_dir):
    policy = PolicyModule(ModelSpec(path=str(tiny_lm_dir)), annotate_batch_size=5)
    policy.trainer = L.Trainer(accelerator="cpu", logger=False)
    policy.annotate([dict(pair) for pair in PAIRS])
    (bar,) = bars
    assert (bar.total, bar.steps) == (3, 3)


def test_a_terminal_shows_the_bar_unless_switched_off(bars, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress.progress_bar(4, "sampling") as shown:
        assert not shown.disable
    monkeypatch.setattr(progress, "ENABLED", False)
    with progress.progress_bar(4, "sampling") as hidden:
        assert hidden.disable
