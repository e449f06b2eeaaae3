"""Datasets: one module per dataset family, each exposing a builder that returns a DataBundle.

`data.build(cfg.data)` instantiates the family's builder from its `_target_`. A builder
fits the tokenizer on the training text (or reuses the one it is given, as `mmtrain
eval` does with the checkpoint's), tokenizes every split once, and returns the splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch.utils.data import Dataset

from mmtrain.config import instantiate
from mmtrain.data.tokenizer import TextTokenizer


# The largest image side and synthetic split a file from outside (a checkpoint, its config)
# may ask for: each multiplies memory per image or per dataset, and a genuine run stays far
# below (ViT-H/14 at 518 px is a large one; the synthetic set's default is 10 000 pairs).
MAX_IMAGE_SIZE = 4096
MAX_SYNTHETIC_SAMPLES = 10_000_000


@dataclass
class DataInfo:
    """What the model and the tasks need to know about the data, without loading it."""

    image_channels: int
    image_size: int
    vocab_size: int
    pad_id: int
    num_classes: dict[str, int]
    """Label key in the batch -> number of classes (e.g. {'label': 20, 'digit': 10})."""
    class_names: dict[str, list[str]] = field(default_factory=dict)
    image_mean: tuple[float, ...] = (0.5,)
    image_std: tuple[float, ...] = (0.5,)
    modality_labels: dict[str, str] = field(default_factory=dict)
    """Modality -> the label it alone determines (image -> digit): the multitask targets."""
    prompt_templates: dict[str, list[str]] = field(default_factory=dict)
    """Label key -> zero-shot prompts ({} = the class name), as OpenAI's CLIP writes them per
    dataset: `mmtrain eval zero_shot=true` averages a class's prompts."""
    interpolation: str = "bilinear"
    """The resize filter the images were prepared with (data.interpolation): inference
    decodes new images with the same one. A checkpoint saved before it was stored had bilinear."""
    references: dict[int, list[str]] = field(default_factory=dict, repr=False)
    """image_id -> its raw reference captions (val and test images of a caption set): what
    caption metrics score against, never the tokenizer's view of them."""
    tokenizer: TextTokenizer | None = field(default=None, repr=False)
    """The fitted tokenizer (decoding, bos/eos ids: captioning needs them); DataBundle sets it."""

    def to_payload(self) -> dict[str, Any]:
        """Everything but the tokenizer, as plain containers: a checkpoint carries it so that
        inference (`mmtrain predict`, `embed`, `export`) needs no dataset on disk."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tokenizer"}
        return {**out, "image_mean": list(self.image_mean), "image_std": list(self.image_std)}


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset
    tokenizer: TextTokenizer
    info: DataInfo

    def __post_init__(self) -> None:
        if self.info.tokenizer is None:
            self.info.tokenizer = self.tokenizer

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            from mmtrain.errors import ConfigError

            raise ConfigError(f"unknown split {name!r}: choose train, val or test")
        return getattr(self, name)


def build(cfg: Any, tokenizer: TextTokenizer | None = None) -> DataBundle:
    """Build the dataset family named by `cfg._target_`; pass `tokenizer` to reuse a fitted one."""
    return instantiate(cfg, tokenizer=tokenizer, _convert_="all")
