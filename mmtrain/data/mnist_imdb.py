"""MNIST digits paired with IMDB reviews: a task that needs both modalities.

Pairing rule (documented in the README): for each split, a generator seeded with
(seed, split) draws one permutation of that split's images and one of its reviews, and
pair i is (image perm[i mod #images], review perm[i mod #reviews]). Train and validation
pairs come from the MNIST and IMDB train sets (a `val_fraction` of each is held out for
validation, disjoint from train), test pairs only from the two test sets. The same seed
gives the same pairs. The label of a pair is `data.target`:
`joint` = 2*digit + sentiment (20 classes), `xor` = (digit mod 2) xor sentiment,
`digit` or `sentiment` (one modality suffices: a baseline).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmtrain.data import DataBundle, DataInfo
from mmtrain.data.cache import cache_dir as resolve_cache_dir, tokenized_corpus
from mmtrain.data.download import download as download_dataset, download_command
from mmtrain.data.imdb import SENTIMENTS, imdb_source
from mmtrain.data.tokenizer import TextTokenizer
from mmtrain.errors import DataError

TARGETS = ("joint", "xor", "digit", "sentiment")
MNIST_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_STREAM = {"train": 1, "val": 2, "test": 3}
IDX_IMAGES, IDX_LABELS = 0x0803, 0x0801  # unsigned bytes, 3 and 1 dimensions


class PairedDataset(Dataset):
    """Pairs that index shared image and token tensors: no copy of either per pair."""

    def __init__(self, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                 image_index: torch.Tensor, text_index: torch.Tensor, **labels: torch.Tensor) -> None:
        self.images, self.ids, self.lengths = images, ids, lengths
        self.image_index, self.text_index = image_index, text_index
        self.labels = labels

    def __len__(self) -> int:
        return self.image_index.shape[0]

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        img, txt = self.image_index[idx], self.text_index[idx]
        batch = {"image": self.images[img], "text": self.ids[txt], "text_lengths": self.lengths[txt]}
        batch.update({k: v[idx] for k, v in self.labels.items()})
        return batch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def mnist_file(root: Path, name: str) -> Path:
    """The unpacked idx file if it is there, else its `.gz` (read in place, never unpacked)."""
    raw = root / "MNIST" / "raw"
    for path in (raw / name, raw / f"{name}.gz"):
        if path.is_file():
            return path
    raise DataError(f"MNIST file {raw / name}[.gz] is missing: run "
                    f"`{download_command('mnist_imdb', root)}` or pass data.download=true")


def read_idx(path: Path, magic: int, root: Path) -> torch.Tensor:
    """An idx file of unsigned bytes (MNIST's format), plain or gzipped, as a uint8 tensor."""
    def invalid(reason: str) -> DataError:
        return DataError(f"MNIST file {path} is not a valid idx file ({reason}): delete it and run "
                         f"`{download_command('mnist_imdb', root)}`")

    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise invalid(f"unreadable: {e}") from None
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise invalid(f"magic number {found}, expected {magic}")
    dims = magic & 0xFF
    header = 4 + 4 * dims
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    if len(data) != header + math.prod(shape):
        raise invalid(f"{len(data) - header} data bytes for shape {tuple(shape)}: truncated")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).reshape(shape)


def load_mnist(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (images uint8 N x 1 x 28 x 28, digits N) from the split's idx files, labels checked."""
    image_name, label_name = MNIST_FILES[train]
    image_path, label_path = mnist_file(root, image_name), mnist_file(root, label_name)
    images = read_idx(image_path, IDX_IMAGES, root)
    digits = read_idx(label_path, IDX_LABELS, root)
    if tuple(images.shape[1:]) != (28, 28):
        raise DataError(f"MNIST file {image_path} holds {tuple(images.shape[1:])} images, not 28 x 28")
    bad = torch.nonzero(digits > 9)
    if len(bad):
        i = int(bad[0])
        raise DataError(f"MNIST file {label_path} holds label {int(digits[i])} at position {i}: a digit "
                        f"is 0-9, so the file is corrupt: delete it and run "
                        f"`{download_command('mnist_imdb', root)}`")
    if images.shape[0] != digits.shape[0]:
        raise DataError(f"MNIST files {image_path} and {label_path} disagree: {images.shape[0]} images "
                        f"but {digits.shape[0]} labels: delete them and run "
                        f"`{download_command('mnist_imdb', root)}`")
    return images.unsqueeze(1).contiguous(), digits.long()


def pair_indices(n_images: int, n_texts: int, n: int, seed: int,
                 split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairing rule: pair i = (image perm[i mod n_images], text perm[i mod n_texts])."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + SPLIT_STREAM[split])
    images, texts = torch.randperm(n_images, generator=g), torch.randperm(n_texts, generator=g)
    i = torch.arange(n)
    return images[i % n_images], texts[i % n_texts]


def make_target(target: str, digit: torch.Tensor, sentiment: torch.Tensor) -> torch.Tensor:
    if target == "joint":
        return 2 * digit + sentiment
    if target == "xor":
        return (digit % 2) ^ sentiment
    if target == "digit":
        return digit
    return sentiment


# OpenAI's CLIP prompt for MNIST (its zero-shot evaluation's).
DIGIT_PROMPTS = ['a photo of the number: "{}".']


def target_names(target: str) -> list[str]:
    if target == "joint":
        return [f"{d}-{s}" for d in range(10) for s in SENTIMENTS]
    if target == "xor":
        return ["even-negative or odd-positive", "even-positive or odd-negative"]
    if target == "digit":
        return [str(d) for d in range(10)]
    return list(SENTIMENTS)


def build_mnist_imdb(
    root: str = "data",
    target: str = "joint",
    seed: int = 0,
    val_fraction: float = 0.1,
    n_train: int | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
    text: dict[str, Any] | None = None,
    tokenizer_options: dict[str, Any] | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    download: bool = False,
    tokenizer: TextTokenizer | None = None,
) -> DataBundle:
    """MNIST x IMDB pairs under `root` (only read; written only when `download`);
    n_* = null uses one pair per image of the split."""
    if target not in TARGETS:
        raise DataError(f"data.target={target!r}: choose one of {', '.join(TARGETS)}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"data.val_fraction={val_fraction} must be between 0 and 1")
    text = {"format": "aclimdb", "csv_file": "IMDB Dataset.csv", **(text or {})}
    if set(text) - {"format", "csv_file"}:
        raise DataError(f"data.text has no option {sorted(set(text) - {'format', 'csv_file'})[0]!r} "
                        f"(it accepts: format, csv_file)")
    root_path = Path(root).expanduser()
    if download and not _present(root_path, text["format"], text["csv_file"]):
        download_dataset("mnist_imdb", root_path)
    if text["format"] == "aclimdb" and not (root_path / "aclImdb").is_dir():
        raise DataError(f"IMDB not found: {root_path / 'aclImdb'} is missing: run "
                        f"`{download_command('mnist_imdb', root_path)}` or pass data.download=true")

    train_images, train_digits = load_mnist(root_path, train=True)
    test_images, test_digits = load_mnist(root_path, train=False)
    identity, load = imdb_source(root_path, text["format"], text["csv_file"])
    tokenizer, tokens = tokenized_corpus(resolve_cache_dir(cache_dir), f"imdb-{text['format']}",
                                         identity, load, tokenizer,
                                         dict(tokenizer_options or {}), enabled=cache)
    n_reviews_train = int(tokens["n_train"])
    sentiment = tokens["sentiment"].long()

    # Hold out validation images and reviews from the train sets, by a seeded draw.
    g = torch.Generator().manual_seed(seed)
    img_perm = torch.randperm(train_images.shape[0], generator=g)
    txt_perm = torch.randperm(n_reviews_train, generator=g)
    n_val_img = max(1, int(len(img_perm) * val_fraction))
    n_val_txt = max(1, int(len(txt_perm) * val_fraction))
    pools = {
        "train": (train_images, train_digits, img_perm[n_val_img:], txt_perm[n_val_txt:]),
        "val": (train_images, train_digits, img_perm[:n_val_img], txt_perm[:n_val_txt]),
        "test": (test_images, test_digits, torch.arange(test_images.shape[0]),
                 torch.arange(n_reviews_train, sentiment.shape[0])),
    }
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    splits = {}
    for split, (images, digits, img_pool, txt_pool) in pools.items():
        if len(txt_pool) == 0:
            raise DataError(f"IMDB under {root_path} has no {split} reviews")
        n = sizes[split] or len(img_pool)
        a, b = pair_indices(len(img_pool), len(txt_pool), n, seed, split)
        img_idx, txt_idx = img_pool[a], txt_pool[b]
        digit, senti = digits[img_idx], sentiment[txt_idx]
        splits[split] = PairedDataset(images, tokens["ids"], tokens["lengths"], img_idx, txt_idx,
                                      label=make_target(target, digit, senti), digit=digit, sentiment=senti)
    names = target_names(target)
    info = DataInfo(
        image_channels=1, image_size=28, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
        num_classes={"label": len(names), "digit": 10, "sentiment": 2},
        class_names={"label": names, "digit": target_names("digit"), "sentiment": list(SENTIMENTS)},
        image_mean=(0.1307,), image_std=(0.3081,),
        modality_labels={"image": "digit", "text": "sentiment"},
        prompt_templates={key: DIGIT_PROMPTS for key in ("digit", "label") if key == "digit" or target == "digit"},
    )
    return DataBundle(splits["train"], splits["val"], splits["test"], tokenizer, info)


def _present(root: Path, fmt: str, csv_file: str) -> bool:
    raw = root / "MNIST" / "raw"
    mnist = all((raw / n).is_file() or (raw / f"{n}.gz").is_file()
                for names in MNIST_FILES.values() for n in names)
    imdb = (root / "aclImdb").is_dir() if fmt == "aclimdb" else (root / csv_file).is_file()
    return mnist and imdb
