"""Tiny trained checkpoints on the fixture datasets, shared by the predict, embed/search and
export tests: a digit classifier (MNIST + IMDB files) and a CLIP-style model (COCO files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmtrain.data import fixtures
from tests.helpers import changed, compose, single_thread
from tests.data_helpers import FIXTURE_MODEL, coco_fixture, mnist_imdb_fixture


def train(run_dir: Path, overrides: list[str]) -> Path:
    """Train in this process on one thread (tiny models: a second only adds waiting)."""
    from mmtrain.train import train as train_run

    with single_thread():  # also when a session fixture trains, before any test's own thread setting
        train_run(compose([*overrides, "test=false", "trainer.device=cpu"]), run_dir)
    return run_dir


def train_digit_classifier(tmp: Path) -> Path:
    """best.pt of a classifier of the digit alone (target=digit) on the MNIST + IMDB fixture."""
    # The fixture digits vary like handwriting: a width-8 CNN misreads a third of them after
    # 540 training images; width 16 after 1 080 reads ~0.9 (tests/test_data_mnist_imdb.py).
    root = mnist_imdb_fixture(tmp / "mnist_imdb", n_train=1200, n_test=100, n_reviews=60)
    run = train(tmp / "digits", ["+experiment=mnist_imdb", f"data.root={root}", "data.target=digit",
                                  "data.tokenizer_options.max_length=48", "stages.pretrain.epochs=6",
                                  "stages.finetune.epochs=4", "stages.finetune.lr_scale={}", "optimizer.lr=1e-2", "trainer.batch_size=32",
                                  "stages.finetune.task.hidden_dim=32",
                                  *changed(FIXTURE_MODEL, "model.image_encoder.width=16")])
    return run / "checkpoints/finetune/best.pt"


def train_coco_clip(tmp: Path) -> tuple[Path, Path]:
    """(best.pt of a contrastive model, the COCO fixture root) at 32 px."""
    root = coco_fixture(tmp / "coco", n_train=160, n_val=20)
    run = train(tmp / "clip", ["+experiment=coco_clip", "model/image_encoder=cnn", "model/text_encoder=gru",
                                f"data.root={root}", "data.image_size=32", "data.n_val=20",
                                "data.tokenizer_options.max_length=16", "trainer.num_workers=0",
                                "trainer.batch_size=32", "stages.pretrain.epochs=12",
                                "stages.pretrain.task.embed_dim=32", "optimizer.lr=5e-3", *FIXTURE_MODEL])
    return run / "checkpoints/pretrain/best.pt", root


def mmtrain_in_process(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `mmtrain ARGS` run in this process: the CLI's own error
    handling, without a subprocess's seconds of importing torch again."""
    import contextlib
    import io
    import os

    from hydra.core.global_hydra import GlobalHydra

    from mmtrain import cli

    out, err, here = io.StringIO(), io.StringIO(), Path.cwd()
    GlobalHydra.instance().clear()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        os.chdir(here)
    return code, out.getvalue(), err.getvalue()


def write_digit_pngs(folder: Path, n: int, seed: int = 99) -> list[int]:
    """n fresh seven-segment digits (a seed the training files never used) as PNGs; their labels."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    images, labels = fixtures.seven_segment_digits(n, np.random.default_rng(seed))
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    return [int(x) for x in labels]


def coco_val_captions(root: Path) -> dict[Path, str]:
    """Each held-out COCO fixture image (val2017) and its first caption."""
    doc = json.loads((root / "annotations/captions_val2017.json").read_text())
    first: dict[int, str] = {}
    for ann in sorted(doc["annotations"], key=lambda a: a["id"]):
        first.setdefault(ann["image_id"], ann["caption"])
    return {root / "val2017" / im["file_name"]: first[im["id"]] for im in doc["images"]}
