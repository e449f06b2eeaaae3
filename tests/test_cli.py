"""The installed `mmtrain` command: help, errors as one line, train -> eval end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import TINY_TESTED, run_cli


def _cli_without_torch(args: list[str], code: int, cwd) -> subprocess.CompletedProcess:
    """`mmtrain ARGS` in a fresh interpreter that then checks neither torch nor Hydra was imported."""
    script = ("import sys; from mmtrain import cli\n"
              f"try:\n    cli.main({args!r})\nexcept SystemExit as e:\n    assert e.code == {code}, e.code\n"
              "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'imported too much'\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out


def test_top_level_help_lists_commands_without_importing_torch(tmp_path):
    out = _cli_without_torch(["--help"], 0, tmp_path)
    assert "train" in out.stdout and "eval" in out.stdout


def test_unknown_command_is_one_line_and_exit_2(tmp_path):
    out = run_cli(["trian"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown command 'trian'" in out.stderr


def test_hydra_help_and_cfg_work_through_the_subcommand(tmp_path):
    out = run_cli(["train", "--help"], tmp_path)
    fusions = next(line for line in out.stdout.splitlines() if line.startswith("model/fusion: "))
    assert out.returncode == 0 and "concat" in fusions.split(": ")[1].split(", ")
    out = run_cli(["train", "--cfg", "job", "model/fusion=sum"], tmp_path)
    assert out.returncode == 0 and "SumFusion" in out.stdout


@pytest.mark.parametrize("args, needle", [
    (["train", "trainer.epochz=3"], "epochz"),
    (["train", "model/fusion=gatd"], "Available options in 'model/fusion': attention, bilinear, concat"),
    (["train", "trainer.batch_size=abc"], "abc"),
    (["train", "+model.fusion.dimm=3"], "has no option 'dimm' (it accepts: image_dim, text_dim, dim"),
    (["eval", "ckpt=missing.pt"], "checkpoint not found: missing.pt"),
    (["eval"], "ckpt=path/to/best.pt or run="),
    (["eval", "ckpt=best.pt", "precision=bf16"], "precision='bf16' is not one of auto, 32, bf16-mixed"),
    (["train", "trainer.batch_size=0"], "trainer.batch_size and trainer.eval_batch_size must be >= 1"),
    (["train", "optimzer.lr=1e-3"], "did you mean optimizer.lr?"),
    (["train", "optimizer.learning_rate=1e-3"], "is not a key of 'optimizer': did you mean optimizer.lr?"),
    (["train", "model/fusoin=sum"], "no config group 'model/fusoin': did you mean model/fusion?"),
    (["train", "model/fusion=gatd"], "did you mean model/fusion=gated?"),
    (["train", "+model.fusion.dimm=3"], "did you mean model.fusion.dim?"),
    (["eval", "ckpt=best.pt", "splt=val"], "did you mean split?"),
    (["train", "trainer.resume=no/such/run"], "checkpoint or run dir not found: no/such/run"),
    (["train", "init_from=no/such/run"], "checkpoint or run dir not found: no/such/run (init_from=)"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(tmp_path, args, needle):
    (tmp_path / "best.pt").touch()  # exists, so the argument after it is what is wrong
    out = run_cli(args, tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("mmtrain: error:") and needle in lines[0], lines[0]
    assert "use +" not in lines[0]  # never the `+key` form for a key the schema lacks
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.pt"))


def test_corrupt_checkpoint_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    out = run_cli(["eval", f"ckpt={bad}"], tmp_path)
    assert out.returncode == 2
    assert "corrupt or not an mmtrain checkpoint" in out.stderr and str(bad) in out.stderr
    assert bad.read_bytes().startswith(b"PK")  # left as it was


@pytest.mark.slow
def test_train_then_eval_with_the_installed_command(tmp_path):
    run_dir = tmp_path / "run"
    out = run_cli(["train", *TINY_TESTED, "logger.tensorboard=true", f"hydra.run.dir={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"run dir: {run_dir}" in out.stdout and "test (finetune/best.pt, epoch 1)" in out.stdout
    assert "[finetune] epoch 1/1 | train loss " in (run_dir / "train.log").read_text()
    for path in [".hydra/config.yaml", "checkpoints/pretrain/last.pt", "checkpoints/pretrain/best.pt",
                 "checkpoints/finetune/last.pt", "checkpoints/finetune/best.pt", "metrics.json",
                 "log.jsonl", "metrics.csv", "train.log"]:
        assert (run_dir / path).is_file(), path
    assert any((run_dir / "tb").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"pretrain", "finetune"}
    assert json.loads((run_dir / "status.json").read_text())["status"] == "completed"

    out = run_cli(["eval", f"run={run_dir}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((run_dir / "eval" / "finetune_best_test.json").read_text())
    # The same checkpoint on the same split: the figures training reported.
    for name, value in metrics["test"].items():
        assert result["metrics"][name] == pytest.approx(value, abs=1e-6), name


@pytest.mark.slow
def test_multirun_makes_one_run_dir_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    out = run_cli(["train", "-m", *TINY_TESTED, "stages.pretrain.epochs=0", "model/fusion=concat,sum",
                   f"hydra.sweep.dir={sweep}"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "completed"
        assert (sweep / job / "metrics.json").is_file()


@pytest.mark.parametrize("line, expected", [
    ("mmtrain tr", "train"),
    ("mmtrain train model/fusion=g", "model/fusion=gated"),
    ("mmtrain train trainer.prec", "trainer.precision="),
    ("mmtrain eval spl", "split="),
    ("mmtrain data ", "download"),
    ("mmtrain data download --r", "--root"),
    ("mmtrain report --mark", "--markdown"),
])
def test_shell_completion_routes_through_the_subcommand(tmp_path, line, expected):
    out = run_cli(["-sc", "query=bash"], tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout.split(), out.stdout


def test_shell_completion_installs_for_the_mmtrain_command(tmp_path):
    out = run_cli(["train", "-sc", "install=bash"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "-F hydra_bash_completion mmtrain\n" in out.stdout


def test_a_missing_checkpoint_is_answered_before_hydra_or_torch_load(tmp_path):
    out = _cli_without_torch(["eval", "ckpt=missing.pt"], 2, tmp_path)
    assert "checkpoint not found: missing.pt" in out.stderr


def test_eval_run_on_a_parent_folder_lists_the_runs_inside(tmp_path):
    from mmtrain.errors import CheckpointError
    from mmtrain.eval import resolve_checkpoint

    for run in ("a", "b"):
        (tmp_path / "sweep" / run / "checkpoints" / "finetune").mkdir(parents=True)
        (tmp_path / "sweep" / run / "checkpoints" / "finetune" / "best.pt").touch()
    with pytest.raises(CheckpointError, match=r"holds 2 run\(s\): pass one as run=DIR: .*sweep/a, .*sweep/b"):
        resolve_checkpoint(None, str(tmp_path / "sweep"))


def test_eval_help_and_completion_offer_only_what_eval_accepts(tmp_path):
    out = run_cli(["eval", "--help"], tmp_path)
    assert out.returncode == 0 and "ckpt: null" in out.stdout and "model/fusion" not in out.stdout
    line = "mmtrain eval "
    out = run_cli(["-sc", "query=bash"], tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    offered = out.stdout.split()
    assert {"ckpt=", "run=", "split=", "ablate=", "data."} <= set(offered), offered
    assert not [w for w in offered if w.startswith(("model", "trainer", "optimizer", "data="))], offered
