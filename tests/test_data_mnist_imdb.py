"""MNIST + IMDB from the official file formats: readers, the pairing rule, caches, errors, training."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtrain.data import fixtures
from mmtrain.data import imdb as imdb_lib
from mmtrain.data.mnist_imdb import build_mnist_imdb, load_mnist
from mmtrain.errors import ConfigError, DataError
from tests.data_helpers import FIXTURE_MODEL, mnist_imdb_fixture, run_mmtrain
from tests.helpers import changed, compose

TOK = {"kind": "word", "vocab_size": 200, "max_length": 48}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return mnist_imdb_fixture(tmp_path_factory.mktemp("mnist_imdb"))


def build(root: Path, **kw):
    return build_mnist_imdb(root=str(root), tokenizer_options=TOK, **kw)


def test_mnist_idx_gz_files_are_read_in_place_as_uint8_with_their_labels(root):
    from torchvision.datasets.mnist import read_image_file

    before = sorted(p.name for p in (root / "MNIST/raw").iterdir())
    images, digits = load_mnist(root, train=True)
    assert images.dtype == torch.uint8 and images.shape == (600, 1, 28, 28)
    with gzip.open(root / "MNIST/raw/train-labels-idx1-ubyte.gz") as f:
        assert int.from_bytes(f.read(4), "big") == 2049
        expected = np.frombuffer(f.read()[4:], dtype=np.uint8)
    assert digits.tolist() == expected.tolist()
    assert sorted(p.name for p in (root / "MNIST/raw").iterdir()) == before  # nothing unpacked
    unpacked = root.parent / "unpacked"  # the reference reader: torchvision's, on the raw file
    unpacked.write_bytes(gzip.decompress((root / "MNIST/raw/train-images-idx3-ubyte.gz").read_bytes()))
    assert torch.equal(images[:, 0], read_image_file(str(unpacked)))


def test_fixture_digits_are_the_same_for_the_same_seed_and_differ_for_another():
    a, b, c = (fixtures.seven_segment_digits(64, np.random.default_rng(s)) for s in (5, 5, 6))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].dtype == np.uint8 and a[0].shape == (64, 28, 28) and set(a[1].tolist()) <= set(range(10))


def test_fixture_digits_separate_a_small_cnn_from_logistic_regression_on_pixels(one_thread):
    """As on real MNIST (~0.92 vs ~0.99), position, slant, size and stroke width vary enough
    that a linear model on the pixels misreads many digits a small CNN reads."""
    from sklearn.linear_model import LogisticRegression

    from mmtrain.models.image_encoder import CNNEncoder

    train_x, train_y = fixtures.seven_segment_digits(1200, np.random.default_rng(0))
    test_x, test_y = fixtures.seven_segment_digits(500, np.random.default_rng(1))
    linear = LogisticRegression(max_iter=300).fit(train_x.reshape(1200, -1) / 255, train_y)
    linear_accuracy = linear.score(test_x.reshape(500, -1) / 255, test_y)

    torch.manual_seed(0)
    cnn, head = CNNEncoder(in_channels=1, image_size=28, width=16, dim=32), torch.nn.Linear(32, 10)
    x = (torch.tensor(train_x, dtype=torch.float32)[:, None] / 255 - 0.1307) / 0.3081
    y = torch.tensor(train_y)
    optimizer = torch.optim.AdamW([*cnn.parameters(), *head.parameters()], lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=10 * 38, pct_start=0.05)
    for _ in range(10):
        for batch in torch.randperm(1200).split(32):
            loss = torch.nn.functional.cross_entropy(head(cnn(x[batch]).pooled), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    cnn.eval()
    with torch.no_grad():
        pred = head(cnn((torch.tensor(test_x, dtype=torch.float32)[:, None] / 255 - 0.1307) / 0.3081).pooled)
    cnn_accuracy = (pred.argmax(1).numpy() == test_y).mean()
    assert linear_accuracy < 0.95 and cnn_accuracy > 0.95, (linear_accuracy, cnn_accuracy)
    assert cnn_accuracy - linear_accuracy > 0.08, (linear_accuracy, cnn_accuracy)


def test_reviews_lose_br_markup_and_keep_non_ascii_text(root):
    _, load = imdb_lib.imdb_source(root, "aclimdb")
    corpus = load()
    assert len(corpus["texts"]) == 240 and int(corpus["n_train"]) == 120
    assert not any("<br" in t for t in corpus["texts"])
    assert any("東京" in t for t in corpus["texts"]) and any("café" in t for t in corpus["texts"])
    assert corpus["sentiment"].tolist().count(1) == 120


def test_csv_form_reads_the_same_reviews_split_even_odd(root):
    _, load = imdb_lib.imdb_source(root, "csv")
    corpus = load()
    acl = imdb_lib.imdb_source(root, "aclimdb")[1]()
    assert sorted(corpus["texts"]) == sorted(acl["texts"])
    assert int(corpus["n_train"]) == 120


def test_same_seed_same_pairs_and_train_val_test_never_share_sources(root):
    a, b, c = build(root, seed=3), build(root, seed=3), build(root, seed=4)
    assert torch.equal(a.train.image_index, b.train.image_index)
    assert torch.equal(a.train.text_index, b.train.text_index)
    assert not torch.equal(a.train.image_index, c.train.image_index)
    # Train and validation pairs come from the train sets, disjointly.
    assert not set(a.train.image_index.tolist()) & set(a.val.image_index.tolist())
    assert not set(a.train.text_index.tolist()) & set(a.val.text_index.tolist())
    assert max(a.train.text_index.tolist() + a.val.text_index.tolist()) < 120
    # Test pairs: MNIST test images and IMDB test reviews only.
    assert a.test.images.shape[0] == 200 and a.train.images.shape[0] == 600
    assert min(a.test.text_index.tolist()) >= 120
    assert len(a.train) == 540 and len(a.val) == 60 and len(a.test) == 200


@pytest.mark.parametrize("target, classes", [("joint", 20), ("xor", 2), ("digit", 10), ("sentiment", 2)])
def test_target_is_computed_from_digit_and_sentiment(root, target, classes):
    bundle = build(root, target=target, n_train=64)
    batch = bundle.train.__getitems__(list(range(64)))
    d, s = batch["digit"], batch["sentiment"]
    expected = {"joint": 2 * d + s, "xor": (d % 2) ^ s, "digit": d, "sentiment": s}[target]
    assert torch.equal(batch["label"], expected)
    assert bundle.info.num_classes == {"label": classes, "digit": 10, "sentiment": 2}
    assert bundle.info.modality_labels == {"image": "digit", "text": "sentiment"}
    assert batch["image"].shape == (64, 1, 28, 28) and batch["image"].dtype == torch.uint8


def test_tokens_are_cached_and_a_changed_tokenizer_or_corpus_invalidates_them(tmp_path, monkeypatch):
    root = mnist_imdb_fixture(tmp_path, n_train=100, n_test=50, n_reviews=20)
    first = build(root)
    calls = []
    real = imdb_lib.read_review
    monkeypatch.setattr(imdb_lib, "read_review", lambda p: calls.append(p) or real(p))
    again = build(root)
    assert calls == [] and torch.equal(first.train.ids, again.train.ids)
    build_mnist_imdb(root=str(root), tokenizer_options={**TOK, "max_length": 16})
    assert len(calls) == 40                     # another tokenizer: read and tokenized again
    calls.clear()
    review = sorted((root / "aclImdb/train/pos").iterdir())[0]
    review.write_text("great great wonderful", encoding="utf-8")
    changed = build(root)
    assert len(calls) == 40
    assert not torch.equal(changed.train.ids, first.train.ids)


def _fresh(tmp_path: Path) -> Path:
    return mnist_imdb_fixture(tmp_path, n_train=50, n_test=20, n_reviews=10)


def test_truncated_idx_file_is_named(tmp_path):
    root = _fresh(tmp_path)
    packed = root / "MNIST/raw/train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:1000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz is not a valid idx file"):
        build(root)
    # An unpacked file is read in its place, and checked the same way.
    plain = root / "MNIST/raw/train-images-idx3-ubyte"
    plain.write_bytes((2051).to_bytes(4, "big") + (50).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                      + bytes(1000))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is not a valid idx file \(1000 data bytes"):
        build(root)


@pytest.mark.parametrize("split, prefix", [("train", "train"), ("test", "t10k")])
def test_a_label_byte_outside_0_to_9_is_named_with_its_file_when_the_split_is_built(tmp_path, split,
                                                                                  prefix):
    root = _fresh(tmp_path)
    path = root / f"MNIST/raw/{prefix}-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[8 + 5] = 12 if split == "train" else 255
    path.write_bytes(gzip.compress(bytes(data)))
    label = 12 if split == "train" else 255
    with pytest.raises(DataError, match=f"{path} holds label {label} at position 5: a digit is 0-9"):
        build(root)


def test_wrong_magic_idx_file_is_named(tmp_path):
    root = _fresh(tmp_path)
    with gzip.open(root / "MNIST/raw/t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write((1234).to_bytes(4, "big") + (20).to_bytes(4, "big") + bytes(20))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is not a valid idx file \(magic number 1234, expected 2049\)"):
        build(root)


@pytest.mark.parametrize("content, message", [(b"  <br /><br /> ", "is empty"),
                                               (b"caf\xe9 good film", "is not UTF-8")])
def test_bad_review_is_named(tmp_path, content, message):
    root = _fresh(tmp_path)
    bad = root / "aclImdb/test/neg/3_1.txt"
    bad.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        build(root)
    assert str(bad) in str(err.value)


def test_missing_dataset_says_the_download_command(tmp_path):
    with pytest.raises(DataError, match=f"mmtrain data download mnist_imdb --root {tmp_path}"):
        build(tmp_path)


def test_multitask_needs_modality_labels():
    from mmtrain.data import DataInfo
    from mmtrain.tasks.multitask import MultitaskTask

    info = DataInfo(image_channels=3, image_size=32, vocab_size=10, pad_id=0, num_classes={"label": 3})
    with pytest.raises(ConfigError, match="modality_labels"):
        MultitaskTask().attach(None, info)


def test_mnist_imdb_experiment_pretrains_each_encoder_then_learns_the_joint_target(tmp_path, one_thread):
    from mmtrain.train import train

    # The fixture digits vary like handwriting: a width-8 CNN reads ~0.65 of them after 540
    # training images, a width-16 one ~0.9 after 1 080, which these 1 200 give in as many steps.
    root = mnist_imdb_fixture(tmp_path / "data", n_train=1200, n_test=200)
    cfg = compose(["+experiment=mnist_imdb", f"data.root={root}", "data.tokenizer_options.max_length=48",
                   "stages.pretrain.epochs=6", "stages.finetune.epochs=4", "optimizer.lr=1e-2",
                   "trainer.batch_size=32", "stages.finetune.task.hidden_dim=32",
                   *changed(FIXTURE_MODEL, "model.image_encoder.width=16")])
    summary = train(cfg, tmp_path / "run")
    pre = summary["stages"]["pretrain"]["val"]
    assert pre["text_accuracy"] > 0.9 and pre["image_accuracy"] > 0.7, pre   # chance: 0.5 and 0.1
    assert summary["test"]["accuracy"] > 0.5, summary["test"]                # chance: 0.05 (20 classes)
    assert json.loads((tmp_path / "run/metrics.json").read_text())["test"] == summary["test"]


def test_eval_finds_a_moved_dataset_with_data_root_and_says_how_to_get_a_missing_one(tmp_path, one_thread):
    from mmtrain.train import train

    old_root = mnist_imdb_fixture(tmp_path / "old", n_train=200, n_test=100, n_reviews=60)
    run_dir = tmp_path / "run"
    summary = train(compose(["+experiment=mnist_imdb", f"data.root={old_root}",
                                   "stages.pretrain.epochs=1", "stages.finetune.epochs=1", *FIXTURE_MODEL]),
                    run_dir)
    new_root = old_root.rename(tmp_path / "new")

    out = run_mmtrain(["eval", f"run={run_dir}"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"mmtrain: error: IMDB not found: {old_root}/aclImdb is missing: run `mmtrain data download "
        f"mnist_imdb --root {old_root}` or pass data.download=true"]

    out = run_mmtrain(["eval", f"run={run_dir}", f"data.root={new_root}"], tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads((run_dir / "eval" / "finetune_best_test.json").read_text())
    assert result["metrics"] == pytest.approx(summary["test"], abs=1e-6)
