"""`mmtrain export`: every exportable encoder, fusion and task graph matches PyTorch in
onnxruntime (and TorchScript) at another batch size and text length than it was traced with."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtrain.export import TOLERANCE, export
from mmtrain.inference import Loaded
from tests.inference_helpers import mmtrain_in_process
from tests.test_predict import one_error_line
from tests.zoo import build, compose_config

ROOT = Path(__file__).resolve().parents[1]


def zoo_loaded(image: str = "cnn", text: str = "bow", fusion: str = "concat",
               task: str = "classification") -> Loaded:
    """A randomly initialised tiny model of these parts, as `load_for_inference` returns one."""
    cfg = compose_config(image=image, text=text, fusion=fusion, task=task)
    model, task_obj, data = build(cfg)
    model.eval().requires_grad_(False)
    return Loaded(Path(f"{image}-{text}-{fusion}-{task}.pt"), model, task_obj, "pretrain", data.info,
                  data.tokenizer, cfg, torch.device("cpu"))


def assert_exported(loaded: Loaded, out: Path, fmt: str = "onnx") -> dict:
    report = export(loaded, fmt, out)
    for r in report.values():
        assert r["parity_max_abs_diff"] < TOLERANCE and (out / r["file"]).is_file(), r
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["graphs"] == report and pre["text"]["max_length"] == loaded.tokenizer.max_length
    assert pre["image"]["interpolation"] == loaded.info.interpolation
    return report


@pytest.mark.parametrize("image", ["cnn", "resnet18", pytest.param("vit_tiny", marks=pytest.mark.slow),
                                   "open_clip"])
def test_every_image_encoder_family_exports_to_onnx_with_parity(image, tmp_path):
    report = assert_exported(zoo_loaded(image=image), tmp_path / "out")
    assert list(report) == ["classifier"]


@pytest.mark.parametrize("text", ["bow", "gru", "lstm", "transformer", "open_clip"])
def test_every_text_encoder_exports_to_onnx_with_parity_packed_rnns_included(text, tmp_path):
    assert_exported(zoo_loaded(text=text, task="contrastive"), tmp_path / "out")


@pytest.mark.parametrize("fusion", ["concat", "sum", "product", "gated", "film",
                                    pytest.param("attention", marks=pytest.mark.slow), "bilinear", "late"])
def test_every_fusion_exports_to_onnx_with_parity(fusion, tmp_path):
    assert_exported(zoo_loaded(fusion=fusion), tmp_path / "out")


def test_captioning_exports_the_image_memory_and_a_decoder_step_that_greedy_decodes_like_pytorch(tmp_path):
    import onnxruntime as ort

    loaded = zoo_loaded(task="captioning")
    report = assert_exported(loaded, tmp_path / "out")
    assert list(report) == ["image_encoder", "decoder_step"]
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    want = loaded.task.generate(loaded.model, images, beam_size=1)
    memory = ort.InferenceSession(str(tmp_path / "out/image_encoder.onnx")).run(None, {"image": images.numpy()})[0]
    step = ort.InferenceSession(str(tmp_path / "out/decoder_step.onnx"))
    ids = np.full((2, 1), loaded.tokenizer.bos_id, dtype=np.int64)
    for _ in range(loaded.task.decode_length):
        next_id = step.run(None, {"ids": ids, "memory": memory})[0].argmax(-1)
        ids = np.concatenate([ids, next_id[:, None]], axis=1)
    got = [row[1:].tolist() for row in ids]
    got = [r[: r.index(loaded.tokenizer.eos_id)] if loaded.tokenizer.eos_id in r else r for r in got]
    assert got == want


@pytest.mark.parametrize("task", ["classification", "contrastive", "captioning"])
def test_torchscript_export_matches_pytorch(task, tmp_path):
    report = assert_exported(zoo_loaded(text="gru", task=task), tmp_path / "out", fmt="torchscript")
    assert all(r["file"].endswith(".pt") for r in report.values())


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- export-snippet -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README lost its export snippet"
    return match.group(1)


def test_readme_snippet_runs_the_exported_model_without_mmtrain_or_torch(coco_clip, tmp_path):
    ckpt, root = coco_clip
    code, out, err = mmtrain_in_process(["export", f"ckpt={ckpt}", "out=exported",
                                         f"image={root / 'val2017'}"], tmp_path)
    assert code == 0, err
    assert "parity max abs diff" in out
    photo = sorted((root / "val2017").glob("*.jpg"))[3]
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    # Neither mmtrain nor torch may be imported: the snippet must run where only
    # onnxruntime, tokenizers, numpy and Pillow are installed.
    guard = "import sys\nsys.modules['mmtrain'] = None\nsys.modules['torch'] = None\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", guard + readme_snippet()], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    scores = dict(line.rsplit(" ", 1) for line in run.stdout.strip().splitlines())
    assert len(scores) == 3 and all(-1 <= float(s) <= 1 for s in scores.values())


def test_bad_inputs_get_one_line_and_exit_2(synthetic_classifier, tmp_path):
    ckpt = synthetic_classifier
    (tmp_path / "full").mkdir()
    (tmp_path / "full/keep.txt").write_text("mine")
    cases = {
        "choose onnx or torchscript": [f"ckpt={ckpt}", "out=x", "format=tflite"],
        "is not an empty folder": [f"ckpt={ckpt}", "out=full"],
        "checkpoint not found": ["ckpt=nope.pt", "out=x"],
        "usage: mmtrain export": [f"ckpt={ckpt}"],
    }
    for message, args in cases.items():
        code, _, err = mmtrain_in_process(["export", *args], tmp_path)
        assert message in one_error_line(code, err), message
    assert (tmp_path / "full/keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()


def test_a_graph_no_exporter_can_handle_is_refused_in_one_line_naming_its_parts(tmp_path, monkeypatch):
    from mmtrain.export import ExportError

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::mystery' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(ExportError) as info:
        export(zoo_loaded(text="gru"), "onnx", tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message and "classifier (CNNEncoder + GRUEncoder + ConcatFusion)" in message
    assert "torchscript-based exporter: RuntimeError" in message and "dynamo-based exporter" in message
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []
