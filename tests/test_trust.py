"""A checkpoint is untrusted input: its config may only build mmtrain's own components.

Each attack hides a callable that is not mmtrain's (a file writer, an unpickler, a directory
maker, a shell) in one config section of a real checkpoint, both as the section's own
`_target_` and nested inside it (Hydra builds nested nodes first, so on a lax loader the
damage is done before anything fails). Every one must be refused in one line, exit 2,
before it runs: the victim file keeps its bytes, no directory appears, no marker is written.
"""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mmtrain.engine.checkpoint import atomic_save, load_checkpoint
from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.eval import evaluate_checkpoint
from mmtrain.trust import check_config_targets
from tests.helpers import TINY_TESTED, choices, compose, run_cli, train_in_process

SECTIONS = ["data", "model.image_encoder", "model.text_encoder", "model.fusion",
            "stages.pretrain.task", "stages.finetune.task", "optimizer", "scheduler"]


class _MakeDir:
    """Unpickling this calls os.makedirs: what numpy.load(allow_pickle=True) would run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path,)


def _attacks(area: Path) -> dict[str, dict]:
    """name -> a Hydra node that, if built, changes something under `area`."""
    evil_npy = area / "evil.npy"
    np.save(evil_npy, np.array([_MakeDir(area / "made_by_numpy")], dtype=object), allow_pickle=True)
    payload = pickle.dumps(_MakeDir(area / "made_by_pickle")).hex()
    return {
        "open_w": {"_target_": "builtins.open", "file": str(area / "victim.txt"), "mode": "w"},
        "copyfile": {"_target_": "shutil.copyfile", "src": str(area / "other.txt"),
                     "dst": str(area / "victim.txt")},
        "makedirs": {"_target_": "os.makedirs", "name": str(area / "made_by_makedirs")},
        "path_mkdir": {"_target_": "pathlib.Path.mkdir", "_partial_": False,
                       "_args_": [{"_target_": "pathlib.Path", "_args_": [str(area / "made_by_mkdir")]}]},
        "numpy_load": {"_target_": "numpy.load", "file": str(evil_npy), "allow_pickle": True},
        "pickle_loads": {"_target_": "pickle.loads",
                         "_args_": [{"_target_": "builtins.bytes.fromhex", "_args_": [payload]}]},
        "subprocess": {"_target_": "subprocess.run", "_recursive_": False,
                       "args": ["touch", str(area / "made_by_shell")]},
    }


def _snapshot(area: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(area)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(area.rglob("*"))}


def _plant(config: dict, section: str, attack: dict, nested: bool) -> dict:
    config = copy.deepcopy(config)
    *parents, last = section.split(".")
    node = config
    for key in parents:
        node = node[key]
    if nested:  # inside the genuine component, as an extra argument built before it
        node[last] = {**node[last], "extra": attack}
    else:
        node[last] = attack
    return config


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("trusted") / "run"
    train_in_process(run_dir, TINY_TESTED + ["data.n_train=128", "data.n_val=64", "data.n_test=64"])
    return run_dir / "checkpoints" / "finetune" / "best.pt"


def _crafted(real: Path, folder: Path, section: str, attack: dict, nested: bool) -> Path:
    ckpt = torch.load(real, map_location="cpu", weights_only=True)
    ckpt["config"] = _plant(ckpt["config"], section, attack, nested)
    path = folder / "downloaded.pt"
    atomic_save(ckpt, path)
    return path


def _victim_area(tmp_path: Path) -> Path:
    area = tmp_path / "area"
    area.mkdir()
    (area / "victim.txt").write_text("precious results\n")
    (area / "other.txt").write_text("overwritten\n")
    return area


@pytest.mark.parametrize("nested", [False, True], ids=["as_target", "nested"])
@pytest.mark.parametrize("section", SECTIONS)
def test_a_foreign_callable_in_any_section_is_refused_before_it_runs(real_checkpoint, tmp_path,
                                                                     section, nested):
    area = _victim_area(tmp_path)
    for name, attack in _attacks(area).items():
        path = _crafted(real_checkpoint, tmp_path, section, attack, nested)
        before = _snapshot(area)
        with pytest.raises(ConfigError) as err:
            evaluate_checkpoint(path, device="cpu")
        message = str(err.value)
        assert "\n" not in message and str(path) in message, name
        assert f"'{attack['_target_']}' is not an mmtrain component" in message, name
        assert message.split(": ")[1].startswith(section), (name, message)
        assert _snapshot(area) == before, f"{name} in {section} left a trace"


@pytest.mark.parametrize("name, section", [
    ("open_w", "data"), ("copyfile", "model.image_encoder"), ("numpy_load", "model.fusion"),
    ("pickle_loads", "stages.pretrain.task"), ("path_mkdir", "stages.finetune.task"),
    ("makedirs", "optimizer"), ("subprocess", "scheduler"),
])
def test_the_cli_refuses_a_crafted_checkpoint_in_one_line_with_exit_2(real_checkpoint, tmp_path,
                                                                     name, section):
    area = _victim_area(tmp_path)
    path = _crafted(real_checkpoint, tmp_path, section, _attacks(area)[name], nested=True)
    before, listing = _snapshot(area), sorted(p.name for p in tmp_path.iterdir())
    out = run_cli(["eval", f"ckpt={path}", "device=cpu"], tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not an mmtrain component: refusing to build it" in lines[0], lines
    assert f"{section}.extra._target_=" in lines[0]
    assert _snapshot(area) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == listing  # no eval result, no log


def test_an_interpolation_that_decodes_into_a_target_is_refused(real_checkpoint, tmp_path):
    area = _victim_area(tmp_path)
    decoded = "${oc.decode:'{_target_: os.makedirs, name: " + str(area / "made") + "}'}"
    path = _crafted(real_checkpoint, tmp_path, "model.fusion", decoded, nested=False)
    # A checkpoint's config is saved resolved: the interpolation itself is refused, unresolved.
    with pytest.raises(ConfigError, match=r"model.fusion holds an interpolation .*oc.decode"):
        evaluate_checkpoint(path, device="cpu")
    assert not (area / "made").exists()


def test_a_task_name_that_is_a_path_is_refused_before_anything_is_written(real_checkpoint, tmp_path):
    ckpt = torch.load(real_checkpoint, map_location="cpu", weights_only=True)
    ckpt["config"]["stages"]["finetune"]["task"]["name"] = "../../escaped"
    path = tmp_path / "a" / "b" / "named.pt"
    path.parent.mkdir(parents=True)
    atomic_save(ckpt, path)
    with pytest.raises(ConfigError, match=r"stages.finetune.task.name='../../escaped': use letters"):
        evaluate_checkpoint(path, device="cpu", artifacts_dir=path.parent / "out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "named.pt"]


def test_the_user_may_trust_a_checkpoint_or_a_module_prefix_explicitly(real_checkpoint, tmp_path):
    area = _victim_area(tmp_path)
    attack = _attacks(area)["makedirs"]
    config = _plant(load_checkpoint(real_checkpoint)["config"], "optimizer", attack, nested=False)
    with pytest.raises(ConfigError):
        check_config_targets(config, source="x.pt", allow=["osx."])
    check_config_targets(config, source="x.pt", allow=["os."])
    check_config_targets(config, source="x.pt", trust=True)
    assert not (area / "made_by_makedirs").exists()  # checking never builds anything


def test_the_untouched_checkpoint_still_evaluates_and_logs_beside_its_result(real_checkpoint, tmp_path):
    out = run_cli(["eval", f"ckpt={real_checkpoint}", "device=cpu", f"out={tmp_path / 'r.json'}"],
                  tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "accuracy" in out.stdout
    # Its log goes beside its result, not into whatever folder it was started from.
    assert "evaluating" in (tmp_path / "r.log").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "r.json", "r.log"]


@pytest.mark.parametrize("overrides", [
    [], *[[f"+experiment={e}"] for e in choices("experiment")],
    *[[f"stages={s}"] for s in choices("stages")], *[[f"optimizer={o}"] for o in choices("optimizer")],
    *[[f"scheduler={s}"] for s in choices("scheduler")],
    *[[f"model/{g}={o}"] for g in ("image_encoder", "text_encoder", "fusion")
      for o in choices(f"model/{g}")],
    *[[f"data={d}"] for d in choices("data")],
], ids=lambda o: o[0] if o else "default")
def test_every_packaged_recipe_and_option_passes_the_check(overrides):
    cfg = compose(overrides)
    check_config_targets(OmegaConf.to_container(cfg, resolve=True), source="packaged")
    check_config_targets(cfg, source="packaged")  # as Hydra saves it, interpolations and all


def test_the_torch_optimizers_and_schedulers_are_allowed_but_not_torch_at_large():
    for target in ("torch.optim.Adam", "torch.optim.lr_scheduler.OneCycleLR"):
        check_config_targets({"optimizer": {"_target_": target}}, source="x")
    for target in ("torch.load", "torch.optim.lr_scheduler.LambdaLR.__init__", "torch.hub.load"):
        with pytest.raises(ConfigError, match="is not an mmtrain component"):
            check_config_targets({"optimizer": {"_target_": target}}, source="x")


def test_a_pickle_that_would_run_code_is_refused_in_one_short_line(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "model": {}, "x": _MakeDir(tmp_path / "made")}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path}: not a weights-only checkpoint: refusing to unpickle it"
    assert not (tmp_path / "made").exists()


def test_a_checkpoint_evaluates_without_the_pretrained_weights_it_started_from(real_checkpoint, tmp_path):
    from mmtrain import data as data_lib
    from mmtrain.data.tokenizer import TextTokenizer
    from mmtrain.models.model import build_model
    from mmtrain.build import build_tasks

    ckpt = torch.load(real_checkpoint, map_location="cpu", weights_only=True)
    ckpt["config"]["model"]["image_encoder"] = {
        "_target_": "mmtrain.models.image_encoder.ResNetEncoder", "arch": "resnet18",
        "pretrained": None, "small_input": True, "dim": 32}
    cfg = OmegaConf.create(ckpt["config"])
    data = data_lib.build(cfg.data, tokenizer=TextTokenizer.from_json(ckpt["tokenizer"]))
    model = build_model(cfg.model, data.info)
    build_tasks(cfg, model, data.info)
    ckpt["model"] = model.state_dict()
    # Trained elsewhere from a file this machine does not have (or, for a hub name, would fetch).
    ckpt["config"]["model"]["image_encoder"]["pretrained"] = str(tmp_path / "elsewhere" / "resnet18.pth")
    path = tmp_path / "from_pretrained.pt"
    atomic_save(ckpt, path)
    result = evaluate_checkpoint(path, device="cpu", limit_eval_batches=1)
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    assert not (tmp_path / "elsewhere").exists()
