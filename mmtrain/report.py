"""`mmtrain report DIR [DIR ...]`: one table and a few plots for a set of run dirs.

A run dir is any folder with `.hydra/overrides.yaml` or `status.json` (what `mmtrain
train` leaves, even when it fails early); a DIR that is not a run is searched for runs
below it, so a multirun folder works as one argument. The table has the overrides that
differ between the runs, each run's status and its final metrics, best first; runs that
failed or have not finished are listed below the ranked ones with their error line.
Nothing here imports torch: a report of a finished sweep takes a second.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtrain.atomic import write_text
from mmtrain.errors import ConfigError


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


def _is_run(path: Path) -> bool:
    return (path / ".hydra" / "overrides.yaml").is_file() or (path / "status.json").is_file()


def find_runs(dirs: list[Path]) -> list[Path]:
    """Every run dir in or below `dirs`, in natural order (a run's own subfolders are not searched)."""
    found: list[Path] = []
    for top in dirs:
        if not top.is_dir():
            raise ConfigError(f"{top} is not a folder: pass run dirs or a multirun folder")
        for root, subdirs, _ in os.walk(top):
            if _is_run(Path(root)):
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
    if status.get("ended") and status.get("started"):
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


# ------------------------------------------------------------------ the table


def _mode_of(metric: str, runs: list[Run]) -> str:
    name = metric.rsplit("/", 1)[-1]
    for run in runs:
        if name in run.modes:
            return run.modes[name]
    return "min" if "loss" in name else "max"


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
              if m.startswith("test/") or "/best/" in m]
    columns = ([metric] if metric else []) + [m for m in finals if m != metric]
    common = Path(os.path.commonpath([r.path for r in runs]))
    names = [str(r.path.relative_to(common)) if r.path != common else r.path.name for r in runs]
    return Report(runs=runs, names=names, ranked=len(ranked), swept=swept, metric=metric, mode=mode,
                  columns=columns)


def _rows(report: Report) -> tuple[list[str], list[list[Any]]]:
    header = ["rank", "run", "status", *report.swept, *report.columns, "seconds", "error"]
    rows = []
    for i, (run, name) in enumerate(zip(report.runs, report.names)):
        rows.append([i + 1 if i < report.ranked else "", name, run.status,
                     *(run.overrides.get(k, "") for k in report.swept),
                     *(run.metrics.get(m, "") for m in report.columns),
                     "" if run.seconds is None else f"{run.seconds:.1f}", run.error])
    return header, rows


def to_csv(report: Report) -> str:
    header, rows = _rows(report)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _cell(value: Any, limit: int = 100) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    if len(text) > 8 and re.fullmatch(r"-?\d*\.\d+(e-?\d+)?", text):  # an Optuna-drawn 0.0020554062603827
        text = f"{float(text):.4g}"
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def to_markdown(report: Report) -> str:
    header, rows = _rows(report)
    if not any(r[-1] for r in rows):  # no run failed: drop the empty error column
        header, rows = header[:-1], [r[:-1] for r in rows]
    title = (f"Ranked by {report.metric} ({report.mode}), best first" if report.ranked
             else "No run has finished: none ranked")
    lines = [f"{title}; {len(report.runs)} runs, {report.ranked} ranked.", "",
             "| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if h in ("rank", "seconds") or h in report.columns else "---"
                            for h in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ writing


def write_report(dirs: list[Path], out: Path, metric: str | None = None,
                 mode: str | None = None) -> tuple[Report, str]:
    """Read the runs in `dirs`; write summary.md, summary.csv and plots/*.png into `out`."""
    from mmtrain.report_plots import plot_curves, plot_params

    report = build_report(find_runs(dirs), metric, mode)
    markdown = to_markdown(report)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "summary.md", markdown)
    write_text(out / "summary.csv", to_csv(report))
    plot_params(report, out / "plots")
    plot_curves(report, [read_curves(r.path) for r in report.runs], out / "plots")
    return report, markdown


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="mmtrain report",
        description="Summarize run dirs (a multirun folder or any set of runs): the overrides that "
                    "differ, status and final metrics best first (Markdown + CSV), and PNG plots.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="run dirs, or folders holding them (e.g. multirun/synthetic/<date>)")
    parser.add_argument("--metric", help="ranking metric, e.g. test/accuracy, finetune/best/accuracy, "
                                         "pretrain/val/recall_mean (default: the last stage's test "
                                         "monitor metric)")
    parser.add_argument("--mode", choices=("max", "min"),
                        help="whether higher or lower is better (default: from the runs' monitors)")
    parser.add_argument("--out", type=Path, help="where summary.md, summary.csv and plots/ go "
                                                 "(default: DIR, when there is one)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.dirs) > 1:
        raise ConfigError(f"{len(args.dirs)} folders given: pass --out DIR to say where the report goes")
    out = args.out or args.dirs[0]
    _, markdown = write_report(args.dirs, out, args.metric, args.mode)
    print(markdown + f"\nwritten: {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'plots'}/")
