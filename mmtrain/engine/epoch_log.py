"""The lines a run prints while it runs: one when a stage starts, one per epoch, one at the end.

They go through the `mmtrain` logger, so Hydra writes them both to the console and to the
run's train.log; progress bars stay within an epoch and are gone when its line is written.
Pure formatting: the trainer decides what happened, this says it in one line.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


def duration(seconds: float) -> str:
    """H:MM:SS, the way a person reads a clock."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def number(value: float) -> str:
    """4 significant figures, without a run of zeros for tiny or huge values."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.3e}"


def plural_epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def metric_list(metrics: dict[str, float], first: str | None = None) -> str:
    """`accuracy 0.9120 macro_f1 0.9100 ...`, the monitor first."""
    names = ([first] if first in metrics else []) + [k for k in metrics if k != first]
    return " ".join(f"{k} {number(metrics[k])}" for k in names)


def stage_start(*, name: str, index: int, count: int, task: str, n_epochs: int, start_epoch: int,
                steps_per_epoch: int, samples_per_step: int, frozen: Iterable[str], lr: float,
                lr_scale: dict[str, float], monitor: str, mode: str, patience: int | None,
                min_delta: float) -> str:
    resumed = f", resuming at epoch {start_epoch + 1}" if start_epoch else ""
    scaled = "".join(f" ({k} x{v:g})" for k, v in lr_scale.items())
    stop = (f"early stop after {plural_epochs(patience)} without a {mode} improvement > {number(min_delta)}"
            if patience is not None else "no early stop")
    return (f"[{name}] stage {index + 1}/{count} starts: task {task}, {plural_epochs(n_epochs)} x "
            f"{steps_per_epoch} steps x {samples_per_step} samples{resumed} | frozen: "
            f"{', '.join(frozen) or 'none'} | lr {number(lr)}{scaled} | monitor {monitor} ({mode}) | {stop}")


def epoch_line(*, name: str, epoch: int, epochs: int, train_loss: float | None,
               metrics: dict[str, float], monitor: str, improved: bool, best: dict[str, Any],
               patience_left: int | None, samples_per_s: float, elapsed: float,
               eta: float | None) -> str:
    train = f"train loss {number(train_loss)}" if train_loss is not None else "train loss -"
    if improved:
        verdict = f"{monitor} improved, best so far"
    else:
        verdict = f"{monitor} best {number(best['value'])} at epoch {best['epoch']}"
    if patience_left is not None:
        verdict += f", patience left: {plural_epochs(patience_left)}"
    timing = f"{samples_per_s:,.0f} samples/s | {duration(elapsed)} elapsed"
    if eta is not None:
        timing += f", stage ETA {duration(eta)}"
    return (f"[{name}] epoch {epoch}/{epochs} | {train} | val {metric_list(metrics, monitor)} | "
            f"{verdict} | {timing}")


def early_stop(*, name: str, epoch: int, epochs: int, monitor: str, best: dict[str, Any],
               patience: int) -> str:
    return (f"[{name}] early stop at epoch {epoch}/{epochs}: {monitor} has not improved for "
            f"{plural_epochs(patience)} (best {number(best['value'])} at epoch {best['epoch']})")


def run_end(summary: dict[str, Any], seconds: float) -> str:
    """`finished in 0:00:40 | pretrain best recall_mean 0.52 (epoch 2) | ... | test accuracy 0.948`."""
    parts = [f"finished in {duration(seconds)}"]
    for stage, res in summary["stages"].items():
        best = res["best"]
        if best.get("value") is not None:
            stopped = f", stopped early at {best['stopped_epoch']}" if best.get("stopped_epoch") else ""
            parts.append(f"{stage} best {best['metric']} {number(best['value'])} (epoch {best['epoch']}{stopped})")
    if "test" in summary:
        monitor = list(summary["stages"].values())[-1]["best"].get("metric")
        parts.append(f"test {metric_list(summary['test'], monitor)} (last stage's best.pt)")
    return " | ".join(parts)
