"""The assembled model: two encoders, a fusion, and the heads that tasks attach."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Protocol

import hydra.utils
import torch
from omegaconf import OmegaConf
from torch import nn

from mmtrain.config import instantiate
from mmtrain.data import DataInfo
from mmtrain.data.tokenizer import TOKENIZER_OPTIONS, TextTokenizer
from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.models import Encoder, EncoderOutput, ImageEncoder, TextEncoder
from mmtrain.models.fusion import PerModalityFusion

MODALITIES = ("image", "text")


class MultimodalModel(nn.Module):
    """Encoders + fusion; `heads` holds what each task adds (projections, classifiers, ...).

    Images arrive as uint8 and are converted and normalized here, on the device, so the
    loader moves 4x fewer bytes and no float copy of the dataset ever exists.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, fusion: nn.Module,
                 image_mean: Iterable[float] = (0.5,), image_std: Iterable[float] = (0.5,)) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.fusion = fusion
        self.heads = nn.ModuleDict()
        self.heads_per_modality = isinstance(fusion, PerModalityFusion)
        """Late fusion: a fused head is one head per modality (see `add_fused_head`)."""
        self.register_buffer("image_mean", torch.tensor(list(image_mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(list(image_std)).view(1, -1, 1, 1), persistent=False)

    def architecture(self) -> dict[str, dict[str, Any]]:
        """Per encoder, the constructor arguments that rebuild it offline (see `build_model`)."""
        found = {"image_encoder": self.image_encoder.architecture(),
                 "text_encoder": self.text_encoder.architecture()}
        return {name: arch for name, arch in found.items() if arch is not None}

    def encode_image(self, image: torch.Tensor) -> EncoderOutput:
        x = image.float().div_(255.0) if image.dtype == torch.uint8 else image.float()
        return self.image_encoder((x - self.image_mean) / self.image_std)

    def encode_text(self, text: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        return self.text_encoder(text, lengths)

    def fuse(self, image: EncoderOutput, text: EncoderOutput) -> torch.Tensor:
        return self.fusion(image.pooled, text.pooled, image_tokens=image.tokens,
                           text_tokens=text.tokens, text_mask=text.mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        image = self.encode_image(batch["image"])
        text = self.encode_text(batch["text"], batch["text_lengths"])
        return {"image": image, "text": text, "fused": self.fuse(image, text)}

    def add_fused_head(self, name: str, make: Callable[[int], nn.Module]) -> None:
        """Put a task's head on the fused features at `heads[name]`; `make(width)` builds one.
        A fusion whose modalities never interact (late fusion) gets one head per modality."""
        dim = self.fusion.out_dim
        self.heads[name] = nn.ModuleDict({m: make(dim) for m in MODALITIES}) if self.heads_per_modality \
            else make(dim)

    def fused_head(self, name: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """`heads[name]` on the batch's fused features; under late fusion, the mean of each
        modality's head on that modality's own features."""
        head = self.heads[name]
        if not self.heads_per_modality:
            return head(self(batch)["fused"])
        image = self.encode_image(batch["image"]).pooled
        text = self.encode_text(batch["text"], batch["text_lengths"]).pooled
        image_part, text_part = self.fusion.per_modality(image, text)
        return 0.5 * (head["image"](image_part) + head["text"](text_part))


class TrainingStep(Protocol):
    """What `StageModule` needs of a task (`mmtrain.tasks.Task`, a layer above, declares it)."""

    def training_step(self, model: MultimodalModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class StageModule(nn.Module):
    """The model and one task's loss as a single module, so DDP sees every forward."""

    def __init__(self, model: MultimodalModel, task: TrainingStep) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.task.training_step(self.model, batch)


def mean_image(like: torch.Tensor, image_mean: torch.Tensor) -> torch.Tensor:
    """The data's mean colour as a uint8 image shaped like `like` (B x C x H x W): after the
    model's normalization it is all zeros, a neutral 'no image' rather than a bright one."""
    fill = (image_mean.reshape(1, -1, 1, 1) * 255).round().to(torch.uint8).to(like.device)
    return fill.expand_as(like)


def blank_modalities(batch: dict[str, torch.Tensor], blank: Iterable[str],
                     image_mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """A copy of `batch` with whole modalities removed: images set to the mean, text to one UNK."""
    blank = set(blank)
    unknown = blank - set(MODALITIES)
    if unknown:
        raise ConfigError(f"cannot blank {sorted(unknown)}: modalities are {', '.join(MODALITIES)}")
    out = dict(batch)
    if "image" in blank:
        out["image"] = mean_image(batch["image"], image_mean).clone()
    if "text" in blank:
        out["text"] = torch.ones_like(batch["text"][:, :1])  # id 1 = [UNK]
        out["text_lengths"] = torch.ones_like(batch["text_lengths"])
    return out


def drop_modalities(batch: dict[str, torch.Tensor], p: float,
                    image_mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """Modality dropout: with probability `p` per sample, blank one of its two modalities (each
    equally likely), exactly as `blank_modalities` does for a whole batch, so a model trained
    with it sees at training time the missing input that `mmtrain eval ablate=true` shows it."""
    if p <= 0:
        return batch
    n = batch["image"].shape[0]
    device = batch["image"].device
    dropped = torch.rand(n, device=device) < p
    image_side = torch.rand(n, device=device) < 0.5
    no_image, no_text = dropped & image_side, dropped & ~image_side
    out = dict(batch)
    out["image"] = torch.where(no_image.view(-1, 1, 1, 1), mean_image(batch["image"], image_mean),
                               batch["image"])
    text = batch["text"].clone()
    text[no_text] = 0
    text[no_text, 0] = 1  # the one-[UNK] text of blank_modalities (pad id 0 after it)
    out["text"] = text
    out["text_lengths"] = torch.where(no_text, torch.ones_like(batch["text_lengths"]), batch["text_lengths"])
    return out


def _encoder_hook(node: Any, hook: str) -> tuple[Any, dict[str, Any]]:
    """An encoder class's static `hook` (None when it has none) and its config as plain kwargs:
    what the pretrained encoders tell the data before any model is built."""
    cls = hydra.utils.get_class(str(node._target_))
    # Not an Encoder: build_model refuses it in one line once it is built.
    function = getattr(cls, hook) if issubclass(cls, Encoder) else None
    kwargs = {str(k): v for k, v in node.items() if not str(k).startswith("_")}
    return function, OmegaConf.to_container(OmegaConf.create(kwargs), resolve=True)


def model_tokenizer(cfg: Any, data_cfg: Any) -> TextTokenizer | None:
    """The tokenizer a text encoder brings (a pretrained model's own), or None when the data
    fits one. Such an encoder class defines `load_tokenizer(**its config, max_length=...)`."""
    load, kwargs = _encoder_hook(cfg.text_encoder, "load_tokenizer")
    if load is None:
        return None
    options = data_cfg.get("tokenizer_options") or {}
    return load(max_length=int(options.get("max_length") or TOKENIZER_OPTIONS["max_length"]), **kwargs)


def model_data_config(cfg: Any) -> dict[str, Any]:
    """Data settings a pretrained image encoder was trained with (e.g. {"image_size": 224,
    "interpolation": "bicubic"});
    such an encoder class defines `data_config(**its config)`."""
    data_config, kwargs = _encoder_hook(cfg.image_encoder, "data_config")
    return data_config(**kwargs) if data_config is not None else {}


def _stored(architecture: dict[str, dict[str, Any]] | None, name: str, cfg: Any) -> dict[str, Any]:
    """A checkpoint's stored constructor arguments for encoder `name`, each one a parameter of
    the configured class (the checkpoint is read from outside: nothing else is passed on)."""
    stored = dict((architecture or {}).get(name) or {})
    accepted = inspect.signature(hydra.utils.get_class(str(cfg[name]._target_))).parameters
    unknown = [k for k in stored if k not in accepted]
    if unknown:
        raise CheckpointError(f"the checkpoint's stored model.{name} has an argument '{unknown[0]}' that "
                              f"{cfg[name]._target_} does not take: it was saved by another version or model")
    return stored


def stored_architecture(cfg: Any) -> dict[str, dict[str, Any]] | None:
    """The encoders' constructor arguments a checkpoint's (already trust-checked) config stored."""
    stored = cfg.get("architecture")
    return OmegaConf.to_container(stored, resolve=True) if stored is not None else None


def build_model(cfg: Any, info: DataInfo, architecture: dict[str, dict[str, Any]] | None = None
                ) -> MultimodalModel:
    """Instantiate the encoders from their configs, then a fusion that fits their widths.

    `architecture` (a checkpoint's `MultimodalModel.architecture()`) rebuilds pretrained
    encoders from what the checkpoint stored, without their weight files or the hub.
    """
    image_encoder = instantiate(cfg.image_encoder, in_channels=info.image_channels,
                                 image_size=info.image_size, **_stored(architecture, "image_encoder", cfg))
    text_encoder = instantiate(cfg.text_encoder, vocab_size=info.vocab_size, pad_id=info.pad_id,
                               **_stored(architecture, "text_encoder", cfg))
    for name, enc, kind in (("image_encoder", image_encoder, ImageEncoder),
                            ("text_encoder", text_encoder, TextEncoder)):
        if not isinstance(enc, kind):
            raise ConfigError(f"model.{name}: {type(enc).__name__} is not an {kind.__name__}: subclass "
                              f"mmtrain.models.{kind.__name__} (docs/architecture.md, 'Add an image or text encoder')")
        if not isinstance(getattr(enc, "out_dim", None), int):
            raise ConfigError(f"model.{name}: {type(enc).__name__} must set an integer `out_dim`")
    fusion = instantiate(cfg.fusion, image_dim=image_encoder.out_dim, text_dim=text_encoder.out_dim)
    channels = info.image_channels
    # A pretrained encoder normalizes as it was trained (timm's mean/std), not as the data says.
    image_mean = image_encoder.image_mean if image_encoder.image_mean is not None else info.image_mean
    image_std = image_encoder.image_std if image_encoder.image_std is not None else info.image_std
    mean = list(image_mean) * (channels // len(image_mean))
    std = list(image_std) * (channels // len(image_std))
    return MultimodalModel(image_encoder, text_encoder, fusion, mean, std)


def set_frozen(model: nn.Module, names: Iterable[str]) -> None:
    """Freeze the named submodules (others trainable); the trainer also keeps them in eval mode."""
    for p in model.parameters():
        p.requires_grad_(True)
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            valid = ["image_encoder", "text_encoder", "fusion"] + [f"heads.{h}" for h in model.heads]
            raise ConfigError(f"cannot freeze '{name}': the model has {', '.join(valid)}") from None
        for p in module.parameters():
            p.requires_grad_(False)
