"""report.md + PNG of a pruning stage: removal order, methods side by side, dense vs pruned cost."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from lightning_align.algorithms.block_pruner import SearchResult  # noqa: E402

PLOT_FILE = "ppl_vs_removed.png"


@dataclass(frozen=True)
class MethodRun:
    """A search result and the held-out perplexity after 0, 1, ... of its steps (index 0 is the dense model)."""

    result: SearchResult
    heldout_ppl: list[float]

    @property
    def fractions(self) -> list[float]:
        return [0.0] + [s.removed_fraction for s in self.result.steps]

    @property
    def calibration_ppl(self) -> list[float]:
        """The search's own objective after 0, 1, ... steps, aligned with ``heldout_ppl``."""
        return [self.result.dense_ppl] + [s.ppl for s in self.result.steps]


@dataclass(frozen=True)
class Footprint:
    params: int
    latency_ms: float
    heldout_ppl: float


def plot_curves(runs: dict[str, MethodRun], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        ax.plot([100 * f for f in run.fractions], run.heldout_ppl, marker="o", markersize=3, label=name)
    ax.set_xlabel("removed parameters (% of model)")
    ax.set_ylabel("held-out perplexity")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def budget_step(run: MethodRun, budget: float) -> int:
    """Index (0: dense) of the last step of ``run`` that removes no more than ``budget``."""
    return max(i for i, f in enumerate(run.fractions) if f <= budget + 1e-12)


def within_budget(run: MethodRun, budget: float) -> tuple[float, float]:
    """(removed share, held-out ppl) of the last step of ``run`` that removes no more than ``budget``."""
    k = budget_step(run, budget)
    return run.fractions[k], run.heldout_ppl[k]


def budget_rows(runs: dict[str, MethodRun]) -> list[list[str]]:
    """One row per removed share reached by any method: every method's held-out ppl within that budget."""
    budgets = sorted({round(f, 12) for run in runs.values() for f in run.fractions[1:]})
    rows = []
    for budget in budgets:
        cells = [f"{ppl:.3f} ({100 * share:.1f}%)" for share, ppl in (within_budget(r, budget) for r in runs.values())]
        rows.append([f"{100 * budget:.1f}%", *cells])
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_prune_report(
    out_dir: Path, chosen: str, runs: dict[str, MethodRun], dense: Footprint, pruned: Footprint, setup: str
) -> Path:
    """Write ``report.md`` and the perplexity-vs-removed-parameters plot of every method into ``out_dir``."""
    plot_curves(runs, out_dir / PLOT_FILE)
    main = runs[chosen]
    order = [["0", "(dense)", "0.0%", f"{main.result.dense_ppl:.3f}", f"{main.heldout_ppl[0]:.3f}"]]
    for k, step in enumerate(main.result.steps, start=1):
        removed = " + ".join(str(b) for b in step.removed)
        share = f"{100 * step.removed_fraction:.1f}%"
        order.append([str(k), removed, share, f"{step.ppl:.3f}", f"{main.heldout_ppl[k]:.3f}"])
    methods = [
        [
            name,
            str(len(run.result.order)),
            f"{100 * run.fractions[-1]:.1f}%",
            f"{run.result.steps[-1].ppl:.3f}",
            f"{run.heldout_ppl[-1]:.3f}",
            f"{run.result.block_forwards:,}",
            f"{run.result.naive_block_forwards:,}",
            f"{run.result.official_block_forwards:,}",
        ]
        for name, run in runs.items()
    ]
    cost = [
        [label, f"{f.params:,}", f"{f.latency_ms:.2f}", f"{f.heldout_ppl:.3f}"]
        for label, f in (("dense", dense), ("pruned", pruned))
    ]
    cost.append(["pruned / dense", f"{pruned.params / dense.params:.3f}", f"{pruned.latency_ms / dense.latency_ms:.3f}",
                 f"{pruned.heldout_ppl / dense.heldout_ppl:.3f}"])
    lines = [
        f"# Pruning with {chosen}",
        "",
        setup,
        "",
        "Perplexity: per-token NLL in fp32, averaged within each sequence, then over sequences, exponentiated.",
        "Blocks are named `attn<i>` / `mlp<i>` in the layer numbering of the unpruned model.",
        "",
        f"## Removal order ({chosen})",
        "",
        *_table(["step", "removed", "removed params", "calibration ppl", "held-out ppl"], order),
        "",
        "## Methods at equal removed parameters",
        "",
        f"Each other method stops at the first step that removes at least the share {chosen} removed.",
        "Block-forwards: one block applied to one calibration sequence, as searched (prefix reuse and states kept",
        "across steps) vs recomputing the kept blocks for every candidate (naive) vs a full forward of the dense",
        "model for every candidate (official implementation); steps resumed from a checkpoint are not counted.",
        "",
        *_table(["method", "blocks removed", "removed params", "calibration ppl", "held-out ppl", "block-forwards",
                 "block-forwards (naive)", "block-forwards (official)"], methods),
        "",
        f"![held-out perplexity vs removed parameters]({PLOT_FILE})",
        "",
        "Held-out perplexity of each method removing at most the share in the first column (its actual share in",
        "parentheses): whole layers come in coarser steps, so a budget can leave part of it unused.",
        "",
        *_table(["budget", *runs], budget_rows(runs)),
        "",
        "## Dense vs pruned",
        "",
        *_table(["model", "params", "forward latency (ms)", "held-out ppl"], cost),
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
