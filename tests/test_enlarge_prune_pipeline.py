"""End to end: enlarge/prune pipelines and the baseline run (`--quick`) at equal size, with the promised LR curves
and the AdamW moments handed from stage to stage only where carrying is on."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import enlarge_prune_compare
from lightning_align.algorithms.schedule import RunSchedule
from lightning_align.models.adam_moments import read_moments
from lightning_align.run_config import compose


@pytest.mark.slow
def test_quick_comparison_runs_at_equal_size_with_one_shared_curve(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Topic {i}: a stage hands its model directory to the next one, {i}." * 3
                                    for i in range(80)))
    rows = enlarge_prune_compare.run_all(tmp_path, total=16, quick=True, corpus=str(corpus))
    report = enlarge_prune_compare.write_report(rows, tmp_path, 16)
    by_name = {row["pipeline"]: row for row in rows}
    assert {row["params"] for row in rows} == {by_name["baseline_target"]["params"]}
    assert {row["ffn"] for row in rows} == {32}
    assert list(by_name) == ["enlarge_prune", "enlarge_prune_no_carry", "enlarge_prune_kd", "naive_prune",
                             "baseline_target", "baseline_equal_compute"]
    equal = enlarge_prune_compare.equal_compute_steps(
        compose(enlarge_prune_compare.CONF, "config", enlarge_prune_compare.overrides("enlarge_prune", tmp_path, 16, True)), 16)
    assert len([s for _, _, xs, _ in by_name["baseline_equal_compute"]["lr"] for s in xs]) == equal > 16
    moments = read_moments(tmp_path / "enlarge_prune" / "prune")
    assert moments["model.layers.0.mlp.down_proj.weight"]["exp_avg"].shape[1] == 32, "moments cut with the neurons"
    assert int(moments["model.norm.weight"]["step"]) == 12, "the prune stage continued the enlarge stage's AdamW"
    assert all(read_moments(tmp_path / arm / "prune") is None for arm in ("enlarge_prune_no_carry", "naive_prune"))
    assert by_name["enlarge_prune"]["ppl"] != by_name["enlarge_prune_no_carry"]["ppl"]
    assert "train/kd_loss" in (tmp_path / "enlarge_prune_kd" / "logs" / "recover" / "metrics.csv").read_text()
    assert report.read_text().count("| ") >= 3 and (tmp_path / "lr.png").is_file()

    budgets = enlarge_prune_compare.split_budget(16)
    shared = RunSchedule(budgets, warmup_steps=1)
    curves = by_name["enlarge_prune"]["lr"]
    assert [(name, start) for name, start, _, _ in curves] == [("enlarge", 0), ("prune", 8), ("recover", 12)]
    steps = [s for _, _, xs, _ in curves for s in xs]
    lrs = [lr for _, _, _, ys in curves for lr in ys]
    assert steps == list(range(16)), "every stage continues the global step where the previous one stopped"
    assert lrs == pytest.approx([3e-3 * m for m in shared.curve()], rel=1e-6)

    assert [s for _, _, xs, _ in by_name["naive_prune"]["lr"] for s in xs] == list(range(16))
    naive = [lr for _, _, _, ys in by_name["naive_prune"]["lr"] for lr in ys]
    starts = [start for _, start, _, _ in by_name["naive_prune"]["lr"]][1:]
    assert all(naive[s] > naive[s - 1] for s in starts), "the naive pipeline re-warms the LR at each stage"


def test_equal_compute_steps_price_the_enlarged_stages_by_their_matmul_weights(tmp_path: Path) -> None:
    def cfg(enlarged_width: int):
        args = enlarge_prune_compare.overrides("enlarge_prune", tmp_path, 400, quick=False)
        return compose(enlarge_prune_compare.CONF, "config",
                       [*args, f"stages.enlarge.model.init_args.model.intermediate_size={enlarged_width}"])

    target = cfg(344)
    assert enlarge_prune_compare.equal_compute_steps(target, 400) == 400, "no enlargement: equal steps"
    spec = dict(target.model)
    small = enlarge_prune_compare.matmul_parameters(spec)
    large = enlarge_prune_compare.matmul_parameters({**spec, "intermediate_size": 894})
    layers, hidden = spec["num_hidden_layers"], spec["hidden_size"]
    assert large - small == layers * 3 * hidden * (894 - 344), "only the FFN matrices grow"
    assert enlarge_prune_compare.equal_compute_steps(cfg(894), 400) == round(300 * large / small + 100)
