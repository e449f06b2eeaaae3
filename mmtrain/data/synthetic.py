"""An embedded image + text set that needs no download and needs both modalities.

Each image holds two coloured shapes in different quadrants. The caption refers to one
of them by size, colour and position (most templates also name the other one in full); the label is
the shape of the referred object. The image alone cannot tell which object is meant
(about 2/3 accuracy at best), the text alone never sees that shape (1/3): only a model
that fuses both reaches ~100%. Generated in memory from the seed, in well under a second.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmtrain.data import DataBundle, DataInfo
from mmtrain.data.batch import InMemoryDataset
from mmtrain.data.tokenizer import TextTokenizer, fit_tokenizer

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "purple": (160, 60, 200),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")

TEMPLATES = (
    "a {size} {colour} shape in the {position} and a {size2} {colour2} {shape2}",
    "the {colour} one in the {position} is {size} , next to a {colour2} {shape2}",
    "there is a {size} {colour} object at the {position} beside a {size2} {colour2} {shape2}",
    "look at the {size} {colour} thing in the {position}",
)


def _mask(shape: str, radius: int) -> np.ndarray:
    """Boolean (2r+1) x (2r+1) mask of a shape centred in its box."""
    r = radius
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        side = int(round(r * 0.8))
        return (np.abs(x) <= side) & (np.abs(y) <= side)
    # An upright triangle: apex at the top, base at the bottom.
    return (y >= -r) & (y <= r) & (np.abs(x) * 2 <= (y + r))


def generate(n: int, image_size: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """n samples -> (images uint8 n x 3 x S x S, captions, labels int64 n)."""
    rng = np.random.default_rng(seed)
    s = image_size
    half = s // 2
    radii = {"small": max(2, s // 10), "large": max(3, s // 6)}
    masks = {(sh, sz): _mask(sh, radii[sz]) for sh in SHAPES for sz in SIZES}
    colour_names = list(COLOURS)
    images = (rng.integers(0, 40, size=(n, s, s, 3))).astype(np.uint8)
    captions, labels = [], np.empty(n, dtype=np.int64)
    for i in range(n):
        quads = rng.choice(4, size=2, replace=False)
        cols = rng.choice(len(colour_names), size=2, replace=False)
        shapes = rng.integers(0, len(SHAPES), size=2)
        sizes = rng.integers(0, len(SIZES), size=2)
        for k in range(2):
            m = masks[(SHAPES[shapes[k]], SIZES[sizes[k]])]
            r = m.shape[0] // 2
            jitter = rng.integers(-(half // 2 - r - 1), (half // 2 - r - 1) + 1, size=2) if half // 2 - r - 1 > 0 else (0, 0)
            cy = (quads[k] // 2) * half + half // 2 + int(jitter[0])
            cx = (quads[k] % 2) * half + half // 2 + int(jitter[1])
            region = images[i, cy - r : cy + r + 1, cx - r : cx + r + 1]
            region[m] = COLOURS[colour_names[cols[k]]]
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        captions.append(template.format(
            size=SIZES[sizes[0]], colour=colour_names[cols[0]], position=POSITIONS[quads[0]],
            size2=SIZES[sizes[1]], colour2=colour_names[cols[1]], shape2=SHAPES[shapes[1]],
        ))
        labels[i] = shapes[0]
    return images.transpose(0, 3, 1, 2).copy(), captions, labels


def build_synthetic(
    n_train: int = 10000,
    n_val: int = 500,
    n_test: int = 1000,
    image_size: int = 32,
    seed: int = 0,
    tokenizer: TextTokenizer | None = None,
    tokenizer_options: dict[str, Any] | None = None,
) -> DataBundle:
    """Three disjoint splits generated from `seed` (the same seed gives the same data)."""
    images, captions, labels = generate(n_train + n_val + n_test, image_size, seed)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, n_train + n_val + n_test)}
    if tokenizer is None:
        tokenizer = fit_tokenizer(captions[:n_train], **(tokenizer_options or {}))
    text, lengths = tokenizer.encode(captions)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    splits = {
        name: InMemoryDataset(images_t[a:b], text[a:b], lengths[a:b], label=labels_t[a:b])
        for name, (a, b) in bounds.items()
    }
    info = DataInfo(
        image_channels=3, image_size=image_size, vocab_size=tokenizer.vocab_size,
        pad_id=tokenizer.pad_id, num_classes={"label": len(SHAPES)},
        class_names={"label": list(SHAPES)},
        prompt_templates={"label": ["a {}.", "a {} shape.", "a drawing of a {}.", "a photo of a {}."]},
        image_mean=(0.2, 0.2, 0.2), image_std=(0.3, 0.3, 0.3),
    )
    return DataBundle(splits["train"], splits["val"], splits["test"], tokenizer, info)
