"""The wheel carries the configs, so an installed mmtrain runs from any directory."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from mmtrain.config import config_dir

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_every_config_inside_the_package(tmp_path):
    from hatchling.build import build_wheel

    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        name = build_wheel(str(tmp_path))
    finally:
        os.chdir(cwd)
    names = set(zipfile.ZipFile(tmp_path / name).namelist())
    repo_configs = {f"mmtrain/conf/{p.relative_to(ROOT / 'conf').as_posix()}"
                    for p in (ROOT / "conf").rglob("*.yaml")}
    assert repo_configs and repo_configs <= names, sorted(repo_configs - names)[:5]
    assert "mmtrain/cli.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "mmtrain = mmtrain.cli:main" in zipfile.ZipFile(tmp_path / name).read(entry_points).decode()


def test_config_dir_is_absolute_and_holds_the_primary_configs():
    path = Path(config_dir())
    assert path.is_absolute()
    assert (path / "train.yaml").is_file() and (path / "eval.yaml").is_file()
