"""`lightning-align prune` and the `prune` stage: outputs, reload, and bad inputs refused before any work."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_align.algorithms.block_pruner import PruneStep, SearchCheckpoint, SearchResult, StopRule, block_pruner
from lightning_align.cli import PACKAGE_CONF, main
from lightning_align.data.calibration import split_sizes
from lightning_align.data.corpus import load_texts
from lightning_align.models.blocks import Block, remove_blocks
from lightning_align.models.checkpoint import load_pretrained, read_metadata, save_model_dir
from lightning_align.models.tokenizer import train_bpe
from lightning_align.pipeline import MultiStageTrainer
from lightning_align.run_config import compose
from lightning_align.errors import ConfigError
from lightning_align.eval.prune_report import MethodRun, budget_rows
from lightning_align.stages import ACTIONS
from lightning_align.stages.prune import METHODS as PRUNE_METHODS
from lightning_align.stages.prune import SEARCH_STATE
from tests.conftest import TINY_OVERRIDES
from tests.tiny_decoders import single_thread, tiny_decoder

FAST = ["--num-sequences", "3", "--block-size", "16"]

pytestmark = pytest.mark.usefixtures(single_thread.__name__)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = train_bpe(load_texts("embedded")[:200], 300)
    model = tiny_decoder("llama", layers=3, vocab=len(tokenizer))
    return save_model_dir(model, tokenizer, tmp_path_factory.mktemp("dense") / "model", {})


def test_prune_writes_a_smaller_model_that_reloads_and_a_report(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(model_dir), "--blocks", "3", "--output", str(out), *FAST]) == 0
    meta = read_metadata(out)
    order = [Block.from_json(b) for s in meta["pruning"]["results"]["blockpruner"]["steps"] for b in s["removed"]]
    assert len(order) == 3 and set(meta["pruning"]["results"]) == {"blockpruner", "layer-ppl", "block-influence"}
    expected = remove_blocks(load_pretrained(model_dir), order)
    tokens = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(load_pretrained(out)(tokens).logits, expected(tokens).logits, atol=1e-5, rtol=0)
    report = (out / "report.md").read_text()
    removal_rows = [line.split(" | ")[1] for line in report.splitlines() if line.startswith(("| 1 |", "| 2 |", "| 3 |"))]
    assert removal_rows == [str(b) for b in order]
    assert "| dense | 47,072 |" in report and "## Methods at equal removed parameters" in report
    assert (out / "ppl_vs_removed.png").read_bytes()[:4] == b"\x89PNG"
    assert meta["metrics"]["prune/params_pruned"] < meta["metrics"]["prune/params_dense"]
    assert meta["metrics"]["prune/block_forwards"] < meta["metrics"]["prune/block_forwards_naive"]


def test_an_interrupted_prune_resumes_and_picks_as_an_uninterrupted_one(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["prune", "--model", str(model_dir), "--blocks", "3", "--no-compare", *FAST]
    assert main([*args, "--output", str(tmp_path / "whole")]) == 0
    save = SearchCheckpoint.save

    def save_then_stop(checkpoint: SearchCheckpoint, result: SearchResult) -> None:
        save(checkpoint, result)
        raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    monkeypatch.setattr(SearchCheckpoint, "save", save_then_stop)
    assert main([*args, "--output", str(out)]) == 130, "an interrupt exits 130 with one line"
    assert len(json.loads((out / SEARCH_STATE / "blockpruner.json").read_text())["steps"]) == 1
    monkeypatch.undo()
    assert main([*args, "--output", str(out)]) == 0
    resumed = read_metadata(out)["pruning"]["results"]["blockpruner"]
    assert resumed["resumed_steps"] == 1
    assert resumed["steps"] == read_metadata(tmp_path / "whole")["pruning"]["results"]["blockpruner"]["steps"]
    assert not (out / SEARCH_STATE).exists(), "the finished save replaces the directory, state included"


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gpt2") / "model"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16)).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("dense", ["--target-ratio", "1.0"], "config key 'prune.target_ratio': must be in (0, 1), got 1.0"),
        ("dense", ["--target-ratio", "0"], "config key 'prune.target_ratio': must be in (0, 1), got 0.0"),
        ("dense", ["--blocks", "7"], "config key 'prune.num_blocks': must be less than the model's 6 blocks, got 7"),
        ("dense", ["--blocks", "2", "--calibration", "missing.txt"], "config key 'prune.calibration': file 'missing.txt' not found"),
        ("nowhere", ["--blocks", "2"], "'nowhere' is not a Hugging Face model directory (no config.json)"),
        ("gpt2", ["--blocks", "2"], "model type 'gpt2' has no MHA/MLP block view"),
        ("dense", ["--blocks", "2", "--device", "gpu"], "config key 'prune.device': expected cpu, cuda or cuda:<index>, got 'gpu'"),
        ("dense", ["--blocks", "2", "--device", "cuda"], "config key 'prune.device': 'cuda' asked for, but torch sees no CUDA device"),
    ],
)
def test_bad_inputs_are_refused_in_one_line_before_any_work(
    model_dir: Path, gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
    model: str, args: list[str], message: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # no CUDA, on a GPU machine too
    path = {"dense": str(model_dir), "gpt2": str(gpt2_dir)}.get(model, model)
    out = tmp_path / "out"
    assert main(["prune", "--model", path, *args, "--output", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not out.exists()


def test_sizes_batch_and_dtype_reach_the_search_and_perplexities_stay_fp32(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = {}

    def spy(
        model: torch.nn.Module, calibration: torch.Tensor, stop: StopRule, batch_size: int, **greedy: Any
    ) -> SearchResult:
        seen.update(dtype=next(model.parameters()).dtype, blocks=calibration.size(0), batch_size=batch_size)
        seen.update(cache_mb=greedy["cache_mb"])
        return block_pruner(model, calibration, stop, batch_size=batch_size, **greedy)

    monkeypatch.setitem(PRUNE_METHODS, "blockpruner", spy)
    out = tmp_path / "pruned"
    args = ["--num-sequences", "2", "--eval-sequences", "3", "--batch-size", "2", "--dtype", "bfloat16", "--no-compare",
            "--search-cache-mb", "0"]
    assert main(["prune", "--model", str(model_dir), "--blocks", "1", "--output", str(out), "--block-size", "16", *args]) == 0
    assert seen == {"dtype": torch.bfloat16, "blocks": 2, "batch_size": 2, "cache_mb": 0.0}
    assert "Calibration: 2 blocks of 16 tokens" in (out / "report.md").read_text()
    assert "evaluation: 3 other held-out blocks" in (out / "report.md").read_text()
    metrics = read_metadata(out)["metrics"]
    assert all(math.isfinite(metrics[k]) and metrics[k] > 1 for k in ("prune/ppl_dense", "prune/ppl_pruned"))
    saved = load_file(out / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}, "saved in the precision it was pruned in"


def test_calibration_and_evaluation_share_a_short_source() -> None:
    for available in range(2, 12):
        for wanted in range(1, 8):  # equal requests: the even split the two sets always had
            assert split_sizes(available, wanted, wanted) == (min(wanted, available // 2),) * 2
    assert split_sizes(40, 32, 3) == (32, 3) and split_sizes(20, 32, 3) == (17, 3) and split_sizes(20, 3, 32) == (3, 17)
    assert split_sizes(20, 32, 32) == (10, 10)


def test_prune_stage_runs_in_a_pipeline_after_checking_its_config(model_dir: Path, tmp_path: Path) -> None:
    stage = {"model": str(model_dir), "num_blocks": 2, "num_sequences": 3, "block_size": 16, "compare": False}
    config = {"run": {"name": "p", "dir": str(tmp_path)}, "pipeline": {"stages": {"cut": "prune"}}, "stages": {"cut": stage}}
    with pytest.raises(ConfigError, match="stages.cut.target_ratio"):
        MultiStageTrainer({**config, "stages": {"cut": {**stage, "target_ratio": 0.2}}})
    metrics = MultiStageTrainer(config).run()["cut"]
    assert metrics["prune/blocks_removed"] == 2
    assert "Removal order (blockpruner)" in (tmp_path / "p" / "report.md").read_text()


def test_packaged_prune_stage_config_composes_and_validates() -> None:
    cfg = compose(PACKAGE_CONF, "config", ["+stages@stages.cut=prune"])
    values = dict(cfg.stages.cut)
    assert values["calibration"] == "embedded" and values["val_fraction"] == 0.1
    ACTIONS["prune"].check(values, "stages.cut")


@pytest.mark.slow
def test_pretrain_prune_pipeline_evaluates_the_pruned_model(tmp_path: Path) -> None:
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("model.num_hidden_layers")]
    args = ["run", f"run.dir={tmp_path}", "run.name=t", "pipeline=pretrain_prune", "model.num_hidden_layers=3", *tiny,
            "stages.prune.target_ratio=0.2", "stages.prune.block_size=32", "stages.prune.num_sequences=4"]
    assert main(args) == 0
    state = json.loads((tmp_path / "t" / "state.json").read_text())["done"]
    assert list(state) == ["pretrain", "prune", "evaluate"]
    pruned = state["prune"]["metrics"]
    assert pruned["prune/removed_fraction"] >= 0.2 and pruned["prune/params_pruned"] < pruned["prune/params_dense"]
    assert sum(p.numel() for p in load_pretrained(tmp_path / "t" / "prune").parameters()) == pruned["prune/params_pruned"]
    assert state["evaluate"]["metrics"]["val/ppl"] > 1
    assert "## Stage `prune`" in (tmp_path / "t" / "report.md").read_text()


def test_budget_table_takes_each_methods_last_step_within_the_budget() -> None:
    def run(fractions: list[float], ppls: list[float]) -> MethodRun:
        steps = [PruneStep((Block(i, "mlp"),), 0.0, f) for i, f in enumerate(fractions)]
        return MethodRun(SearchResult("m", 0.0, 100, steps), ppls)

    runs = {"fine": run([0.1, 0.2, 0.3], [10, 11, 12, 13]), "coarse": run([0.25], [10, 20])}
    assert budget_rows(runs) == [
        ["10.0%", "11.000 (10.0%)", "10.000 (0.0%)"],
        ["20.0%", "12.000 (20.0%)", "10.000 (0.0%)"],
        ["25.0%", "12.000 (20.0%)", "20.000 (25.0%)"],
        ["30.0%", "13.000 (30.0%)", "20.000 (25.0%)"],
    ]
