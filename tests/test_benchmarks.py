"""`python -m benchmarks --quick`: every quick comparison runs and the page's generated part is replaced in place."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.block_pruner_search import Sizes, compare_on_model, steps_on_model
from benchmarks.page import END, START, spread, write_page
from benchmarks.registry import BENCHMARKS
from lightning_align.data.corpus import load_texts
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.tokenizer import train_bpe
from tests.tiny_decoders import single_thread, tiny_decoder

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


@pytest.fixture(scope="module")
def quick_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The page after one `--quick` run of every benchmark (the run is shared: it takes most of a minute)."""
    page = tmp_path_factory.mktemp("bench") / "benchmarks.md"
    page.write_text("# Benchmarks\n\nHand-written section.\n")
    main(["--quick", "--page", str(page)])
    return page.read_text()


def test_quick_mode_fills_the_page_and_keeps_its_hand_written_part(quick_page: str) -> None:
    text = quick_page
    assert text.startswith("# Benchmarks\n\nHand-written section.\n")
    quick = [name for name, b in BENCHMARKS.items() if "quick" in b.modes]
    assert all(f"### {name}\n" in text for name in quick)
    assert "Identical order and perplexities: True" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    this, official = (int(rows[k].split(" | ")[1].replace(",", "")) for k in ("this project", "official (counted)"))
    assert official > 3 * this, "the quick search does at least 3x fewer block-forwards than the official one"
    pruned = rows["30%"].split(" | ")
    assert 0 < float(pruned[2]) < 1, "the pruned model has fewer parameters"
    if importlib.util.find_spec("trl") is None:
        assert text.count("| not installed |") == 4


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL (the `bench` extra) is not installed")
def test_quick_peer_rows_are_measured_against_trl(quick_page: str) -> None:
    section = quick_page.split("### peers\n", 1)[1].split("\n### ", 1)[0]
    ratios, memory = section.split("Median seconds", 1)[0], section.split("Peak memory", 1)[1]
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")
            for part in (ratios, memory) for line in part.splitlines()
            if line.startswith("| ") and not line.startswith(("| what", "| arm"))}
    assert set(rows) == {"DPO step (reference precomputed)", "DPO step (this project: reference precomputed, its only "
                         "way)", "DPO setup (reference log-probs of all pairs)", "reward-model step",
                         "sampling (`sample_responses`, greedy)", "project", "trl"}
    for name, cells in rows.items():
        assert float(cells[-1].split(" ")[0]) > 0, f"{name}: {cells[-1]}"
    assert "same texts on both sides: True" in section
    assert float(section.split("TRL / this project (training MiB): ", 1)[1].split(".\n")[0].split(" ")[0]) > 0


def test_rewriting_the_page_replaces_only_the_generated_part(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\nBefore.\n")
    write_page(page, ["first run"], {"one": "old one", "two": "old two"})
    page.write_text(page.read_text() + "\nAfter.\n")
    write_page(page, ["second run"], {"two": "new two"})
    text = page.read_text()
    assert text.count(START) == 1 and text.count(END) == 1 and "first run" not in text
    assert text.startswith("# Benchmarks\n\nBefore.\n") and "second run" in text and text.endswith("\nAfter.\n")
    assert "### one\n\nold one" in text and "### two\n\nnew two" in text and "old two" not in text


def test_a_missing_model_directory_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--model", str(tmp_path)])
    assert exit_.value.code == 2 and "no config.json" in capsys.readouterr().err


def _tiny_model_dir(tmp_path: Path) -> Path:
    tokenizer = train_bpe(load_texts("embedded")[:200], 300)
    return save_model_dir(tiny_decoder("llama", layers=3, vocab=len(tokenizer)), tokenizer, tmp_path / "m", {})


def test_block_pruner_steps_on_a_model_directory(tmp_path: Path) -> None:
    model_dir = _tiny_model_dir(tmp_path)
    text = steps_on_model(model_dir, Sizes(layers=0, hidden=0, sequences=3, length=16, blocks=2, batch=2))
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |", "| all |"))]
    assert len(rows) == 3
    # official: a full 6-block forward per candidate, 6 then 5 candidates, 3 sequences
    assert [int(r[5].replace(",", "")) for r in rows] == [6 * 6 * 3, 5 * 6 * 3, 11 * 6 * 3]
    assert all(int(r[4].replace(",", "")) < int(r[5].replace(",", "")) for r in rows)


def test_the_three_searches_agree_side_by_side_on_a_model_directory(tmp_path: Path) -> None:
    text, same = compare_on_model(_tiny_model_dir(tmp_path), Sizes(layers=0, hidden=0, sequences=3, length=16,
                                                                   blocks=2, batch=2), repeats=2)
    assert same and "Identical order and perplexities: True" in text
    cells = {line.split(" | ")[0].lstrip("| "): line.split(" | ")
             for line in text.splitlines() if line.startswith("| ") and line[2].isalpha() and "search" not in line}
    forwards = {name: int(cell[1].replace(",", "")) for name, cell in cells.items()}
    heads = {name: int(cell[3].replace(",", "")) for name, cell in cells.items()}
    extra = forwards["this project"] - forwards["without the LM-head bound"]
    assert 0 <= extra <= 3 * 2 * 6, "the bound adds at most the running stream's tail per step (for its shortlist)"
    assert forwards["without the LM-head bound"] <= forwards["prefix reuse only (neither)"] < forwards["naive"]
    assert forwards["naive"] <= forwards["official (counted)"]
    assert heads["without the LM-head bound"] == heads["naive"] == heads["official (counted)"]


def test_spread_is_the_median_with_min_and_max() -> None:
    assert spread([3.0, 1.0, 2.0]) == "2.00 (1.00-3.00)" and spread([1.5]) == "1.50"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_mode_without_a_cuda_device_is_refused(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--gpu"])
    assert exit_.value.code == 2 and "no CUDA device" in capsys.readouterr().err


def test_gpu_mode_refuses_a_benchmark_without_a_gpu_form(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--gpu", "--only", "annotate-memory"])
    assert exit_.value.code == 2 and "annotate-memory has no GPU form" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_gpu_mode_runs_the_gpu_forms_in_bf16(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    main(["--quick", "--gpu", "--page", str(page)])
    text = page.read_text()
    gpu = [name for name, b in BENCHMARKS.items() if "quick" in b.modes and "cuda" in b.devices]
    assert all(f"### {name}, gpu\n" in text for name in gpu) and "CUDA in bf16" in text
    assert "cuda, bfloat16" in text and "Identical order and perplexities: True" in text
    assert "peak GPU MiB" in text
