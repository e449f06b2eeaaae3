"""`mmtrain report` on hand-made run dirs in the format `mmtrain train` writes (no training)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmtrain.cli import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(path: Path, overrides: list[str], status: str, test_acc: float | None = None,
             error: str | None = None, log_steps: int = 4) -> Path:
    """A run dir as mmtrain train leaves it: .hydra/, status.json, log.jsonl, metrics.json if it finished."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (path / ".hydra" / "config.yaml").write_text("seed: 0\n")
    state = {"status": status, "started": 100.0}
    if status != "running":
        state["ended"] = 112.5
    if error:
        state["error"] = error
    (path / "status.json").write_text(json.dumps(state))
    with open(path / "log.jsonl", "w") as f:
        for step in range(1, log_steps + 1):
            stage = "pretrain" if step <= 2 else "finetune"
            f.write(json.dumps({"step": step, "stage": stage, "epoch": 1, "split": "train",
                                f"{stage}/train/loss": 2.0 / step}) + "\n")
            if step in (2, 4):
                key = "pretrain/val/recall_mean" if stage == "pretrain" else "finetune/val/accuracy"
                f.write(json.dumps({"step": step, "stage": stage, "epoch": 1, "split": "val",
                                    key: 0.1 * step}) + "\n")
        if status == "running":
            f.write('{"step": 5, "stage": "fine')  # cut short by a kill
    if test_acc is not None:
        metrics = {
            "stages": {
                "pretrain": {"val": {"recall_mean": 0.2},
                             "best": {"metric": "recall_mean", "mode": "max", "value": 0.2, "epoch": 1}},
                "finetune": {"val": {"accuracy": test_acc - 0.01, "loss": 1 - test_acc},
                             "best": {"metric": "accuracy", "mode": "max", "value": test_acc - 0.01,
                                      "epoch": 1}},
            },
            "test": {"accuracy": test_acc, "loss": 1.0 - test_acc},
            "objective": test_acc - 0.01,
        }
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """A sweep dir: three finished runs, one that failed before any metric, one still running."""
    root = tmp_path / "sweep"
    common = ["data.n_train=256", "trainer.batch_size=64"]
    make_run(root / "0", common + ["model/fusion=concat", "optimizer.lr=0.001"], "completed", 0.70)
    make_run(root / "1", common + ["model/fusion=concat", "optimizer.lr=0.003"], "failed",
             error="ValueError: Invalid learning rate: -1.0\n(second line)", log_steps=0)
    make_run(root / "2", common + ["model/fusion=sum", "optimizer.lr=0.001"], "completed", 0.90)
    make_run(root / "10", common + ["model/fusion=sum", "optimizer.lr=0.003"], "running")
    make_run(root / "3", common + ["model/fusion=gated", "optimizer.lr=0.001"], "completed", 0.80)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def report(*args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mmtrain report ARGS` in this process (the CLI marks the environment: undo that each time)."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    cli_main(["report", *args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_ranks_finished_runs_best_first_and_lists_failed_and_running_runs(sweep, capsys):
    cli_main(["report", str(sweep)])
    printed = capsys.readouterr().out

    rows = read_csv(sweep / "summary.csv")
    assert list(rows[0])[:5] == ["rank", "run", "status", "model/fusion", "optimizer.lr"]
    assert "data.n_train" not in rows[0] and "trainer.batch_size" not in rows[0]  # same in every run
    assert [(r["rank"], r["run"], r["status"]) for r in rows] == [
        ("1", "2", "completed"), ("2", "3", "completed"), ("3", "0", "completed"),
        ("", "1", "failed"), ("", "10", "running")]
    assert [float(r["test/accuracy"]) for r in rows[:3]] == [0.90, 0.80, 0.70]
    assert rows[3]["error"] == "ValueError: Invalid learning rate: -1.0"
    assert rows[3]["test/accuracy"] == "" and rows[3]["optimizer.lr"] == "0.003"
    assert float(rows[0]["seconds"]) == 12.5 and rows[4]["seconds"] == ""

    markdown = (sweep / "summary.md").read_text()
    assert markdown in printed
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| rank | run | status | model/fusion | optimizer.lr | test/accuracy |")
    assert table[1].startswith("| 1 | 2 | completed | sum | 0.001 | 0.9000 |")
    assert "| failed | concat | 0.003 |" in table[4] and "Invalid learning rate" in table[4]
    assert "| running | sum | 0.003 |" in table[5]
    assert "Ranked by test/accuracy (max)" in markdown

    plots = sweep / "plots"
    assert sorted(p.name for p in plots.iterdir()) == [
        "curves.png", "param_model_fusion.png", "param_optimizer.lr.png"]
    for png in plots.iterdir():
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000


def test_report_metric_option_ranks_by_that_metric_and_lower_is_better_for_a_loss(sweep, tmp_path):
    out = tmp_path / "by_loss"
    cli_main(["report", str(sweep / "0"), str(sweep / "2"), str(sweep / "3"), "--metric", "test/loss",
              "--out", str(out)])
    rows = read_csv(out / "summary.csv")
    assert [r["run"] for r in rows] == ["2", "3", "0"]  # loss 0.1 < 0.2 < 0.3
    assert list(rows[0])[3:5] == ["model/fusion", "test/loss"]  # lr is 0.001 in all three
    assert "Ranked by test/loss (min)" in (out / "summary.md").read_text()


def test_report_errors_name_the_bad_input_and_the_fix(sweep, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        report(str(sweep), "--metric", "test/acc", monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "--metric test/acc: no run has it; choose from:" in err and "test/accuracy" in err

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        report(str(tmp_path / "empty"), monkeypatch=monkeypatch)
    assert "no run dirs" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        report(str(sweep / "0"), str(sweep / "2"), monkeypatch=monkeypatch)
    assert "pass --out DIR" in capsys.readouterr().err


def test_help_and_report_do_not_import_torch(sweep):
    code = (
        "import sys\n"
        "from mmtrain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"main(['report', {str(sweep)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('NO TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "NO TORCH" in out.stdout and "summarize run dirs" in out.stdout  # the help lists report
    assert (sweep / "summary.csv").is_file()


def test_a_malformed_run_dir_is_skipped_with_a_warning_naming_it(sweep, capsys, monkeypatch):
    bad = {
        "list_status": lambda p: (p / "status.json").write_text("[1, 2]"),
        "broken_yaml": lambda p: (p / ".hydra" / "overrides.yaml").write_text("- a=1\n  - : [\n"),
        "text_metric": lambda p: (p / "metrics.json").write_text(json.dumps(
            {"stages": {"finetune": {"val": {"accuracy": "high"}}}})),
    }
    for name, spoil in bad.items():
        spoil(make_run(sweep / name, ["model/fusion=film", "optimizer.lr=0.001"], "completed", 0.5))
    # Rows of a log that are not log rows are left out of the curves, not a crash.
    with open(sweep / "0" / "log.jsonl", "a") as f:
        f.write('[1, 2]\n{"step": "x", "stage": "finetune"}\n{"step": 9, "finetune/train/loss": "nan?"}\n')
    report(str(sweep), monkeypatch=monkeypatch)
    err = capsys.readouterr().err
    for name in bad:
        assert f"mmtrain report: warning: skipping {sweep / name}: its files are malformed" in err, name
    rows = read_csv(sweep / "summary.csv")
    assert [r["run"] for r in rows][:3] == ["2", "3", "0"]
    assert not any(r["run"] in bad for r in rows)
    assert (sweep / "plots" / "curves.png").read_bytes().startswith(PNG_MAGIC)
