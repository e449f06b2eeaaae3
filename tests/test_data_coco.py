"""COCO captions from the official layout: decoding, the caption rule, splits, caches, errors, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmtrain.data.coco import build_coco_captions
from mmtrain.data.loader import make_loader
from mmtrain.errors import DataError
from tests.data_helpers import coco_fixture, run_mmtrain
from tests.helpers import compose

TOK = {"kind": "word", "vocab_size": 200, "max_length": 16}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return coco_fixture(tmp_path_factory.mktemp("coco"))


def build(root: Path, **kw):
    kw = {"image_size": 32, "n_val": 8, "tokenizer_options": TOK, **kw}
    return build_coco_captions(root=str(root), **kw)


def test_every_image_is_rgb_uint8_of_the_configured_size_including_grayscale_and_cmyk(root):
    bundle = build(root)
    gray, cmyk = bundle.train[0]["image"], bundle.train[1]["image"]   # the fixture's L and CMYK JPEGs
    for image in (gray, cmyk, bundle.train[2]["image"], bundle.test[0]["image"]):
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert bundle.info.image_channels == 3 and bundle.info.num_classes == {}


def test_cmyk_jpeg_decodes_to_the_colours_of_its_rgb_twin(tmp_path):
    from mmtrain.data.coco import load_image

    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :20] = (220, 40, 40)
    pixels[:, 20:40] = (40, 190, 60)
    pixels[:, 40:] = (50, 80, 230)
    Image.fromarray(pixels).save(tmp_path / "rgb.jpg", quality=95)
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgb, cmyk = load_image(str(tmp_path / "rgb.jpg"), 32), load_image(str(tmp_path / "cmyk.jpg"), 32)
    assert cmyk.shape == (3, 32, 32)
    assert (rgb.float() - cmyk.float()).abs().mean() < 8      # not inverted, not channel-swapped


def photo(path: Path, width: int, height: int) -> Path:
    """A smooth photo-like JPEG with detail at every scale (bicubic-upsampled noise)."""
    rng = np.random.default_rng(width + height)
    base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(base).astype(np.int16) + rng.integers(-4, 5, (height, width, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("width,height,size", [(640, 480, 224), (640, 480, 64), (480, 640, 64), (500, 333, 96)])
def test_draft_decoded_images_match_torchvision_resize_and_center_crop_of_the_full_picture(
        tmp_path, width, height, size, interpolation):
    from torchvision.transforms.v2 import InterpolationMode, functional as TF

    from mmtrain.data.coco import load_image

    path = photo(tmp_path / "photo.jpg", width, height)
    full = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    references = {mode: TF.center_crop(TF.resize(full, size, InterpolationMode(mode), antialias=True), [size, size])
                  for mode in ("bilinear", "bicubic")}
    reference = references[interpolation]
    image = load_image(str(path), size, interpolation=interpolation)
    assert image.shape == reference.shape and image.dtype == torch.uint8
    # Reduced-scale DCT decoding is not bit-exact, but within about a grey level on average.
    assert (image.float() - reference.float()).abs().mean() < 1.5
    Image.open(path).save(tmp_path / "photo.png")   # PNG: no draft mode, the same crop and filter
    png = load_image(str(tmp_path / "photo.png"), size, interpolation=interpolation)
    assert (png.float() - reference.float()).abs().mean() < 0.1
    # The filter asked for, not the other one: closer to its own reference by far.
    other = references["bicubic" if interpolation == "bilinear" else "bilinear"]
    assert (png.float() - other.float()).abs().mean() > 2 * (png.float() - reference.float()).abs().mean()


def test_the_interpolation_reaches_the_splits_the_image_cache_and_the_data_info(tmp_path):
    from mmtrain.data import DataInfo
    from mmtrain.data.coco import load_image

    root = coco_fixture(tmp_path, n_train=12, n_val=4)
    bicubic = build(root, n_val=2, interpolation="bicubic")
    first = bicubic.test.images.paths[0]
    assert torch.equal(bicubic.test[0]["image"], load_image(first, 32, interpolation="bicubic"))
    assert not torch.equal(bicubic.test[0]["image"], load_image(first, 32))
    cache = {"cache_images": True, "cache_workers": 0, "cache_dir": str(tmp_path / "cache")}
    build(root, n_val=2, **cache)
    cached = build(root, n_val=2, interpolation="bicubic", **cache)
    assert len(list((tmp_path / "cache").glob("coco-images-*.npy"))) == 6   # 3 splits x 2 filters
    assert torch.equal(cached.test[0]["image"], bicubic.test[0]["image"])
    payload = bicubic.info.to_payload()
    assert DataInfo(**payload).interpolation == "bicubic"
    del payload["interpolation"]                      # a checkpoint saved before the option
    assert DataInfo(**payload).interpolation == "bilinear"


def test_a_run_saved_before_the_interpolation_option_resumes_as_bilinear(coco_clip, tmp_path):
    from omegaconf import OmegaConf

    from mmtrain.errors import CheckpointError
    from mmtrain.run_dir import load_resume

    payload = torch.load(coco_clip[0].parent / "last.pt", weights_only=True)
    cfg = OmegaConf.create(payload["config"])
    del payload["config"]["data"]["interpolation"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_resume(cfg, tmp_path / "old.pt")["position"] == payload["position"]
    cfg.data.interpolation = "bicubic"
    with pytest.raises(CheckpointError, match="data.interpolation: 'bilinear' in the checkpoint, 'bicubic' now"):
        load_resume(cfg, tmp_path / "old.pt")


def test_an_unknown_interpolation_is_one_line_naming_the_choices(tmp_path):
    from tests.inference_helpers import mmtrain_in_process
    from tests.test_predict import one_error_line

    root = coco_fixture(tmp_path, n_train=12, n_val=4)
    code, _, err = mmtrain_in_process(["train", "+experiment=coco_clip", f"data.root={root}", "data.n_val=2",
                                       "data.interpolation=bicubc", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert "data.interpolation='bicubc': choose bilinear or bicubic" in one_error_line(code, err)


def test_train_has_one_sample_per_image_and_rotates_its_captions_by_epoch(root):
    bundle = build(root, seed=1)
    train = bundle.train
    assert len(train) == 40                                    # 48 train2017 images - 8 held out
    rows = [train.caption_row(5, epoch) for epoch in range(5)]
    assert sorted(rows) == list(range(int(train.records.first[5]), int(train.records.first[5]) + 5))
    assert build(root, seed=1).train.caption_row(5, 3) == rows[3]   # deterministic
    # The epoch reaches the dataset through the sampler's tagged indices, also in workers.
    loader = make_loader(train, 8, train=True, seed=0, num_workers=1)
    loader.sampler.set_epoch(2)
    order = list(iter(loader.sampler))
    first = next(iter(loader))
    for k, text in zip(order[:8], first["text"]):
        i = k - 2 * len(train)
        expected = bundle.train.ids[train.caption_row(i, 2)][: text.shape[0]]
        assert torch.equal(text, expected)
    assert torch.equal(first["image_id"], train.records.image_ids[torch.tensor(order[:8]) - 2 * len(train)])


def test_val_and_test_yield_every_caption_with_its_image_id_in_a_fixed_order(root):
    bundle = build(root)
    assert len(bundle.val) == 8 * 5 and len(bundle.test) == 16 * 5
    ids = [int(bundle.test[j]["image_id"]) for j in range(len(bundle.test))]
    assert ids == sorted(ids) and len(set(ids)) == 16 and all(ids.count(i) == 5 for i in set(ids))
    doc = json.loads((root / "annotations/captions_val2017.json").read_text())
    first_image = min(im["id"] for im in doc["images"])
    captions = [a["caption"] for a in sorted(doc["annotations"], key=lambda a: a["id"]) if a["image_id"] == first_image]
    decoded = [bundle.tokenizer.decode(bundle.test[j]["text"].tolist()) for j in range(5)]
    assert decoded == [" ".join(c.lower().replace(",", " , ").split()) for c in captions]
    # Train and validation come from train2017 without overlap; test is val2017.
    assert not set(bundle.train.records.image_ids.tolist()) & set(bundle.val.records.image_ids.tolist())
    assert set(ids) == {im["id"] for im in doc["images"]}


def test_karpathy_split_file_gives_its_train_val_test(root):
    bundle = build(root, karpathy_file="dataset_coco.json", n_val=None)
    assert (len(bundle.train), len(bundle.val) // 5, len(bundle.test) // 5) == (48, 8, 8)


def test_image_cache_holds_the_same_pixels_and_is_reused(tmp_path):
    root = coco_fixture(tmp_path, n_train=12, n_val=4)
    plain = build(root, n_val=2)
    cached = build(root, n_val=2, cache_images=True, cache_workers=0, cache_dir=str(tmp_path / "cache"))
    files = sorted((tmp_path / "cache").glob("coco-images-*.npy"))
    assert len(files) == 3
    for j in (0, 1, 5):
        assert torch.equal(plain.val[j]["image"], cached.val[j]["image"])
        assert torch.equal(plain.train[j]["image"], cached.train[j]["image"])
    stamps = [f.stat().st_mtime_ns for f in files]
    build(root, n_val=2, cache_images=True, cache_workers=0, cache_dir=str(tmp_path / "cache"))
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_missing_image_is_named_or_skipped_with_the_explicit_option(tmp_path):
    root = coco_fixture(tmp_path, n_train=12, n_val=4)
    gone = sorted((root / "val2017").iterdir())[2]
    gone.unlink()
    with pytest.raises(DataError, match=f"{gone}.*missing on disk.*missing_images=skip"):
        build(root, n_val=2)
    assert len(build(root, n_val=2, missing_images="skip").test) == 3 * 5


def test_captions_json_without_annotations_is_named(tmp_path):
    root = coco_fixture(tmp_path, n_train=12, n_val=4)
    path = root / "annotations/captions_train2017.json"
    doc = json.loads(path.read_text())
    del doc["annotations"]
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=f"{path} has no 'annotations'"):
        build(root, n_val=2)


def test_undecodable_jpeg_is_named(tmp_path):
    root = coco_fixture(tmp_path, n_train=12, n_val=4)
    bad = sorted((root / "val2017").iterdir())[0]
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    bundle = build(root, n_val=2)
    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        bundle.test[0]


def test_missing_coco_says_the_download_command(tmp_path):
    with pytest.raises(DataError, match=f"mmtrain data download coco --root {tmp_path}"):
        build(tmp_path)


def test_coco_caption_recipe_composes_contrastive_then_captioning(root):
    cfg = compose(["+experiment=coco_caption", f"data.root={root}"])
    assert list(cfg.stages) == ["pretrain", "caption"]
    assert [s.task._target_ for s in cfg.stages.values()] == ["mmtrain.tasks.contrastive.ContrastiveTask",
                                                              "mmtrain.tasks.captioning.CaptioningTask"]
    assert cfg.data._target_ == "mmtrain.data.coco.build_coco_captions"


def test_coco_clip_from_the_cli_aligns_images_and_captions_above_chance(tmp_path):
    out = run_mmtrain(["data", "synth", "coco", "--out", str(tmp_path / "coco"), "--n-train", "160",
                       "--n-test", "20"], tmp_path)
    assert out.returncode == 0, out.stderr
    # The recipe's ResNet-50 + transformer, swapped for the small encoders to run in seconds.
    out = run_mmtrain(["train", "+experiment=coco_clip", "model/image_encoder=cnn", "model/text_encoder=gru",
                       f"data.root={tmp_path / 'coco'}", "data.image_size=32",
                       "data.n_val=20", "data.tokenizer_options.max_length=16", "trainer.num_workers=0",
                       "trainer.batch_size=32", "stages.pretrain.epochs=12", "stages.pretrain.task.embed_dim=32",
                       "optimizer.lr=5e-3", "model.image_encoder.width=8", "model.image_encoder.dim=32",
                       "model.text_encoder.embed_dim=16", "model.text_encoder.hidden_dim=32",
                       "trainer.progress=false", "logger.tensorboard=false", f"hydra.run.dir={tmp_path / 'run'}"],
                      tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    val = metrics["stages"]["pretrain"]["val"]
    # 100 validation captions of 20 images: recall@5 by chance is about 0.05 (per caption) / 0.25 (per image).
    assert val["t2i_r5"] > 0.5 and val["i2t_r5"] > 0.15, val


def test_2014_layout_is_read_with_data_year(tmp_path):
    root = coco_fixture(tmp_path, n_train=6, n_val=3, year=2014)
    assert (root / "train2014/COCO_train2014_000000000001.jpg").is_file()
    bundle = build(root, year=2014, n_val=2)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (4, 10, 15)
