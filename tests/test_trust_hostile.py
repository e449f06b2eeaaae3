"""A hostile checkpoint author who knows the allow-list: what mmtrain itself would build,
used out of place, or a file made to exhaust the reader instead of running code.

Each crafted file goes through the real CLI and must be refused in one line, exit 2, with
nothing written or fetched: the victim area keeps every byte and gains no folder, and no
eval result or log appears.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Callable

import pytest
import torch
from omegaconf import OmegaConf

from mmtrain.engine.checkpoint import FORMAT_VERSION, atomic_save
from mmtrain.eval import evaluate_checkpoint
from tests.helpers import TINY_TESTED, compose, run_cli


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> dict:
    """An untrained but complete checkpoint, built by hand in a second (no training)."""
    from mmtrain import data as data_lib
    from mmtrain.models.model import build_model
    from mmtrain.build import build_tasks

    cfg = compose(TINY_TESTED + ["data.n_train=32", "data.n_val=16", "data.n_test=16"])
    data = data_lib.build(cfg.data)
    model = build_model(cfg.model, data.info)
    build_tasks(cfg, model, data.info)
    return {"format": FORMAT_VERSION, "model": model.state_dict(), "stage": "finetune",
            "config": OmegaConf.to_container(cfg, resolve=True), "tokenizer": data.tokenizer.to_json(),
            "data_info": data.info.to_payload()}


def _with_tokenizer(ckpt: dict, max_length: int | None = None, top_id: int | None = None) -> str:
    outer = json.loads(ckpt["tokenizer"])
    inner = json.loads(outer["tokenizer"])
    if max_length is not None:
        outer["max_length"] = max_length
    if top_id is not None:
        inner["model"]["vocab"]["square"] = top_id
    return json.dumps({**outer, "tokenizer": json.dumps(inner)})


def _list_bomb(ckpt: dict, area: Path) -> None:
    shared: list = ["x"]
    for _ in range(40):  # 2**40 leaves in OmegaConf's copy; a few hundred bytes in the pickle
        shared = [shared, shared]
    ckpt["config"]["trainer"]["notes"] = shared


def _string_bomb(ckpt: dict, area: Path) -> None:
    trainer = ckpt["config"]["trainer"]
    trainer["n0"] = "x" * 64
    for i in range(1, 40):
        trainer[f"n{i}"] = f"${{trainer.n{i - 1}}}${{trainer.n{i - 1}}}"


ATTACKS: dict[str, Callable[[dict, Path], None]] = {
    # An allowed builder where eval does not expect one escapes eval's "never download" guard.
    "dataset_builder_as_task": lambda c, a: c["config"]["stages"]["finetune"].update(task={
        "_target_": "mmtrain.data.coco.build_coco_captions", "root": str(a / "coco"), "download": True}),
    "dataset_builder_nested_in_data": lambda c, a: c["config"]["data"].update(extra={
        "_target_": "mmtrain.data.mnist_imdb.build_mnist_imdb", "root": str(a / "mnist"),
        "download": True}),
    "encoder_with_weights_nested_in_fusion": lambda c, a: c["config"]["model"]["fusion"].update(extra={
        "_target_": "mmtrain.models.image_encoder.ResNetEncoder", "arch": "resnet18",
        "pretrained": str(a / "victim.txt")}),
    "environment_resolver": lambda c, a: c["config"]["data"].update(image_size="${oc.env:HOME}"),
    # Far past this machine's memory: refused from the weights' shapes before it is allocated.
    "layer_wider_than_its_weights": lambda c, a: c["config"]["model"]["fusion"].update(dim=10**6),
    # Hydra would hand back a half-built task, or add arguments no config gives.
    "partial_task": lambda c, a: c["config"]["stages"]["finetune"]["task"].update(_partial_=True),
    "extra_positional_arguments": lambda c, a: c["config"]["model"]["fusion"].update(_args_=[1, 2]),
    "tokenizer_of_length_zero": lambda c, a: c.update(tokenizer=_with_tokenizer(c, max_length=0)),
    "tokenizer_id_past_its_vocabulary": lambda c, a: c.update(tokenizer=_with_tokenizer(c, top_id=10**6)),
    # Every text padded to 10**9 ids (8 GB each), every image decoded or drawn at 10**6 px a
    # side, a synthetic set regenerated at 10**12 pairs.
    "tokenizer_of_a_billion_tokens": lambda c, a: c.update(tokenizer=_with_tokenizer(c, max_length=10**9)),
    "image_size_past_any_screen": lambda c, a: c["config"]["data"].update(image_size=10**6),
    "synthetic_set_of_a_trillion_pairs": lambda c, a: c["config"]["data"].update(n_test=10**12),
    "evaluation_batch_size_that_is_text": lambda c, a: c["config"]["trainer"].update(eval_batch_size="64"),
    "list_bomb": _list_bomb,
    "string_bomb": _string_bomb,
    "weights_that_are_not_tensors": lambda c, a: c["model"].update(
        {next(iter(c["model"])): [1.0, 2.0]}),
}

MESSAGES = {
    "dataset_builder_as_task": "stages.finetune.task._target_='mmtrain.data.coco.build_coco_captions' "
                               "is built only at data, not at stages.finetune.task",
    "dataset_builder_nested_in_data": "is built only at data, not at data.extra",
    "encoder_with_weights_nested_in_fusion": "is built only at model.image_encoder, not at "
                                             "model.fusion.extra",
    "environment_resolver": "data.image_size holds an interpolation",
    "layer_wider_than_its_weights": "does not fit this model/config",
    "partial_task": "stages.finetune.task._partial_ is not set on "
                    "'mmtrain.tasks.classification.ClassificationTask' by any mmtrain config",
    "extra_positional_arguments": "model.fusion._args_ is not set on",
    "tokenizer_of_length_zero": "its tokenizer is not one mmtrain wrote: its max_length is below 1",
    "tokenizer_id_past_its_vocabulary": "it maps a token to id 1000000, past its vocabulary",
    "tokenizer_of_a_billion_tokens": "its max_length 1000000000 is above 65536",
    "image_size_past_any_screen": "its config's data.image_size=1000000 is not an integer in 1..4096",
    "synthetic_set_of_a_trillion_pairs": "its config's data.n_test=1000000000000 is not an integer in 0..10000000",
    "evaluation_batch_size_that_is_text": "its trainer.eval_batch_size='64' is not a positive integer",
    "list_bomb": "its config has more than 100000 entries",
    "string_bomb": "trainer.n1 holds an interpolation",
    "weights_that_are_not_tensors": "its model weights are not a mapping of names to tensors",
}


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def test_the_hand_built_checkpoint_evaluates(genuine, tmp_path):
    path = tmp_path / "genuine.pt"
    atomic_save(genuine, path)
    result = evaluate_checkpoint(path, device="cpu", limit_eval_batches=1)
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_crafted_checkpoint_is_refused_in_one_line_and_leaves_no_trace(genuine, tmp_path, attack):
    area = tmp_path / "area"
    area.mkdir()
    (area / "victim.txt").write_text("precious results\n")
    ckpt = copy.deepcopy(genuine)
    ATTACKS[attack](ckpt, area)
    path = tmp_path / "downloaded.pt"
    atomic_save(ckpt, path)
    before = _snapshot(tmp_path)
    out = run_cli(["eval", f"ckpt={path}", "device=cpu"], tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and MESSAGES[attack] in lines[0] and str(path) in lines[0], lines
    assert _snapshot(tmp_path) == before  # no download folder, no eval result, no log


def _run_dir_beside_another(tmp_path: Path, genuine: dict) -> tuple[Path, Path]:
    """A downloaded run dir (its config still to write) and someone else's run beside it."""
    run = tmp_path / "downloaded_run"
    (run / ".hydra").mkdir(parents=True)
    other = tmp_path / "other_run" / "checkpoints" / "s"
    other.mkdir(parents=True)
    atomic_save(genuine, other / "best.pt")
    return run, other


def _anchor_bomb() -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):  # 10**10 entries once OmegaConf copies the aliases out
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines + ["stages: {finetune: {}}", ""])


@pytest.mark.parametrize("attack", ["stage_name_escaping_the_run", "absolute_stage_name", "anchor_bomb"])
def test_a_hostile_run_config_is_refused_in_one_line_and_leaves_no_trace(genuine, tmp_path, attack):
    run, other = _run_dir_beside_another(tmp_path, genuine)
    config = {"stage_name_escaping_the_run": "stages: {'../../other_run/checkpoints/s': {}}\n",
              "absolute_stage_name": f"stages: {{'{other}': {{}}}}\n",
              "anchor_bomb": _anchor_bomb()}[attack]
    (run / ".hydra" / "config.yaml").write_text(config)
    before = _snapshot(tmp_path)
    out = run_cli(["eval", f"run={run}", "device=cpu"], tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    expected = "more than 100000 entries" if attack == "anchor_bomb" else "is not a plain name"
    assert len(lines) == 1 and expected in lines[0], lines
    assert _snapshot(tmp_path) == before  # in particular no other_run/eval/ result


def test_a_genuine_run_dir_still_finds_its_last_stage(genuine, tmp_path):
    from mmtrain.eval import resolve_checkpoint

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("stages: {pretrain: {epochs: 1}, finetune: {epochs: 1}}\n")
    for stage in ("pretrain", "finetune"):
        (run / "checkpoints" / stage).mkdir(parents=True)
        atomic_save(genuine, run / "checkpoints" / stage / "best.pt")
    assert resolve_checkpoint(None, str(run)) == run / "checkpoints" / "finetune" / "best.pt"


@pytest.mark.parametrize("link", ["eval/finetune_best_test.log", "eval/finetune_best_test", "eval"])
def test_a_run_dir_with_a_link_where_eval_writes_is_refused_and_the_target_untouched(genuine, tmp_path,
                                                                                   link):
    area = tmp_path / "home"
    area.mkdir()
    (area / ".bashrc").write_text("precious\n")
    run = tmp_path / "downloaded_run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("stages: {finetune: {epochs: 1}}\n")
    (run / "checkpoints" / "finetune").mkdir(parents=True)
    atomic_save(genuine, run / "checkpoints" / "finetune" / "best.pt")
    (run / link).parent.mkdir(parents=True, exist_ok=True)
    # The log would be appended to the file the link names; artifacts written into its folder.
    (run / link).symlink_to(area / ".bashrc" if link.endswith(".log") else area)
    before = _snapshot(tmp_path)
    out = run_cli(["eval", f"run={run}", "device=cpu"], tmp_path, timeout=90)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{run / link} is a symbolic link: refusing to write through it" in lines[0]
    assert _snapshot(tmp_path) == before


def test_predict_embed_and_export_size_the_model_from_the_weights_too(genuine, tmp_path):
    from mmtrain.errors import CheckpointError
    from mmtrain.inference import load_for_inference

    ckpt = copy.deepcopy(genuine)
    ckpt["config"]["model"]["fusion"]["dim"] = 10**6  # 4 TB of float32 if it were allocated
    path = tmp_path / "wide.pt"
    atomic_save(ckpt, path)
    with pytest.raises(CheckpointError, match="does not fit this model/config"):
        load_for_inference(path, device="cpu")
    atomic_save(genuine, path)
    assert load_for_inference(path, device="cpu").stage == "finetune"
