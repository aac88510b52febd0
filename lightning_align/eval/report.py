"""`report.md` + PNG plots of a run directory, built only from files the stages left behind."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


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


def write_run_report(run_dir: str | Path, stages: list[str] | None = None) -> Path:
    """A table of every stage's metrics, the loss plot, then each stage's own `report.md` (if it wrote one)."""
    run_dir = Path(run_dir)
    state_path = run_dir / "state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no state.json: not a lightning_align run directory")
    done = json.loads(state_path.read_text())["done"]
    stages = [s for s in (stages or list(done)) if s in done]
    lines = [f"# Run report: {run_dir.name}", "", "| stage | action | metric | value |", "|---|---|---|---|"]
    for name in stages:
        for key, value in sorted(done[name]["metrics"].items()):
            lines.append(f"| {name} | {done[name]['action']} | {key} | {_fmt(value)} |")
    plot = plot_train_loss(run_dir, stages)
    if plot is not None:
        lines += ["", f"![training loss]({plot.name})"]
    for name in stages:
        stage_report = run_dir / name / "report.md"
        if stage_report.is_file():
            body = stage_report.read_text().replace("](", f"]({name}/")
            lines += ["", f"## Stage `{name}`", "", body]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
