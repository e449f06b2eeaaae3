"""Small fake datasets written in exactly the publishers' layouts (`mmtrain data synth`).

They exercise the real readers end to end and are learnable, so a test can check that a
model trained on them beats chance:
- MNIST: idx files (gzip, magic 2051 / 2049) of seven-segment digits drawn as a hand would:
  slant, rotation, size, stroke width and place vary, so that, as on real MNIST, logistic
  regression on the pixels misreads about 1 in 10 and a small CNN nearly none, and
  `mmtrain baseline` tells the two apart;
- IMDB: an aclImdb tree and the `review,sentiment` CSV; reviews carry sentiment words,
  `<br />` markup and non-ASCII text. Each names 2-4 words of its own polarity only, so
  TF-IDF and a GRU both read every one: on real IMDB a from-scratch GRU does not beat
  TF-IDF either, so the text side favours neither model;
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

# A seven-segment glyph in glyph units (x 0..1 left to right, y 0..2 top to bottom):
# segment -> its two end points. Strokes are drawn between them, then the whole glyph is
# slanted, rotated, scaled and placed as a hand would (see `seven_segment_digits`).
SEGMENTS = {"a": ((0, 0), (1, 0)), "b": ((1, 0), (1, 1)), "c": ((1, 1), (1, 2)), "d": ((0, 2), (1, 2)),
            "e": ((0, 1), (0, 2)), "f": ((0, 0), (0, 1)), "g": ((0, 1), (1, 1))}
# The segments of each digit; where people write one in two ways, both (drawn half the time
# each): 6 with or without its top bar, 7 with or without the hook, 9 with or without its tail.
DIGIT_FORMS = (("abcdef",), ("bc",), ("abged",), ("abgcd",), ("fgbc",), ("afgcd",), ("afgedc", "fgedc"),
               ("abc", "fabc"), ("abcdefg",), ("abcdfg", "abcfg"))

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
    """n 28 x 28 uint8 digit images that vary the way handwriting does, and their labels.

    Each glyph gets its own height (15-20 px; MNIST fits digits in 20 x 20), width, slant
    (up to about 24 degrees), rotation (up to 8 degrees), stroke width (about 2.5-4.5 px),
    middle-bar height, stroke end points that miss each other by a fraction of a pixel and
    stroke intensities; it is then centred by its centre of mass, as MNIST's digits are, and
    moved up to 2 px from there, on a lightly noisy background. Logistic regression on the
    pixels reads 0.86-0.91 of them after 1 200-1 800 training images, a small CNN 0.97-0.99
    (tests/test_data_mnist_imdb.py). The same generator state gives the same images.
    """
    labels = rng.integers(0, 10, size=n)
    forms = rng.random(n)
    drawn = np.zeros((n, 7), dtype=bool)
    for i, d in enumerate(labels):
        segments = DIGIT_FORMS[d][int(forms[i] * len(DIGIT_FORMS[d]))]
        drawn[i, ["abcdefg".index(s) for s in segments]] = True
    points = np.broadcast_to(np.array(list(SEGMENTS.values()), dtype=np.float64), (n, 7, 2, 2)).copy()
    middle = points[..., 1] == 1
    points[..., 1] += middle * rng.uniform(-0.15, 0.15, size=(n, 1, 1))
    points += rng.normal(0, 0.05, size=points.shape)
    height = rng.uniform(15, 20, size=(n, 1, 1))
    width = height * rng.uniform(0.45, 0.75, size=(n, 1, 1))
    x, y = (points[..., 0] - 0.5) * width, (points[..., 1] - 1) * height / 2
    x = x - rng.uniform(-0.45, 0.45, size=(n, 1, 1)) * y                  # slant: x leans with height
    angle = np.deg2rad(rng.uniform(-8, 8, size=(n, 1, 1)))
    x, y = x * np.cos(angle) - y * np.sin(angle), x * np.sin(angle) + y * np.cos(angle)
    intensity = rng.uniform(0.7, 1.0, size=(n, 7)) * drawn
    mass = intensity * np.hypot(x[..., 1] - x[..., 0], y[..., 1] - y[..., 0])
    mass /= mass.sum(axis=1, keepdims=True)
    shift = rng.uniform(-2, 2, size=(2, n, 1, 1))
    x += 13.5 + shift[0] - (mass * x.mean(axis=-1)).sum(axis=1)[:, None, None]
    y += 13.5 + shift[1] - (mass * y.mean(axis=-1)).sum(axis=1)[:, None, None]
    half_stroke = rng.uniform(0.7, 1.8, size=n)
    noise = rng.normal(0, 8, size=(n, 28, 28))
    images = np.empty((n, 28, 28), dtype=np.uint8)
    for lo in range(0, n, 1024):  # bounded memory for any n: 7 x 784 distances per image
        part = slice(lo, lo + 1024)
        ink = _strokes(x[part], y[part], intensity[part], half_stroke[part])
        images[part] = (ink * 255 + noise[part]).clip(0, 255).astype(np.uint8)
    return images, labels


def _strokes(x: np.ndarray, y: np.ndarray, intensity: np.ndarray, half_stroke: np.ndarray) -> np.ndarray:
    """Anti-aliased ink in [0, 1], B x 28 x 28, of B images' 7 strokes (end points B x 7 x 2 in
    pixels, intensity B x 7, 0 for a stroke not drawn) of half-width `half_stroke` (B)."""
    grid_y, grid_x = (g.ravel() for g in np.mgrid[0:28, 0:28].astype(np.float32))
    x0, y0 = x[..., :1].astype(np.float32), y[..., :1].astype(np.float32)
    dx, dy = (x[..., 1:] - x[..., :1]).astype(np.float32), (y[..., 1:] - y[..., :1]).astype(np.float32)
    px, py = grid_x - x0, grid_y - y0                                   # B x 7 x 784
    t = ((px * dx + py * dy) / np.maximum(dx * dx + dy * dy, 1e-6)).clip(0, 1)
    distance = np.sqrt((px - t * dx) ** 2 + (py - t * dy) ** 2)
    cover = (half_stroke[:, None, None].astype(np.float32) + 0.5 - distance).clip(0, 1)
    return (cover * intensity[..., None].astype(np.float32)).max(axis=1).reshape(-1, 28, 28)


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
