"""Calibration from a .npy stream of token ids: blocks are the ids as given, and ids the tokenizer lacks are refused."""
import numpy as np
import pytest

from lightning_align.data.calibration import calibration_sets
from lightning_align.errors import ConfigError, DataError
from lightning_align.stages.prune import parse_config


def test_token_id_file_is_cut_into_blocks_of_exactly_those_ids(tmp_path, tokenizer):
    ids = np.arange(83, dtype=np.int32) % len(tokenizer)
    path = tmp_path / "ids.npy"
    np.save(path, ids)
    calibration, evaluation = calibration_sets(tokenizer, str(path), 8, 6, 4, None, seed=0)
    assert (calibration.shape, evaluation.shape) == ((6, 8), (4, 8))
    given = sorted(map(tuple, ids[:80].reshape(10, 8).tolist()))
    assert sorted(map(tuple, calibration.tolist() + evaluation.tolist())) == given


@pytest.mark.parametrize("ids, problem", [
    (lambda vocab: np.array([1, 2, vocab] * 20), "token id {vocab} is outside the tokenizer's vocabulary of {vocab}"),
    (lambda vocab: np.array([1, -1] * 20), "token id -1 is outside"),
    (lambda vocab: np.ones((4, 8), dtype=np.int64), "expected a 1-D integer array"),
    (lambda vocab: np.array([{"a": 1}], dtype=object), "not a .npy array of token ids"),
])
def test_a_token_id_file_the_tokenizer_cannot_read_is_refused_naming_it(tmp_path, tokenizer, ids, problem):
    path = tmp_path / "ids.npy"
    np.save(path, ids(len(tokenizer)), allow_pickle=True)
    with pytest.raises(DataError) as err:
        calibration_sets(tokenizer, str(path), 8, 2, 2, None, seed=0)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and problem.format(vocab=len(tokenizer)) in message
    assert "\n" not in message


def test_a_token_id_file_is_not_split_into_documents(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.arange(64))
    assert parse_config({"calibration": str(path), "num_blocks": 1, "val_fraction": None}, "prune").calibration
    with pytest.raises(ConfigError, match="prune.val_fraction"):
        parse_config({"calibration": str(path), "num_blocks": 1, "val_fraction": 0.1}, "prune")
