"""Small fake datasets written in exactly the publishers' layouts (`mmtrain data synth`).

They exercise the real readers end to end and are learnable, so a test can check that a
model trained on them beats chance:
- MNIST: idx files (gzip, magic 2051 / 2049) of seven-segment digits with jitter and noise;
- IMDB: an aclImdb tree and the `review,sentiment` CSV; reviews carry sentiment words,
  `<br />` markup and non-ASCII text;
- COCO: captions JSON + JPEGs of a coloured shape whose captions name its colour, shape
  and place; one image is grayscale and one CMYK, as in the real set.
"""

from __future__ import annotations

import csv
import gzip
import json
import struct
from pathlib import Path

import numpy as np

# Seven-segment layout: segment -> (y0, y1, x0, x1) in a 28 x 28 frame.
SEGMENTS = {"a": (4, 7, 9, 19), "b": (4, 14, 17, 20), "c": (14, 24, 17, 20), "d": (21, 24, 9, 19),
            "e": (14, 24, 8, 11), "f": (4, 14, 8, 11), "g": (12, 16, 9, 19)}
DIGIT_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]

POSITIVE = ["great", "wonderful", "brilliant", "loved", "superb", "moving", "charming", "excellent"]
NEGATIVE = ["awful", "boring", "terrible", "hated", "dull", "clumsy", "tedious", "worst"]
NEUTRAL = ["the", "film", "movie", "plot", "actor", "scene", "story", "director", "was", "and",
           "a", "it", "ending", "music", "camera", "script", "café", "naïve", "“quoted”", "東京"]

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230),
           "yellow": (230, 210, 40), "purple": (160, 60, 200), "white": (240, 240, 240)}
SHAPES = ("circle", "square", "triangle")
PLACES = ("top left", "top right", "bottom left", "bottom right")
CAPTION_TEMPLATES = ("a {colour} {shape} in the {place}", "there is a {colour} {shape} at the {place}",
                     "{colour} {shape} , {place}", "the picture shows a {shape} that is {colour}",
                     "a {shape} coloured {colour} near the {place} corner")


def _idx(path: Path, magic: int, array: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def seven_segment_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n noisy 28 x 28 uint8 digit images and their labels."""
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.int32)
    for i, d in enumerate(labels):
        glyph = np.zeros((28, 28), dtype=np.int32)
        for seg in DIGIT_SEGMENTS[d]:
            y0, y1, x0, x1 = SEGMENTS[seg]
            glyph[y0:y1, x0:x1] = rng.integers(170, 256)
        dy, dx = rng.integers(-2, 3, size=2)
        images[i] = np.maximum(images[i], np.roll(glyph, (dy, dx), axis=(0, 1)))
    return images.clip(0, 255).astype(np.uint8), labels


def write_mnist(out: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    raw = out / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = seven_segment_digits(n, rng)
        _idx(raw / f"{prefix}-images-idx3-ubyte.gz", 2051, images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte.gz", 2049, labels)


def review(positive: bool, rng: np.random.Generator) -> str:
    words = list(rng.choice(NEUTRAL, size=int(rng.integers(12, 30))))
    for w in rng.choice(POSITIVE if positive else NEGATIVE, size=int(rng.integers(2, 5))):
        words.insert(int(rng.integers(0, len(words) + 1)), str(w))
    words.insert(len(words) // 2, "<br /><br />")
    return " ".join(words).capitalize() + "."


def write_imdb(out: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt plus `IMDB Dataset.csv` with the same reviews."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        for folder in ("pos", "neg"):
            (out / "aclImdb" / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            positive = bool(i % 2)
            rating = int(rng.integers(7, 11)) if positive else int(rng.integers(1, 5))
            text = review(positive, rng)
            path = out / "aclImdb" / split / ("pos" if positive else "neg") / f"{i // 2}_{rating}.txt"
            path.write_text(text, encoding="utf-8")
            rows.append((text, "positive" if positive else "negative"))
    with open(out / "IMDB Dataset.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)


def _shape_image(colour: str, shape: str, place: int, rng: np.random.Generator) -> np.ndarray:
    """An H x W x 3 uint8 picture (sizes vary, as in COCO) of one shape on a dark background."""
    h, w = int(rng.integers(48, 80)), int(rng.integers(48, 80))
    img = rng.integers(0, 50, size=(h, w, 3)).astype(np.uint8)
    r = min(h, w) // 6
    cy = (place // 2) * h // 2 + h // 4
    cx = (place % 2) * w // 2 + w // 4
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    mask = {"circle": x * x + y * y <= r * r, "square": (abs(x) <= r) & (abs(y) <= r),
            "triangle": (abs(x) * 2 <= (y + r))}[shape]
    img[cy - r : cy + r + 1, cx - r : cx + r + 1][mask] = COLOURS[colour]
    return img


def write_coco(out: Path, n_train: int, n_val: int, year: int = 2017, seed: int = 0,
               karpathy: bool = True) -> None:
    """annotations/captions_{train,val}<year>.json and <split><year>/ JPEGs (+ dataset_coco.json)."""
    from PIL import Image

    rng = np.random.default_rng(seed + 2)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    colours = list(COLOURS)
    next_image, next_caption, karpathy_images = 1, 1, []
    for split, n in (("train", n_train), ("val", n_val)):
        folder = out / f"{split}{year}"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            colour, shape = colours[int(rng.integers(len(colours)))], SHAPES[int(rng.integers(3))]
            place = int(rng.integers(4))
            pixels = _shape_image(colour, shape, place, rng)
            image_id = next_image
            next_image += 1
            name = f"{image_id:012d}.jpg" if year >= 2017 else f"COCO_{split}{year}_{image_id:012d}.jpg"
            picture = Image.fromarray(pixels)
            if i == 0:
                picture = picture.convert("L")        # COCO has grayscale images
            elif i == 1:
                picture = picture.convert("CMYK")     # ... and a few CMYK JPEGs
            picture.save(folder / name, quality=92)
            images.append({"id": image_id, "file_name": name, "height": pixels.shape[0],
                           "width": pixels.shape[1]})
            sentences = []
            for template in CAPTION_TEMPLATES:
                caption = template.format(colour=colour, shape=shape, place=PLACES[place])
                annotations.append({"id": next_caption, "image_id": image_id, "caption": caption})
                sentences.append({"raw": caption, "tokens": caption.split()})
                next_caption += 1
            kind = "train" if split == "train" else ("val" if i % 2 == 0 else "test")
            karpathy_images.append({"filepath": f"{split}{year}", "filename": name, "cocoid": image_id,
                                    "split": kind, "sentences": sentences})
        doc = {"info": {"description": "mmtrain fixture"}, "licenses": [], "images": images,
               "annotations": annotations}
        (out / "annotations" / f"captions_{split}{year}.json").write_text(json.dumps(doc), encoding="utf-8")
    if karpathy:
        (out / "dataset_coco.json").write_text(json.dumps({"images": karpathy_images, "dataset": "coco"}),
                                               encoding="utf-8")
