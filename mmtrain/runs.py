"""Run dirs read back without torch: each run's status, overrides, final metrics and
curves (what `mmtrain train` leaves), and a set of them ranked by one metric.

`mmtrain report` renders a `Report` as a table and plots; the sweep callback and `mmtrain
train` (a resumed run's earlier time) read the same files through here.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtrain.errors import ConfigError
from mmtrain.metrics import lower_is_better


@dataclass
class Run:
    path: Path
    status: str
    """completed | failed | interrupted | running | unknown (no status.json: not written by mmtrain)."""
    error: str = ""
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    """Flattened: test/<m>, <stage>/val/<m>, <stage>/best/<monitor>."""
    modes: dict[str, str] = field(default_factory=dict)
    """Monitor metric name -> max | min, from each stage's best."""
    default_metrics: list[str] = field(default_factory=list)
    """The last stage's monitor on test, then its best validation value: the default ranking keys."""
    monitors: dict[str, str] = field(default_factory=dict)
    """stage -> its monitor metric, for the validation curves."""
    seconds: float | None = None


@dataclass
class Report:
    runs: list[Run]
    """Best first; runs without a value of `metric` last, in path order."""
    names: list[str]
    """How each run is called in the table: its path relative to the runs' common folder."""
    ranked: int
    """How many runs (the first ones) have a finite value of `metric`."""
    swept: list[str]
    """Override keys whose value differs between runs: the table's parameter columns."""
    metric: str
    mode: str
    columns: list[str]
    """Metric columns: `metric` first, then the other final metrics."""


# ------------------------------------------------------------------ reading run dirs


def _natural_key(path: Path) -> list:
    # Hydra numbers sweep jobs 0, 1, ..., 10: sort them as numbers, not as text.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def is_run(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file() or (path / "status.json").is_file()


def find_runs(dirs: list[Path]) -> list[Path]:
    """Every run dir in or below `dirs`, in natural order (a run's own subfolders are not searched)."""
    found: list[Path] = []
    for top in dirs:
        if not top.is_dir():
            raise ConfigError(f"{top} is not a folder: pass run dirs or a multirun folder")
        for root, subdirs, _ in os.walk(top):
            if is_run(Path(root)):
                found.append(Path(root))
                subdirs.clear()
            else:
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
    if not found:
        raise ConfigError(f"no run dirs (with .hydra/overrides.yaml or status.json) in "
                          f"{', '.join(map(str, dirs))}: pass the folders `mmtrain train` wrote")
    return sorted(dict.fromkeys(p.resolve() for p in found), key=_natural_key)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_overrides(path: Path) -> dict[str, str]:
    """`.hydra/overrides.yaml` is a YAML list of `key=value` strings; `+key`/`++key` name the same key."""
    from omegaconf import OmegaConf

    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    out = {}
    for item in OmegaConf.load(file):
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def read_run(path: Path) -> Run:
    status = read_json(path / "status.json") or {}
    metrics = read_json(path / "metrics.json") or {}
    state = status.get("status") or ("completed" if metrics else "unknown")
    error = str(status.get("error") or "")
    if not error and state == "failed" and (path / "error.txt").is_file():
        lines = (path / "error.txt").read_text(encoding="utf-8").strip().splitlines()
        error = lines[-1] if lines else ""
    run = Run(path=path, status=state, error=error.splitlines()[0] if error else "",
              overrides=_read_overrides(path))
    if status.get("seconds") is not None:  # every session of a resumed run, summed by train
        run.seconds = float(status["seconds"])
    elif status.get("ended") and status.get("started"):
        run.seconds = float(status["ended"]) - float(status["started"])
    for stage, res in (metrics.get("stages") or {}).items():
        for k, v in (res.get("val") or {}).items():
            run.metrics[f"{stage}/val/{k}"] = float(v)
        best = res.get("best") or {}
        if best.get("metric"):
            run.monitors[stage] = best["metric"]
            run.modes[best["metric"]] = best.get("mode", "max")
            if best.get("value") is not None:
                run.metrics[f"{stage}/best/{best['metric']}"] = float(best["value"])
            run.default_metrics = [f"test/{best['metric']}", f"{stage}/best/{best['metric']}"]
    for k, v in (metrics.get("test") or {}).items():
        run.metrics[f"test/{k}"] = float(v)
    # `mmtrain baseline run=DIR` leaves the classical baselines' figures beside the model's.
    for name, scores in ((read_json(path / "baselines.json") or {}).get("baselines") or {}).items():
        for k, v in scores.items():
            run.metrics[f"baseline/{name}/{k}"] = float(v)
    return run


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_curves(path: Path) -> list[dict[str, Any]]:
    """log.jsonl rows with their numbers; a line cut short by a crash, or not a log row, is skipped."""
    rows = []
    try:
        with open(path / "log.jsonl", encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and _is_number(row.get("step")):
                    rows.append({k: v for k, v in row.items() if k in ("stage", "split") or _is_number(v)})
    except OSError:
        pass
    return rows


# ------------------------------------------------------------------ ranking


def _mode_of(metric: str, runs: list[Run]) -> str:
    name = metric.rsplit("/", 1)[-1]
    for run in runs:
        if name in run.modes:
            return run.modes[name]
    return "min" if lower_is_better(name) else "max"


def read_runs(paths: list[Path]) -> list[Run]:
    """Each run in `paths`; one whose files cannot be made sense of (edited by hand, written by
    something else) is skipped with a warning naming it, so it cannot hide the others."""
    runs = []
    for path in paths:
        try:
            runs.append(read_run(path))
        except Exception as e:  # YAML, JSON of the wrong shape, non-numbers: anything a file may hold
            reason = (str(e).strip().splitlines() or [""])[0]
            print(f"mmtrain report: warning: skipping {path}: its files are malformed "
                  f"({type(e).__name__}: {reason})", file=sys.stderr)
    if not runs:
        raise ConfigError(f"no readable run dir among {len(paths)} found: see the warnings above")
    return runs


def build_report(paths: list[Path], metric: str | None = None, mode: str | None = None) -> Report:
    runs = read_runs(paths)
    known = {m for r in runs for m in r.metrics}
    if metric is None:  # "" when no run has finished: nothing is ranked, every run is listed
        metric = next((m for r in runs for m in r.default_metrics if m in known), "")
    elif metric not in known:
        raise ConfigError(f"--metric {metric}: no run has it; choose from: "
                          f"{', '.join(sorted(known)) or '(no run has metrics yet)'}")
    mode = mode or _mode_of(metric, runs)

    def has_value(run: Run) -> bool:
        return metric in run.metrics and math.isfinite(run.metrics[metric])

    ranked = sorted(filter(has_value, runs), key=lambda r: r.metrics[metric], reverse=(mode == "max"))
    runs = ranked + [r for r in runs if not has_value(r)]

    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    swept = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    finals = [m for m in dict.fromkeys(m for r in runs for m in r.metrics)
              if m.startswith(("test/", "baseline/")) or "/best/" in m]
    columns = ([metric] if metric else []) + [m for m in finals if m != metric]
    common = Path(os.path.commonpath([r.path for r in runs]))
    names = [str(r.path.relative_to(common)) if r.path != common else r.path.name for r in runs]
    return Report(runs=runs, names=names, ranked=len(ranked), swept=swept, metric=metric, mode=mode,
                  columns=columns)
