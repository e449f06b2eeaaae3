"""Inference from a checkpoint alone: the model, its data info and tokenizer, and user images
and texts prepared exactly as training and evaluation prepare them.

Shared by `mmtrain predict`, `embed`, `search` and `export`. No dataset is read: the data
info (image size, channels, resize filter, mean/std, class names) travels in the checkpoint,
images are decoded by the data pipeline's own `load_image` (resize on the shorter side with
the training's filter, center crop, RGB or grayscale) and normalized inside the model, as in training.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from mmtrain.atomic import write_text
from mmtrain.data import MAX_IMAGE_SIZE, DataInfo
from mmtrain.data.coco import INTERPOLATIONS, load_image
from mmtrain.data.tokenizer import TextTokenizer
from mmtrain.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    from mmtrain.models.model import MultimodalModel
    from mmtrain.tasks import Task


@dataclass
class Loaded:
    """A checkpoint rebuilt for inference: the model in eval mode on `device`."""

    path: Path
    model: MultimodalModel
    task: Task
    """The task of the stage that saved the checkpoint (its head is what was trained last)."""
    stage: str
    info: DataInfo
    tokenizer: TextTokenizer
    config: DictConfig
    device: torch.device

    @property
    def kind(self) -> str:
        return self.task.kind or type(self.task).__name__

    def require(self, command: str, *kinds: str) -> None:
        """Refuse a checkpoint whose task `command` cannot use, in one line."""
        if self.kind not in kinds:
            raise CheckpointError(f"{self.path} is a {self.kind} checkpoint (stage {self.stage!r}); "
                                  f"`mmtrain {command}` needs a {' or '.join(kinds)} one")


def data_info(ckpt: dict[str, Any], path: Path, tokenizer: TextTokenizer) -> DataInfo:
    """The checkpoint's DataInfo, checked field by field: it comes from an untrusted file."""
    raw = ckpt.get("data_info")
    if raw is None:
        raise CheckpointError(f"{path} predates data info in checkpoints: `mmtrain predict/embed/export` "
                              f"need a checkpoint saved by this mmtrain (`mmtrain eval` still reads it)")
    try:
        info = DataInfo(tokenizer=tokenizer, **raw)
        ok = (info.image_channels in (1, 3) and isinstance(info.image_size, int) and info.image_size > 0
              and all(isinstance(n, int) and n > 0 for n in info.num_classes.values())
              and all(len(names) == info.num_classes.get(k, len(names)) for k, names in info.class_names.items())
              and all(isinstance(t, str) for ts in info.prompt_templates.values() for t in ts)
              and len(info.image_mean) == len(info.image_std) > 0
              and info.interpolation in INTERPOLATIONS)
    except (TypeError, AttributeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path} has malformed data info: it is corrupt or not an mmtrain checkpoint")
    if info.image_size > MAX_IMAGE_SIZE:  # every input image would be decoded to that size
        raise CheckpointError(f"{path}: its data info asks for {info.image_size}-px images, above "
                              f"{MAX_IMAGE_SIZE}: it is corrupt or made to exhaust memory")
    return info


def load_for_inference(path: str | Path, *, device: str = "auto", allow_targets: Sequence[str] = (),
                       trust_config: bool = False) -> Loaded:
    """Rebuild model, heads and tokenizer from a checkpoint file alone and load its weights;
    its config may name only mmtrain's own components (mmtrain.trust), as for `mmtrain eval`."""
    from mmtrain.build import build_trained
    from mmtrain.engine.checkpoint import checkpoint_tokenizer, load_checkpoint_config
    from mmtrain.engine.precision import resolve_device

    path = Path(path)
    ckpt, cfg = load_checkpoint_config(path, allow=allow_targets, trust=trust_config)
    info = data_info(ckpt, path, checkpoint_tokenizer(ckpt, path))
    model, task = build_trained(cfg, info, ckpt, path)
    dev = resolve_device(device)
    model.to(dev).eval().requires_grad_(False)
    return Loaded(path, model, task, str(ckpt["stage"]), info, info.tokenizer, cfg, dev)


# ---- images ------------------------------------------------------------------------------

def image_extensions() -> set[str]:
    """Every file extension Pillow can open (.jpg, .png, .webp, .tif, .bmp, ...)."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def find_images(spec: str, what: str = "image") -> list[Path]:
    """image=PATH | DIR (searched recursively for files Pillow reads) | GLOB, sorted."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        exts = image_extensions()
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not found:
            raise DataError(f"{what}={spec}: the folder holds no image files Pillow can read")
        return found
    if glob.has_magic(spec):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise DataError(f"{what}={spec}: no file matches this pattern")
        return found
    raise DataError(f"{what}={spec}: no such file or folder")


class ImageFiles(Dataset):
    """Image files decoded as the data pipeline decodes them. A file that cannot be read
    yields its error message instead of raising: raised in a loader worker, it would reach
    the user wrapped in the worker's traceback."""

    def __init__(self, paths: Sequence[Path], info: DataInfo) -> None:
        self.paths, self.size, self.channels = list(paths), info.image_size, info.image_channels
        self.interpolation = info.interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str]:
        try:
            return i, load_image(str(self.paths[i]), self.size, self.channels,
                                 hint="it is not an image Pillow can read, or it is truncated",
                                 interpolation=self.interpolation)
        except DataError as e:
            return i, str(e)


@dataclass
class ImageBatch:
    index: list[int]
    """Positions in the file list of the images that decoded."""
    images: torch.Tensor
    """uint8 B x C x H x W."""
    errors: list[tuple[int, str]]
    """(position, message) of the files that did not."""


def _collate(items: list[tuple[int, torch.Tensor | str]]) -> ImageBatch:
    good = [(i, x) for i, x in items if isinstance(x, torch.Tensor)]
    errors = [(i, x) for i, x in items if isinstance(x, str)]
    images = torch.stack([x for _, x in good]) if good else torch.empty(0, dtype=torch.uint8)
    return ImageBatch([i for i, _ in good], images, errors)


def image_batches(paths: Sequence[Path], info: DataInfo, batch_size: int,
                  num_workers: int = 0) -> Iterator[ImageBatch]:
    """Decoded images in order, `batch_size` at a time, decoded in `num_workers` processes."""
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"batch_size={batch_size} must be >= 1 and num_workers={num_workers} >= 0")
    loader = DataLoader(ImageFiles(paths, info), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate)
    yield from loader


# ---- texts -------------------------------------------------------------------------------

def read_texts(text: str | None, text_file: str | None) -> list[str]:
    """text="..." (one text) or text_file=PATH (one text per non-empty line)."""
    if text is not None and text_file is not None:
        raise ConfigError("give text=... or text_file=PATH, not both")
    if text_file is not None:
        file = Path(text_file).expanduser()
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"text_file={text_file}: cannot read it ({type(e).__name__}: {e})") from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise DataError(f"text_file={text_file} holds no text (one text per line)")
        return texts
    if text is None:
        return []
    if not str(text).strip():
        raise ConfigError("text= is empty: give the sentence to use, e.g. text=\"a red circle\"")
    return [str(text)]


def encode_texts(tokenizer: TextTokenizer, texts: Sequence[str],
                 truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """Texts -> (ids N x T, lengths N, which were cut). A text longer than the model accepts
    is refused unless `truncate`, so nobody gets a prediction for words it never read."""
    limit = tokenizer.max_length
    counts = [len(e.ids) for e in tokenizer.tokenizer.encode_batch(list(texts))]
    cut = [n > limit for n in counts]
    if any(cut) and not truncate:
        i = cut.index(True)
        preview = texts[i] if len(texts[i]) <= 40 else texts[i][:37] + "..."
        raise ConfigError(f"text {preview!r} is {counts[i]} tokens; the model accepts {limit}: shorten it, "
                          f"or pass truncate=true to cut it to the first {limit} (it was not cut)")
    ids, lengths = tokenizer.encode(list(texts))
    return ids, lengths, cut


@torch.no_grad()
def embed_texts(loaded: Loaded, texts: Sequence[str], batch_size: int = 256,
                truncate: bool = False) -> tuple[torch.Tensor, list[bool]]:
    """L2-normalized text embeddings of a contrastive checkpoint, N x D on the CPU."""
    ids, lengths, cut = encode_texts(loaded.tokenizer, texts, truncate)
    out = []
    for s in range(0, ids.shape[0], batch_size):
        out.append(text_embedding(loaded, ids[s : s + batch_size], lengths[s : s + batch_size]))
    return torch.cat(out), cut


def class_embeddings(loaded: Loaded, labels: Sequence[str], templates: Sequence[str],
                     batch_size: int = 256, truncate: bool = False) -> tuple[torch.Tensor, list[bool]]:
    """OpenAI CLIP's zero-shot classifier, C x D: each class name put in every prompt template,
    the prompts' normalized embeddings averaged and normalized again; and, per class, whether
    any of its prompts was cut (`truncate`)."""
    labels, templates = [str(label) for label in labels], [str(t) for t in templates]
    if not labels or any(not label.strip() for label in labels):
        raise ConfigError("labels= needs class names, e.g. labels=[cat,dog,car]")
    if not templates:
        raise ConfigError("no prompt template: give one, e.g. template='\"a photo of a {}\"'")
    for template in templates:
        if "{}" not in template:
            raise ConfigError(f"template={template!r} has no {{}} for the class name: quote it on the "
                              f"command line, e.g. template='\"a photo of a {{}}\"'")
    prompts = [t.replace("{}", label) for label in labels for t in templates]
    embedded, cut = embed_texts(loaded, prompts, batch_size, truncate)
    classes = F.normalize(embedded.view(len(labels), len(templates), -1).mean(1), dim=-1)
    n = len(templates)
    return classes, [any(cut[i * n : (i + 1) * n]) for i in range(len(labels))]


def text_embedding(loaded: Loaded, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    ids, lengths = ids[:, : max(1, int(lengths.max()))].to(loaded.device), lengths.to(loaded.device)
    return loaded.task.embed_text(loaded.model, ids, lengths).cpu()


@torch.no_grad()
def image_embedding(loaded: Loaded, images: torch.Tensor) -> torch.Tensor:
    """L2-normalized image embeddings of a contrastive checkpoint for uint8 images, on the CPU."""
    return loaded.task.embed_image(loaded.model, images.to(loaded.device)).cpu()


# ---- results -----------------------------------------------------------------------------

def write_rows(path: Path, kind: str, rows: list[dict[str, Any]], checkpoint: str) -> None:
    """`out=` of predict and search: a CSV table, or JSON with the checkpoint and the kind."""
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, buffer.getvalue())
    else:
        write_text(path, json.dumps({"checkpoint": checkpoint, "kind": kind, "rows": rows}, indent=2) + "\n")
