"""A stage reruns when anything it reads changed, across invocations: an upstream stage or a user's data file."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lightning_align.cli import main
from lightning_align.stage_identity import CACHE_FILE, InputHashes
from tests.conftest import PRETRAIN_EVALUATE, TINY_OVERRIDES

QUICK = ["stages.pretrain.trainer.max_steps=4", "stages.pretrain.trainer.val_check_interval=2"]
PRETRAIN_ONLY = "~pipeline.stages.evaluate"


def _run(tmp_path: Path, *extra: str) -> int:
    return main(["run", f"run.dir={tmp_path}", "run.name=t", *TINY_OVERRIDES, *PRETRAIN_EVALUATE, *QUICK, *extra])


def _done(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "t" / "state.json").read_text())["done"]


def _stamp(tmp_path: Path, stage: str) -> int:
    return (tmp_path / "t" / stage / "model.safetensors").stat().st_mtime_ns


def test_upstream_change_made_by_an_earlier_invocation_reruns_later_stages(tmp_path):
    """The sequence from the field: change stage 1, run only stage 1, then the full command."""
    assert _run(tmp_path) == 0
    before = _done(tmp_path)
    assert _run(tmp_path, PRETRAIN_ONLY, "stages.pretrain.model.init_args.optim.lr=1e-3") == 0
    assert list(_done(tmp_path)) == ["pretrain", "evaluate"] and _done(tmp_path)["evaluate"] == before["evaluate"]
    pretrain_stamp = _stamp(tmp_path, "pretrain")
    evaluate_stamp = _stamp(tmp_path, "evaluate")

    assert _run(tmp_path, "stages.pretrain.model.init_args.optim.lr=1e-3") == 0
    after = _done(tmp_path)
    assert _stamp(tmp_path, "pretrain") == pretrain_stamp, "pretrain is done with this config: skipped"
    assert _stamp(tmp_path, "evaluate") != evaluate_stamp, "evaluate read the old pretrain model: it must rerun"
    assert after["evaluate"]["identity"] != before["evaluate"]["identity"]
    assert after["evaluate"]["metrics"]["val/ppl"] == after["pretrain"]["metrics"]["val/ppl"]
    assert after["pretrain"]["metrics"]["val/ppl"] != before["pretrain"]["metrics"]["val/ppl"]


def test_edited_data_file_reruns_the_stages_that_read_it(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    assert _run(tmp_path, f"data.corpus={corpus}") == 0
    stamps = {stage: _stamp(tmp_path, stage) for stage in ("pretrain", "evaluate")}
    assert _run(tmp_path, f"data.corpus={corpus}") == 0
    assert {stage: _stamp(tmp_path, stage) for stage in stamps} == stamps, "nothing changed: both skipped"

    corpus.write_text("a class defines attributes and methods for its instances. " * 400)
    assert _run(tmp_path, f"data.corpus={corpus}") == 0
    for stage, stamp in stamps.items():
        assert _stamp(tmp_path, stage) != stamp, f"{stage} reads the corpus and must rerun"
    cache = json.loads((tmp_path / "t" / CACHE_FILE).read_text())
    assert cache[str(corpus.resolve())]["sha256"] == hashlib.sha256(corpus.read_bytes()).hexdigest()


def test_input_hashes_are_cached_by_size_and_mtime(tmp_path):
    """The cached digest is trusted while size and mtime_ns are unchanged (a large model is read once), and
    recomputed when either changes."""
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "one"}\n')
    hashes = InputHashes(tmp_path)
    real = hashes.digest(data)
    assert real == hashlib.sha256(data.read_bytes()).hexdigest()
    hashes.entries[str(data)]["sha256"] = "cached"
    assert hashes.digest(data) == "cached"
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert hashes.digest(data) == real

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    first = hashes.digest(model)
    (model / "extra.bin").write_bytes(b"\0")
    assert hashes.digest(model) != first, "a directory's digest covers every file in it"
