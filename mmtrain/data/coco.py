"""COCO captions: images decoded in DataLoader workers, captions tokenized once and cached;
the raw captions of the val and test images kept in `DataInfo.references` for caption metrics.

Layout under `root`: `annotations/captions_{train,val}<year>.json` and the image folders
`train<year>/`, `val<year>/`. Splits:
- official (default): test = val<year>; val = the last `n_val` images (by id) of train<year>,
  held out; train = the rest;
- Karpathy (`karpathy_file=dataset_coco.json`): its train+restval / val / test splits (5k test).

Training yields one sample per image per epoch with one of its captions: caption
(offset(seed, image) + epoch) mod #captions, so every caption is used in turn and a
resumed run draws the same ones. Validation and test yield one sample per (image,
caption) pair, in a fixed order, each with its `image_id`, for multi-caption recall.
Every image reaches the model as uint8 3 x image_size x image_size RGB (grayscale and
CMYK JPEGs converted), resized on its shorter side (data.interpolation: bilinear or bicubic,
antialiased) and center-cropped, decoded in the DataLoader workers (or once, into the
optional pre-resized cache: data.cache_images).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmtrain.data import DataBundle, DataInfo
from mmtrain.data.cache import cache_dir as resolve_cache_dir, cache_key, file_identity, tokenized_corpus
from mmtrain.data.download import download as download_dataset, download_command
from mmtrain.data.tokenizer import TextTokenizer
from mmtrain.errors import DataError

log = logging.getLogger("mmtrain")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INTERPOLATIONS = ("bilinear", "bicubic")
"""data.interpolation's choices: the resize filters of timm's and open_clip's pretrained configs."""

Entry = tuple[str, int, list[str]]
"""One image of a split: (file path, image id, its captions)."""


@dataclass
class Records:
    """Images of one split and where their captions sit in the token table."""

    paths: list[str]
    image_ids: torch.Tensor   # N
    first: torch.Tensor       # N: row of the image's first caption in the token table
    count: torch.Tensor       # N: how many captions it has

    def take(self, keep: list[int]) -> "Records":
        idx = torch.as_tensor(keep, dtype=torch.long)
        return Records([self.paths[i] for i in keep], self.image_ids[idx], self.first[idx], self.count[idx])


def load_image(path: str, size: int, channels: int = 3,
               hint: str = "replace the file, or remove it and pass data.missing_images=skip",
               interpolation: str = "bilinear") -> torch.Tensor:
    """JPEG/PNG file -> uint8 channels x size x size: RGB (or grayscale for channels=1),
    shorter side resized to `size` with `interpolation` (one of INTERPOLATIONS), center crop.
    `hint` ends the error of an unreadable file.

    Decoded with Pillow in draft mode: a JPEG whose stored size is a multiple of the target
    is decoded at a reduced DCT scale (1/2 .. 1/8; a 640 x 480 photo at 1/2 for 224 px, 1/4
    for 64 px), then only the center crop is resized, in one antialiased pass:
    the same pixels as resizing the whole picture and cropping after (mean absolute
    difference < 0.02 grey levels), without the work on the discarded margins or importing
    torchvision in every loader worker. Bilinear was the cheapest filter that kept
    torchvision's quality (box: faster, but 2x further from a full-resolution Lanczos
    resize), hence the default; bicubic is what most pretrained ViT and CLIP weights were
    trained on (their timm / open_clip configs say so, and `mmtrain train` follows them).
    Grayscale, CMYK and palette images are converted to RGB.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            stored = picture.size
            mode = "L" if channels == 1 else "RGB"
            picture.draft(mode, (size, size))
            picture = picture.convert(mode)
            # The crop is placed on the stored picture, then scaled to the decoded one (whose
            # sides are rounded up), so the pixels kept do not depend on the draft scale.
            scale = round(stored[0] / picture.size[0])
            box = tuple(c / scale for c in _center_crop_box(*stored, size))
            resized = picture.resize((size, size), Image.Resampling[interpolation.upper()], box=box)
            pixels = np.asarray(resized).reshape(size, size, -1)  # H x W x C
    except Image.DecompressionBombError as e:
        raise DataError(f"image {path} is refused as a possible decompression bomb ({e}): {hint}") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot decode image {path} ({reason}): {hint}") from None
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def _center_crop_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The source region that resizing the shorter side to `size` and center-cropping keeps,
    rounded as torchvision's resize + center_crop round it."""
    short, long = min(width, height), max(width, height)
    resized_long = int(size * long / short)
    w, h = (size, resized_long) if width <= height else (resized_long, size)
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    sx, sy = width / w, height / h
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


class CocoImages:
    """Images by position: decoded from their files, or read from the pre-resized cache."""

    def __init__(self, paths: list[str], size: int, cache_file: Path | None = None,
                 interpolation: str = "bilinear") -> None:
        self.paths, self.size, self.cache_file, self.interpolation = paths, size, cache_file, interpolation
        self._cache: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.cache_file is None:
            return load_image(self.paths[i], self.size, interpolation=self.interpolation)
        if self._cache is None:  # opened lazily, so each DataLoader worker maps it itself
            self._cache = np.load(self.cache_file, mmap_mode="r")
        return torch.from_numpy(np.array(self._cache[i]))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}


class CocoTrainDataset(Dataset):
    """One sample per image per epoch; the sampler tags indices with the epoch (k = epoch*N + i)."""

    varies_by_epoch = True

    def __init__(self, images: CocoImages, records: Records, ids: torch.Tensor, lengths: torch.Tensor,
                 seed: int) -> None:
        self.images, self.records, self.ids, self.lengths = images, records, ids, lengths
        g = torch.Generator().manual_seed(seed)
        self.offset = torch.randint(0, 1 << 30, (len(records.paths),), generator=g)

    def __len__(self) -> int:
        return len(self.records.paths)

    def caption_row(self, i: int, epoch: int) -> int:
        r = self.records
        return int(r.first[i] + (self.offset[i] + epoch) % r.count[i])

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(k), len(self))
        row = self.caption_row(i, epoch)
        return {"image": self.images[i], "text": self.ids[row], "text_lengths": self.lengths[row],
                "image_id": self.records.image_ids[i]}


class CocoPairsDataset(Dataset):
    """One sample per (image, caption) pair, image by image, captions in annotation order."""

    def __init__(self, images: CocoImages, records: Records, ids: torch.Tensor,
                 lengths: torch.Tensor) -> None:
        self.images, self.records, self.ids, self.lengths = images, records, ids, lengths
        count = records.count
        self.image_of = torch.repeat_interleave(torch.arange(len(count)), count)         # pairs
        start_of_image = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        within = torch.arange(int(count.sum())) - start_of_image                         # 0..count-1
        self.row = torch.repeat_interleave(records.first, count) + within

    def __len__(self) -> int:
        return self.row.shape[0]

    def captions(self) -> dict[str, torch.Tensor]:
        """Every pair's text, text_lengths and image_id, without decoding an image."""
        return {"text": self.ids[self.row], "text_lengths": self.lengths[self.row],
                "image_id": self.records.image_ids[self.image_of]}

    def __getitem__(self, j: int) -> dict[str, torch.Tensor]:
        i, row = int(self.image_of[j]), int(self.row[j])
        return {"image": self.images[i], "text": self.ids[row], "text_lengths": self.lengths[row],
                "image_id": self.records.image_ids[i]}


def read_json(path: Path, keys: tuple[str, ...], root: Path, year: int) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"COCO file {path} is missing: run `{download_command('coco', root, year)}` "
                        f"or pass data.download=true")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"COCO file {path} is not valid JSON ({e}): download it again") from None
    missing = [k for k in keys if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise DataError(f"COCO file {path} has no '{missing[0]}' list: it is not a captions file "
                        f"(expected the keys {', '.join(keys)})")
    return doc


def _annotations(doc: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    """The caption annotations, each checked to have an image id and a caption string."""
    for i, ann in enumerate(doc["annotations"]):
        name = f"annotation id {ann.get('id')}" if isinstance(ann, dict) and "id" in ann else f"annotation #{i}"
        if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int):
            raise DataError(f"COCO file {path}: {name} has no image_id: the file is corrupt, download it again")
        if not isinstance(ann.get("caption"), str):
            what = "no caption" if "caption" not in ann else f"caption {ann['caption']!r}, not text"
            raise DataError(f"COCO file {path}: {name} has {what}: fix or remove that annotation")
    return doc["annotations"]


def _official(root: Path, year: int) -> tuple[list[Entry], list[Entry], list[Path]]:
    """-> (train<year> entries, val<year> entries, the JSON files), entries sorted by image id."""
    files, out = [], []
    for split in ("train", "val"):
        path = root / "annotations" / f"captions_{split}{year}.json"
        doc = read_json(path, ("images", "annotations"), root, year)
        files.append(path)
        captions: dict[int, list[str]] = {}
        for ann in sorted(_annotations(doc, path), key=lambda a: (a["image_id"], a.get("id", 0))):
            captions.setdefault(ann["image_id"], []).append(ann["caption"])
        entries = [(str(root / f"{split}{year}" / im["file_name"]), im["id"], captions[im["id"]])
                   for im in sorted(doc["images"], key=lambda im: im["id"]) if im["id"] in captions]
        out.append(entries)
    return out[0], out[1], files


def _karpathy(root: Path, karpathy_file: str) -> dict[str, list[Entry]]:
    path = Path(karpathy_file) if Path(karpathy_file).is_absolute() else root / karpathy_file
    if not path.is_file():
        raise DataError(f"Karpathy split file {path} is missing: place dataset_coco.json there "
                        f"or set data.karpathy_file=null for the official splits")
    doc = read_json(path, ("images",), root, 2014)
    splits: dict[str, list] = {"train": [], "val": [], "test": []}
    for im in doc["images"]:
        kind = "train" if im["split"] == "restval" else im["split"]
        raws = [s.get("raw") if isinstance(s, dict) else None for s in im["sentences"]]
        if not all(isinstance(r, str) for r in raws):
            raise DataError(f"Karpathy split file {path}: image {im.get('cocoid')} has a sentence "
                            f"without a 'raw' caption: fix or remove it")
        splits[kind].append((str(root / im["filepath"] / im["filename"]), im["cocoid"], raws))
    return splits


def _check_images(records: Records, policy: str, split: str) -> Records:
    listing: dict[str, set[str]] = {}
    missing = []
    for i, p in enumerate(records.paths):
        folder, name = os.path.split(p)
        if folder not in listing:
            listing[folder] = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        if name not in listing[folder]:
            missing.append(i)
    if not missing:
        return records
    if policy == "error":
        raise DataError(f"COCO image {records.paths[missing[0]]} is referenced by the {split} captions but "
                        f"missing on disk ({len(missing)} missing in all): restore the image folder, or pass "
                        f"data.missing_images=skip to leave them out")
    log.warning("COCO %s: skipping %d images missing on disk (first: %s)", split, len(missing),
                records.paths[missing[0]])
    gone = set(missing)
    return records.take([i for i in range(len(records.paths)) if i not in gone])


def _image_cache(folder: Path, records: Records, size: int, interpolation: str, workers: int) -> Path:
    """Decode + resize every image once into `<cache dir>/coco-images-<key>.npy`."""
    from numpy.lib.format import open_memmap

    # Bilinear keeps the key it had before the option existed: existing caches stay valid.
    filter_ = () if interpolation == "bilinear" else (interpolation,)
    key = cache_key(file_identity(Path(p) for p in records.paths), size, *filter_)
    path = folder / f"coco-images-{key}.npy"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        out = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(records.paths), 3, size, size))
        loader = DataLoader(CocoImages(records.paths, size, interpolation=interpolation), batch_size=64,
                            num_workers=min(workers, os.cpu_count() or 1))
        start = 0
        for batch in tqdm(loader, desc=f"caching {len(records.paths)} images", leave=False):
            out[start : start + batch.shape[0]] = batch.numpy()
            start += batch.shape[0]
        out.flush()
        del out
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def build_coco_captions(
    root: str = "data",
    year: int = 2017,
    image_size: int = 224,
    interpolation: str = "bilinear",
    karpathy_file: str | None = None,
    n_train: int | None = None,
    n_val: int = 5000,
    n_test: int | None = None,
    missing_images: str = "error",
    cache_images: bool = False,
    cache_workers: int = 4,
    seed: int = 0,
    tokenizer_options: dict[str, Any] | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
    download: bool = False,
    tokenizer: TextTokenizer | None = None,
) -> DataBundle:
    """COCO image-caption pairs under `root` (see the module docstring for the splits); the
    root is only read (written only when `download`), caches go to `cache_dir`."""
    if missing_images not in ("error", "skip"):
        raise DataError(f"data.missing_images={missing_images!r}: choose error or skip")
    if interpolation not in INTERPOLATIONS:
        raise DataError(f"data.interpolation={interpolation!r}: choose {' or '.join(INTERPOLATIONS)}")
    root_path = Path(root).expanduser()
    if download and not all((root_path / name).exists() for name in (
            f"annotations/captions_train{year}.json", f"train{year}", f"val{year}")):
        download_dataset("coco", root_path, year=year)
    if karpathy_file:
        groups = _karpathy(root_path, karpathy_file)
        identity = file_identity([Path(karpathy_file) if Path(karpathy_file).is_absolute()
                                  else root_path / karpathy_file])
    else:
        train_all, test, files = _official(root_path, year)
        if n_val >= len(train_all):
            raise DataError(f"data.n_val={n_val} leaves no training images: train{year} has "
                            f"{len(train_all)} captioned images")
        groups = {"train": train_all[: len(train_all) - n_val], "val": train_all[len(train_all) - n_val:],
                  "test": test}
        identity = file_identity(files) + f"|val={n_val}"

    # One token table: train captions first (the tokenizer is fitted on them alone).
    texts, records, row = [], {}, 0
    for split in ("train", "val", "test"):
        entries = groups[split]
        counts = [len(caps) for _, _, caps in entries]
        if any(c == 0 for c in counts):
            raise DataError(f"COCO {split}: an image has no captions")
        first = torch.tensor(np.cumsum([0] + counts[:-1]) + row if counts else [], dtype=torch.long)
        records[split] = Records([p for p, _, _ in entries], torch.tensor([i for _, i, _ in entries]),
                                 first, torch.tensor(counts, dtype=torch.long))
        texts += [" ".join(c.split()) for _, _, caps in entries for c in caps]
        row += sum(counts)
    n_fit = int(records["train"].count.sum())
    folder = resolve_cache_dir(cache_dir)
    tokenizer, tokens = tokenized_corpus(folder, "coco-captions", identity,
                                         lambda: {"texts": texts, "n_fit": n_fit}, tokenizer,
                                         dict(tokenizer_options or {}), enabled=cache)
    limits = {"train": n_train, "val": None if not karpathy_file else n_val, "test": n_test}
    datasets = {}
    for split, rec in records.items():
        if limits[split] is not None:
            rec = rec.take(list(range(min(limits[split], len(rec.paths)))))
        rec = _check_images(rec, missing_images, split)
        if not rec.paths:
            raise DataError(f"COCO {split} split is empty under {root_path}")
        cache_file = _image_cache(folder, rec, image_size, interpolation, cache_workers) if cache_images else None
        images = CocoImages(rec.paths, image_size, cache_file, interpolation)
        if split == "train":
            datasets[split] = CocoTrainDataset(images, rec, tokens["ids"], tokens["lengths"], seed)
        else:
            datasets[split] = CocoPairsDataset(images, rec, tokens["ids"], tokens["lengths"])
    references = {int(image_id): list(caps) for split in ("val", "test") for _, image_id, caps in groups[split]}
    info = DataInfo(image_channels=3, image_size=image_size, vocab_size=tokenizer.vocab_size,
                    pad_id=tokenizer.pad_id, num_classes={}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
                    references=references, interpolation=interpolation)
    return DataBundle(datasets["train"], datasets["val"], datasets["test"], tokenizer, info)
