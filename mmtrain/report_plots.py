"""The report's PNGs: each swept parameter against the ranking metric, and the runs' curves.

Figures are built with matplotlib's object API (no pyplot): no global state, no display
backend, safe in parallel sweep jobs and on headless nodes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mmtrain.atomic import write_atomically
from mmtrain.runs import Report

MAX_LEGEND = 12
"""More runs than this (an Optuna study) get no legend: it would hide the curves."""


def _save(fig: Figure, path: Path) -> None:
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))


def _floats(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot_params(report: Report, out: Path) -> list[Path]:
    """plots/param_<key>.png: the metric of each finished run against that run's value of <key>."""
    ranked = report.runs[: report.ranked]
    written = []
    for key in report.swept if ranked else []:
        values = [r.overrides.get(key, "(default)") for r in ranked]
        ys = [r.metrics[report.metric] for r in ranked]
        fig = Figure(figsize=(5, 3.5), layout="constrained")
        ax = fig.subplots()
        numbers = _floats(values)
        if numbers is not None:
            ax.scatter(numbers, ys)
            if min(numbers) > 0 and max(numbers) / min(numbers) >= 3:  # learning rates, weight decays
                ax.set_xscale("log")
                ax.minorticks_off()
            ticks = dict(zip(numbers, values))
            if len(ticks) <= 8:  # a grid sweep: tick exactly the values that ran, as typed
                ax.set_xticks(list(ticks), list(ticks.values()))
        else:
            categories = list(dict.fromkeys(sorted(values)))
            ax.scatter([categories.index(v) for v in values], ys)
            ax.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
        ax.set_xlabel(key)
        ax.set_ylabel(report.metric)
        ax.set_title(f"{report.metric} by {key} ({len(ranked)} runs)")
        ax.grid(alpha=0.3)
        path = out / f"param_{re.sub(r'[^A-Za-z0-9_.-]+', '_', key)}.png"
        _save(fig, path)
        written.append(path)
    return written


def _label(report: Report, index: int) -> str:
    run = report.runs[index]
    parts = [f"{k.replace('/', '.').rsplit('.', 1)[-1]}={run.overrides.get(k, '-')}" for k in report.swept]
    label = ", ".join(parts) or report.names[index]
    return label if run.status == "completed" else f"{label} ({run.status})"


def _color(index: int, count: int) -> Any:
    """One color per run in every panel; past 10 runs, a gradient from best (dark) to worst."""
    if count <= 10:
        return f"C{index}"
    from matplotlib import colormaps

    return colormaps["viridis"](index / (count - 1))


def plot_curves(report: Report, curves: list[list[dict[str, Any]]], out: Path) -> Path | None:
    """plots/curves.png: per stage (columns), training loss and the validation monitor by step."""
    stages = list(dict.fromkeys(row["stage"] for rows in curves for row in rows if "stage" in row))
    if not stages:
        return None
    monitors = {s: m for run in report.runs for s, m in run.monitors.items()}
    panels = [("train", lambda s: "loss")] + ([("val", lambda s: monitors.get(s))] if monitors else [])
    fig = Figure(figsize=(4.5 * len(stages), 3.2 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), len(stages), squeeze=False)
    for col, stage in enumerate(stages):
        for row, (split, metric_of) in enumerate(panels):
            ax, metric = axes[row][col], metric_of(stage)
            ax.set_title(f"{stage}: {split} {metric}")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if metric is None:
                continue
            tag = f"{stage}/{split}/{metric}"
            for i, rows in enumerate(curves):
                points = [(r["step"], r[tag]) for r in rows if tag in r and r.get("split", split) == split]
                if points:
                    xs, ys = zip(*points)
                    style = "-" if report.runs[i].status == "completed" else "--"
                    ax.plot(xs, ys, style, color=_color(i, len(curves)),
                            marker="." if len(xs) < 20 else None, label=_label(report, i))
    if len(report.runs) <= MAX_LEGEND:
        # A run that failed early has no line in later panels: collect labels from all of them.
        by_label = {label: h for ax in axes.flat for h, label in zip(*ax.get_legend_handles_labels())}
        if by_label:
            fig.legend(list(by_label.values()), list(by_label), loc="outside right upper",
                       fontsize="small")
    path = out / "curves.png"
    _save(fig, path)
    return path
