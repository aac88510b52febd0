"""Corpus loading, line-numbered JSONL errors, splitting and packing."""
from __future__ import annotations

import json

import pytest
import torch

from lightning_align.data.corpus import embedded_texts, load_texts, split_texts
from lightning_align.data.lm_datamodule import LMDataModule
from lightning_align.data.packing import pack_blocks
from lightning_align.data.records import read_texts
from lightning_align.errors import ConfigError, DataError


def test_malformed_jsonl_line_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match=r"c\.jsonl:3: malformed JSON"):
        read_texts(path)


@pytest.mark.parametrize("line, problem", [
    ('{"txt": "a"}', "'text' is missing (standard language modeling format)"),
    ('{"text": 3}', "'text' must be a string, got int (standard language modeling format)"),
    ("[1, 2]", "expected a JSON object")])
def test_bad_records(tmp_path, line, problem):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(DataError) as err:
        read_texts(path)
    assert str(err.value) == f"{path}:2: {problem}"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_texts(str(tmp_path / "nope.txt"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_texts(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(DataError, match="empty"):
        load_texts(str(blank))


def test_txt_paragraphs_and_jsonl(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("first para\nstill first\n\nsecond\n")
    assert load_texts(str(txt)) == ["first para\nstill first", "second"]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"text": "x"}\n{"text": "y", "extra": 1}\n')
    assert load_texts(str(jl)) == ["x", "y"]


def test_embedded_split_is_deterministic_and_disjoint():
    texts = embedded_texts()
    assert len(texts) > 50 and sum(map(len, texts)) > 100_000
    train, val = split_texts(texts, 0.1, seed=0)
    assert (train, val) == split_texts(texts, 0.1, seed=0)
    assert not set(train) & set(val) and len(train) + len(val) == len(texts)
    assert split_texts(texts, 0.1, seed=1)[1] != val


def test_pack_blocks():
    blocks = pack_blocks([[1, 2, 3], [4, 5]], block_size=3, eos_id=0)
    assert torch.equal(blocks, torch.tensor([[1, 2, 3], [0, 4, 5]]))
    with pytest.raises(ValueError, match="do not fill one block"):
        pack_blocks([[1]], block_size=4)


def test_datamodule_refuses_missing_corpus(tmp_path):
    with pytest.raises(ConfigError, match="data.init_args.corpus"):
        LMDataModule(corpus=str(tmp_path / "missing.txt"))
