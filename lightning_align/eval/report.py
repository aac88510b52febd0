"""`report.md` + PNG plots of a run directory, built only from what the pipeline itself records: `state.json` and
the CSV it keeps for every Lightning stage whatever loggers the user chose (`stages/loggers.py`)."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lightning_align.run_state import read_state  # noqa: E402


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_metric_series(csv_path: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) rows of one metric from a Lightning CSVLogger `metrics.csv`."""
    if not csv_path.is_file():
        return []
    with csv_path.open() as handle:
        return [(int(row["step"]), float(row[key])) for row in csv.DictReader(handle) if row.get(key)]


def plot_train_loss(run_dir: Path, stages: list[str]) -> Path | None:
    """Training loss of all stages on one global-step axis, stage boundaries dashed."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset, plotted = 0, False
    for name in stages:
        series = read_metric_series(run_dir / "logs" / name / "metrics.csv", "train/loss")
        if not series:
            continue
        steps, values = zip(*series)
        ax.plot([offset + s for s in steps], values, label=name)
        offset += max(steps) + 1
        ax.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set(xlabel="global step", ylabel="train/loss", title="Training loss across stages")
    ax.legend()
    fig.tight_layout()
    out = run_dir / "train_loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def read_lr_curve(run_dir: Path, stages: list[str]) -> list[tuple[str, int, list[int], list[float]]]:
    """(stage, first global step, logged global steps, LRs) of every stage that logged `train/lr` with
    `train/global_step` (the SharedSchedule callback); a stage starts at its logged global minus local step."""
    curves = []
    for name in stages:
        csv_path = run_dir / "logs" / name / "metrics.csv"
        lrs = dict(read_metric_series(csv_path, "train/lr"))
        steps = dict(read_metric_series(csv_path, "train/global_step"))
        common = sorted(set(lrs) & set(steps))
        if common:
            start = int(steps[common[0]]) - common[0]
            curves.append((name, start, [int(steps[s]) for s in common], [lrs[s] for s in common]))
    return curves


def plot_lr_curves(runs: dict[str, list[tuple[str, int, list[int], list[float]]]], out: Path) -> Path | None:
    """LR against the run-wide global step, one line per run, a dotted line where each later stage starts."""
    if not any(runs.values()):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for (label, curves), style in zip(runs.items(), ("-", "--", "-.", ":") * len(runs)):
        steps = [s for _, _, xs, _ in curves for s in xs]
        lrs = [lr for _, _, _, ys in curves for lr in ys]
        line, = ax.plot(steps, lrs, style, label=label)
        for name, start, _, _ in curves[1:]:
            ax.axvline(start, color=line.get_color(), linestyle=":", linewidth=0.8)
            ax.annotate(name, (start, max(lrs)), fontsize=7, color=line.get_color(), rotation=90, va="top")
    ax.set(xlabel="global step", ylabel="learning rate", title="LR across stages")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def write_run_report(run_dir: str | Path, stages: list[str] | None = None) -> Path:
    """A table of every stage's metrics, the loss plot, then each stage's own `report.md` (if it wrote one)."""
    run_dir = Path(run_dir)
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no state.json: not a lightning_align run directory")
    done = read_state(state_path)["done"]
    stages = [s for s in (stages or list(done)) if s in done]
    lines = [f"# Run report: {run_dir.name}", "", "| stage | action | metric | value |", "|---|---|---|---|"]
    for name in stages:
        for key, value in sorted(done[name]["metrics"].items()):
            lines.append(f"| {name} | {done[name]['action']} | {key} | {_fmt(value)} |")
    warnings = [f"- **{name}**: {w}" for name in stages for w in done[name].get("warnings", [])]
    if warnings:
        lines += ["", "## Warnings", "", *warnings]
    plot = plot_train_loss(run_dir, stages)
    if plot is not None:
        lines += ["", f"![training loss]({plot.name})"]
    lr_plot = plot_lr_curves({run_dir.name: read_lr_curve(run_dir, stages)}, run_dir / "lr.png")
    if lr_plot is not None:
        lines += ["", f"![learning rate]({lr_plot.name})"]
    for name in stages:
        stage_report = run_dir / name / "report.md"
        if stage_report.is_file():
            body = stage_report.read_text().replace("](", f"]({name}/")
            lines += ["", f"## Stage `{name}`", "", body]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
