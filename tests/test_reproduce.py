"""`python -m benchmarks.reproduce`: quick mode runs and renders, kept records survive `--only`, bad input exits 2."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmarks.claim_pruning import QUICK, REAL, split
from benchmarks.claim_pruning import run as run_pruning_claim
from benchmarks.reproduce import CLAIMS, main, public_args, record_name
from benchmarks.reproduce_types import Scale
from benchmarks.results_page import write_results
from lightning_align.data.corpus import load_texts
from lightning_align.models.checkpoint import save_model_dir
from lightning_align.models.tokenizer import train_bpe
from tests.tiny_decoders import single_thread, tiny_decoder

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
VERDICTS = ("**holds**", "**does not hold**", "**inconclusive at this scale**")


def verdict_rows(page: str) -> list[str]:
    return [line for line in page.splitlines() if line.startswith("| ") and any(v in line for v in VERDICTS)]


def test_quick_blockpruner_claim_runs_over_two_seeds_and_renders(tmp_path: Path) -> None:
    page = main(["--quick", "--only", "blockpruner", "--out", str(tmp_path / "runs"), "--results", str(tmp_path)])
    record = json.loads((tmp_path / "results" / "blockpruner.json").read_text())
    assert record["seeds"] == 2 and len(record["values"]) == 9  # 3 methods x 3 budgets
    assert all(len(v) == 2 and all(math.isfinite(x) and x > 1 for x in v) for v in record["values"].values())
    assert len(record["comparisons"]) == 6
    text = page.read_text()
    assert "## `blockpruner` (preliminary)" in text and len(verdict_rows(text)) == 6
    finding = next(line for line in text.splitlines() if line.startswith("Calibration perplexity, the objective"))
    assert finding.count("BlockPruner fits it better than layer-ppl in") == 3 and "of 2 seeds" in finding
    assert (tmp_path / "results" / "blockpruner.png").stat().st_size > 1000


def test_pruning_claim_on_a_model_directory_uses_the_whole_corpus(tmp_path: Path) -> None:
    tokenizer = train_bpe(load_texts("embedded")[:200], 300)
    model_dir = save_model_dir(tiny_decoder("llama", layers=4, vocab=len(tokenizer)), tokenizer, tmp_path / "m", {})
    result = run_pruning_claim(Scale(quick=True, seeds=1, out=tmp_path / "runs", model=model_dir))
    assert len(result.values) == 9 and all(len(v) == 1 for v in result.values.values())
    assert f"{REAL.calibration} calibration and {REAL.evaluation} evaluation blocks" in result.setup
    assert not (tmp_path / "runs").exists(), "a given model is pruned as it is, never trained"


def test_page_keeps_other_records_and_states_clear_verdicts(tmp_path: Path) -> None:
    records = tmp_path / "results"
    records.mkdir()
    base = [0.50, 0.52, 0.48, 0.51, 0.49]
    record = {"claim": "mutual_taught", "command": "python -m benchmarks.reproduce", "mode": "full", "seeds": 5,
              "date": "today", "machine": "Machine: test.", "wall_s": 1.0, "seconds": {"mutual_taught": 1.0},
              "values": {"a": [b + 0.1 for b in base], "b": base, "c": [b - 0.1 for b in base]},
              "comparisons": [["a", "b"], ["c", "b"]], "setup": "By hand.", "notes": []}
    (records / "mutual_taught.json").write_text(json.dumps(record))
    text = write_results(tmp_path, CLAIMS).read_text()
    rows = verdict_rows(text)
    assert "**holds**" in rows[0] and "**does not hold**" in rows[1]  # higher is better for this claim
    assert "(preliminary)" not in text and "Where it does not hold" in text
    assert "0.100 [0.100, 0.100]" in rows[0]  # a constant difference: a zero-width interval


def test_page_renders_the_per_round_table_with_means_over_the_seeds_that_reached_a_round(tmp_path: Path) -> None:
    records = tmp_path / "results"
    records.mkdir()
    row = lambda r, gold, prev: {"round": r, "gold_reward": gold, "rm_prev_accuracy_fresh": prev}  # noqa: E731
    per_round = {"mutual_taught": [[row(0, 0.5, 0.8), row(1, 0.6, 0.7), row(2, 0.7, None)],
                                   [row(0, 0.5, 0.8), row(1, 0.8, 0.5)]],  # stopped by the τ rule after round 1
                 "frozen_rm": [[row(0, 0.5, 0.8), row(1, 0.4, None)], [row(0, 0.5, 0.8), row(1, 0.2, None)]]}
    record = {"claim": "mutual_taught", "command": "python -m benchmarks.reproduce", "mode": "full", "seeds": 2,
              "date": "today", "machine": "Machine: test.", "wall_s": 1.0, "seconds": {"mutual_taught": 1.0},
              "values": {"a": [0.7, 0.8], "b": [0.4, 0.2]}, "comparisons": [["a", "b"]], "setup": "By hand.",
              "notes": [], "per_round": per_round}
    (records / "mutual_taught.json").write_text(json.dumps(record))
    lines = write_results(tmp_path, CLAIMS).read_text().splitlines()
    header = lines.index("| round | arm | policy mean gold reward | r_{t-1} accuracy on π_t pairs | seeds |")
    assert lines[header + 2:header + 7] == ["| 0 | mutual_taught | 0.500 | 0.800 | 2 |",
                                            "| 1 | mutual_taught | 0.700 | 0.600 | 2 |",
                                            "| 2 | mutual_taught | 0.700 | – | 1 |",
                                            "| 0 | frozen_rm | 0.500 | 0.800 | 2 |",
                                            "| 1 | frozen_rm | 0.300 | – | 2 |"]


def test_calibration_and_evaluation_draws_are_disjoint_and_vary_with_the_seed() -> None:
    blocks = torch.arange(40 * 3).reshape(40, 3)
    calibration, evaluation = split(blocks, QUICK, seed=0)
    assert (len(calibration), len(evaluation)) == (QUICK.calibration, QUICK.evaluation)
    assert not {int(r[0]) for r in calibration} & {int(r[0]) for r in evaluation}
    assert not torch.equal(split(blocks, QUICK, seed=1)[0], calibration)
    with pytest.raises(SystemExit):
        split(blocks[:5], QUICK, seed=0)


@pytest.mark.parametrize("extra", [["--only", "blockpruner"], ["--only", "mutual_taught"]])
def test_bad_model_arguments_exit_2(tmp_path: Path, extra: list[str], capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "m"
    model.mkdir()
    if "mutual_taught" in extra:
        (model / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--model", str(model), *extra, "--results", str(tmp_path)])
    assert exit_.value.code == 2 and "--model" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "named"), [(["--only", "blockpruner"], "--steps"),
                                              (["--only", "enlarge_prune", "--steps", "3"], "--steps"),
                                              (["--only", "enlarge_prune", "--corpus", "no/such.txt"], "--corpus")])
def test_a_setting_the_claims_cannot_use_exits_2(tmp_path: Path, extra: list[str], named: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--steps", "800", *extra, "--results", str(tmp_path)])
    assert exit_.value.code == 2 and named in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_enlarge_prune_claim_on_a_local_corpus_keeps_its_own_record_and_its_wall_time(tmp_path: Path) -> None:
    corpus = tmp_path / "my_corpus.txt"
    corpus.write_text("\n\n".join(load_texts("embedded")[:30]))

    def claim() -> dict:
        main(["--quick", "--only", "enlarge_prune", "--seeds", "1", "--corpus", str(corpus), "--out",
              str(tmp_path / "r"), "--results", str(tmp_path)])
        return json.loads((tmp_path / "results" / "enlarge_prune-my_corpus.json").read_text())

    record = claim()
    assert "corpus `my_corpus.txt`" in record["setup"] and str(tmp_path) not in record["command"]
    assert "--corpus my_corpus.txt" in record["command"] and len(record["values"]) == 6
    runs = tmp_path / "r" / "quick" / "enlarge_prune" / "my_corpus" / "seed0"
    assert str(corpus) in (runs / "enlarge_prune" / "config.yaml").read_text()
    assert record["reused"] == {}
    again = claim()
    assert again["values"] == record["values"] and again["seconds"] == record["seconds"], "kept, not re-timed"
    for timing in runs.glob("*/wall_seconds.json"):
        timing.unlink()  # as if made by a command that kept no wall time
    assert claim()["reused"] == {arm: 1 for arm in record["values"]}
    page = (tmp_path / "results.md").read_text()
    assert page.count("1 of 1 runs reused from an earlier command that kept no wall time") == 6


def test_another_scale_gets_its_own_record() -> None:
    assert record_name("enlarge_prune", None, None) == "enlarge_prune"
    assert record_name("enlarge_prune", None, 1600) == "enlarge_prune-1600steps"
    assert record_name("mutual_taught", None, 1600) == "mutual_taught", "the budget is the enlarge_prune claim's"
    assert record_name("blockpruner", Path("/m/smollm2"), None) == "blockpruner-smollm2"


@pytest.mark.slow
def test_quick_mode_runs_every_claim(tmp_path: Path) -> None:
    page = main(["--quick", "--out", str(tmp_path / "runs"), "--results", str(tmp_path)]).read_text()
    assert all(f"## `{name}` (preliminary)" in page for name in CLAIMS)
    assert len(verdict_rows(page)) == 6 + 5 + 4  # mutual_taught: no oracle arm in quick mode
    progress = next(line for line in page.splitlines() if line.startswith("The enlarged model when pruning starts"))
    assert "nan" not in progress and "convergence" in progress


def test_the_recorded_command_carries_no_machine_paths() -> None:
    argv = ["--full", "--only", "blockpruner", "--model", "/data/models/smollm2", "--seeds", "3", "--out", "/tmp/r",
            "--results=/tmp/d"]
    assert public_args(argv) == ["--full", "--only", "blockpruner", "--model", "smollm2", "--seeds", "3"]
    assert public_args(["--quick", "--model=/a/b/m"]) == ["--quick", "--model", "m"]
