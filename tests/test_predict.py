"""`mmtrain predict`: a trained checkpoint on image files it never saw, from the checkpoint alone."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from mmtrain.data.fixtures import COLOURS
from tests.data_helpers import FIXTURE_MODEL, coco_fixture, run_mmtrain
from tests.inference_helpers import (coco_val_captions, mmtrain_in_process, train,
                                     train_digit_classifier, write_digit_pngs)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return train_digit_classifier(tmp_path_factory.mktemp("digits"))


@pytest.mark.slow  # the classifier trains for ~25 s on a loaded 2-core machine
def test_digit_classifier_predicts_unseen_digit_files_above_chance_without_the_dataset(digits, tmp_path):
    labels = write_digit_pngs(tmp_path / "photos", 40)
    shutil.rmtree(digits.parents[3] / "mnist_imdb")  # a user predicting has no MNIST on disk
    out = run_mmtrain(["predict", f"ckpt={digits}", f"image={tmp_path / 'photos'}",
                       "text=a film with a plot", "top_k=3", "num_workers=2", "out=pred.json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads((tmp_path / "pred.json").read_text())["rows"]
    top1 = {Path(r["image"]).name: r["label"] for r in rows if r["rank"] == 1}
    assert len(top1) == 40 and sum(r["rank"] == 3 for r in rows) == 40
    accuracy = sum(top1[f"{i:03d}.png"] == str(label) for i, label in enumerate(labels)) / 40
    assert accuracy > 0.4, accuracy                                   # chance: 0.1
    assert "photos/000.png" in out.stdout and "top classes" in out.stdout


@pytest.mark.slow  # shares the digit classifier's ~25 s of training
def test_an_rgb_copy_of_a_grayscale_image_gets_the_same_probabilities(digits, tmp_path):
    from PIL import Image

    write_digit_pngs(tmp_path / "gray", 1)
    Image.open(tmp_path / "gray/000.png").convert("RGB").save(tmp_path / "rgb.png")
    for name in ("gray/000.png", "rgb.png"):
        code, _, err = mmtrain_in_process(["predict", f"ckpt={digits}", f"image={tmp_path / name}",
                                           "text=great film", f"out={name.replace('/', '_')}.csv"], tmp_path)
        assert code == 0, err
    gray, rgb = (list(csv.DictReader(open(tmp_path / f))) for f in ("gray_000.png.csv", "rgb.png.csv"))
    drop_image = [{k: v for k, v in r.items() if k != "image"} for r in gray + rgb]
    assert len(gray) == 5 and drop_image[:5] == drop_image[5:]


def test_zero_shot_names_the_colour_of_unseen_coco_images_above_chance(coco_clip, tmp_path):
    ckpt, root = coco_clip
    captions = coco_val_captions(root)
    code, _, err = mmtrain_in_process(["predict", f"ckpt={ckpt}", f"image={root / 'val2017'}",
                                       f"labels=[{','.join(COLOURS)}]", "template=\"a {} shape\"", "out=zs.csv"],
                                      tmp_path)
    assert code == 0, err
    top1 = {Path(r["image"]).name: r["label"] for r in csv.DictReader(open(tmp_path / "zs.csv"))
            if r["rank"] == "1"}
    hits = [top1[path.name] == caption.split()[1] for path, caption in captions.items()]
    assert sum(hits) / len(hits) > 0.4, (sum(hits), len(hits))       # chance: 1/6


def test_contrastive_checkpoint_gives_the_similarity_of_every_image_text_pair(coco_clip, tmp_path):
    ckpt, root = coco_clip
    captions = list(coco_val_captions(root).items())[:4]
    (tmp_path / "texts.txt").write_text("\n".join(c for _, c in captions) + "\n\n")
    code, out, err = mmtrain_in_process(["predict", f"ckpt={ckpt}", f"image={root / 'val2017'}/*.jpg",
                                         "text_file=texts.txt", "out=sim.json"], tmp_path)
    assert code == 0, err
    assert len(out.splitlines()) == 1 + 20 + 1  # header, one row per image, 'written:' 
    rows = json.loads((tmp_path / "sim.json").read_text())["rows"]
    assert len(rows) == 20 * 4 and all(-1.0 <= r["similarity"] <= 1.0 for r in rows)
    # Its own caption scores higher for an image than the other three, more often than chance (1/4).
    own = 0
    for path, text in captions:
        scores = {r["text"]: r["similarity"] for r in rows if Path(r["image"]).name == path.name}
        own += max(scores, key=scores.get) == text
    assert own >= 2, own


def test_captioning_checkpoint_writes_a_caption_per_image_with_greedy_and_beam(tmp_path):
    root = tmp_path / "coco"
    coco_fixture(root, n_train=32, n_val=4)
    run = train(tmp_path / "cap", ["+experiment=coco_caption", "model/image_encoder=cnn", "model/text_encoder=gru",
                                    f"data.root={root}", "data.image_size=32", "data.n_val=4",
                                    "data.tokenizer_options.max_length=12", "trainer.batch_size=16",
                                    "stages.pretrain.epochs=1", "stages.caption.epochs=1",
                                    "stages.caption.task.dim=16", "stages.caption.task.heads=2",
                                    "stages.caption.task.depth=1", *FIXTURE_MODEL])
    ckpt = run / "checkpoints/caption/best.pt"
    for beam in (1, 3):
        code, out, err = mmtrain_in_process(["predict", f"ckpt={ckpt}", f"image={root / 'val2017'}",
                                             f"beam_size={beam}", f"out=caps{beam}.json"], tmp_path)
        assert code == 0, err
        rows = json.loads((tmp_path / f"caps{beam}.json").read_text())["rows"]
        assert len(rows) == 4 and all(isinstance(r["caption"], str) for r in rows)
    assert out.splitlines()[0].split() == ["image", "caption"]
    code, _, err = mmtrain_in_process(["predict", f"ckpt={ckpt}", f"image={root / 'val2017'}", "text=a"], tmp_path)
    assert "writes the text itself" in one_error_line(code, err)


def test_a_checkpoint_trained_on_bicubic_images_decodes_new_images_with_bicubic(coco_clip, tmp_path):
    from mmtrain.data.coco import load_image
    from mmtrain.inference import image_batches, load_for_inference

    ckpt, root = coco_clip
    photo = str(sorted((root / "val2017").glob("*.jpg"))[0])
    payload = torch.load(ckpt, weights_only=True)
    size = payload["data_info"]["image_size"]
    assert payload["data_info"]["interpolation"] == "bilinear"
    assert not torch.equal(load_image(photo, size, interpolation="bicubic"), load_image(photo, size))
    payload["data_info"]["interpolation"] = "bicubic"   # as data.interpolation=bicubic saves it
    torch.save(payload, tmp_path / "bicubic.pt")
    del payload["data_info"]["interpolation"]            # as a checkpoint from before the option
    torch.save(payload, tmp_path / "old.pt")
    for name, interpolation in (("bicubic.pt", "bicubic"), ("old.pt", "bilinear")):
        loaded = load_for_inference(tmp_path / name, device="cpu")
        assert loaded.info.interpolation == interpolation
        batch = next(image_batches([photo], loaded.info, 1))
        assert torch.equal(batch.images[0], load_image(photo, size, interpolation=interpolation)), name


def one_error_line(code: int, stderr: str) -> str:
    assert code == 2, (code, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mmtrain: error: "), stderr
    return lines[0]


def test_bad_inputs_get_one_line_and_exit_2(synthetic_classifier, coco_clip, tmp_path):
    ckpt = coco_clip[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    write_digit_pngs(tmp_path / "ok", 1)
    image = f"image={tmp_path / 'ok/000.png'}"
    long_text = "red " * 40
    old = tmp_path / "old.pt"
    payload = torch.load(ckpt, weights_only=True)
    del payload["data_info"]
    torch.save(payload, old)
    lanczos = tmp_path / "lanczos.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["data_info"]["interpolation"] = "lanczos"
    torch.save(payload, lanczos)
    huge = tmp_path / "huge.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["data_info"]["image_size"] = 10**6  # every image decoded to 10**12 pixels
    torch.save(payload, huge)
    foreign = tmp_path / "foreign.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["config"]["model"]["fusion"]["_target_"] = "os.system"
    torch.save(payload, foreign)
    cases = {
        "no such file or folder": [f"ckpt={ckpt}", "image=missing.png", "text=a"],
        "holds no image files": [f"ckpt={ckpt}", f"image={tmp_path / 'empty'}", "text=a"],
        "no file matches": [f"ckpt={ckpt}", f"image={tmp_path}/*.webp", "text=a"],
        "cannot decode image": [f"ckpt={ckpt}", f"image={tmp_path / 'bad.jpg'}", "text=a"],
        "it was not cut": [f"ckpt={ckpt}", image, f"text={long_text}"],
        "needs a contrastive one": [f"ckpt={synthetic_classifier}", image, "labels=[a,b]"],
        "predates data info": [f"ckpt={old}", image, "text=a"],
        "has malformed data info": [f"ckpt={lanczos}", image, "text=a"],
        "asks for 1000000-px images, above 4096": [f"ckpt={huge}", image, "text=a"],
        "checkpoint not found": ["ckpt=nope.pt", image, "text=a"],
        "'os.system' is not an mmtrain component": [f"ckpt={foreign}", image, "text=a"],
        "name a .json or .csv": [f"ckpt={ckpt}", image, "text=a", "out=x.txt"],
        "needs text=": [f"ckpt={synthetic_classifier}", image],
        "cannot be zipped": [f"ckpt={synthetic_classifier}", f"image={tmp_path / 'two'}", "text_file=three.txt"],
    }
    write_digit_pngs(tmp_path / "two", 2)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    for message, args in cases.items():
        code, _, err = mmtrain_in_process(["predict", *args], tmp_path)
        assert message in one_error_line(code, err), message
    code, _, err = mmtrain_in_process(["predict", f"ckpt={ckpt}", image, f"text={long_text}", "truncate=true"],
                                      tmp_path)
    assert code == 0 and "were cut" in err, err


@pytest.mark.parametrize("command", ["predict", "embed", "search", "export"])
def test_help_shows_the_usage_and_every_option(command, tmp_path):
    code, out, err = mmtrain_in_process([command, "--help"], tmp_path)
    assert code == 0, err
    assert out.startswith(f"usage: mmtrain {command} ") and "trust_config: false" in out
    assert list(tmp_path.iterdir()) == []  # no log, no .hydra
