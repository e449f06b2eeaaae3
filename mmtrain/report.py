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
import re
from pathlib import Path
from typing import Any

from mmtrain.atomic import write_text
from mmtrain.errors import ConfigError
from mmtrain.runs import Report, build_report, find_runs, is_run, read_curves


def configured(path: Path, key: str) -> str:
    """The value a run used for `key` without overriding it: a group's choice from
    .hydra/hydra.yaml, any other key from .hydra/config.yaml; "" when the run has neither."""
    from omegaconf import OmegaConf

    try:
        if "/" in key or key in ("data", "optimizer", "scheduler", "stages", "trainer", "logger"):
            value = OmegaConf.load(path / ".hydra" / "hydra.yaml").hydra.runtime.choices.get(key)
        else:
            value = OmegaConf.select(OmegaConf.load(path / ".hydra" / "config.yaml"), key)
    except Exception:  # a missing or unreadable file: nothing to show
        return ""
    return "" if value is None or not isinstance(value, (str, int, float, bool)) else str(value)


def _rows(report: Report) -> tuple[list[str], list[list[Any]]]:
    header = ["rank", "run", "status", *report.swept, *report.columns, "seconds", "error"]
    rows = []
    for i, (run, name) in enumerate(zip(report.runs, report.names)):
        rows.append([i + 1 if i < report.ranked else "", name, run.status,
                     *(run.overrides[k] if k in run.overrides else configured(run.path, k)
                       for k in report.swept),
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
    count = f"{len(report.runs)} run" + ("" if len(report.runs) == 1 else "s")
    lines = [f"{title}; {count}, {report.ranked} ranked.", "",
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
                                                 "(default: DIR, when there is one; next to a single "
                                                 "run dir, as DIR_report/, not into it)")
    parser.add_argument("--format", choices=("md", "csv"), help="print only the table, as Markdown "
                        "(for a paper or an issue) or CSV, ready to paste or redirect")
    parser.add_argument("--markdown", action="store_const", const="md", dest="format",
                        help="the same as --format md")
    args = parser.parse_args(argv)
    if args.out is None and len(args.dirs) > 1:
        raise ConfigError(f"{len(args.dirs)} folders given: pass --out DIR to say where the report goes")
    out = args.out or args.dirs[0]
    if args.out is None and is_run(out):  # a run dir holds what training wrote, nothing else
        out = out.with_name(out.name + "_report")
    report, markdown = write_report(args.dirs, out, args.metric, args.mode)
    if args.format == "md":
        print("\n".join(line for line in markdown.splitlines() if line.startswith("|")))
    elif args.format == "csv":
        print(to_csv(report), end="")
    else:
        print(markdown + f"\nwritten: {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'plots'}/")
