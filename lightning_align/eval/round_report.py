"""Per-round table and plot of an iterative alignment stage (Mutual-Taught rounds), written next to its model."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PLOTTED = {
    "gold_reward": "policy mean gold reward",
    "gold_win_rate": "gold win rate vs initial policy",
    "rm_prev_accuracy_fresh": "r_{t-1} accuracy on π_t pairs",
    "rm_accuracy_fresh": "r_t accuracy on π_t pairs",
    "rm_accuracy_heldout": "r_t accuracy on held-out pairs",
    "repetitive_share": "share of repetitive responses",
}


@runtime_checkable
class RoundRows(Protocol):
    """A callback that keeps rows of the round table (each with a "round" key)."""

    def round_rows(self) -> list[dict[str, Any]]: ...


def merge_rounds(sources: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per round, in round order, with the columns of every source that has that round."""
    merged: dict[int, dict[str, Any]] = {}
    for rows in sources:
        for row in rows:
            merged.setdefault(row["round"], {}).update(row)
    return [merged[r] for r in sorted(merged)]


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def round_table(rows: list[dict[str, object]]) -> str:
    """Markdown table, one row per round, columns in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, float("nan"))) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_round_report(rows: list[dict[str, object]], out_dir: str | Path, title: str = "Mutual-Taught rounds") -> Path:
    """Write `report.md` (the table) and `rounds.png` (the gold and RM-accuracy curves) into `out_dir`."""
    out_dir = Path(out_dir)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    for key, label in PLOTTED.items():
        points = [(row["round"], row[key]) for row in rows if isinstance(row.get(key), float)]
        if points:
            axis.plot(*zip(*points), marker="o", label=label)
    axis.set_xlabel("round")
    axis.set_ylim(0, 1.02)
    axis.legend(fontsize=7)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(out_dir / "rounds.png", dpi=100)
    plt.close(figure)
    report = out_dir / "report.md"
    report.write_text(f"## {title}\n\n{round_table(rows)}\n\n![rounds](rounds.png)\n")
    return report
