"""Image encoders, text encoders, fusions and the model that assembles them."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, NamedTuple, Optional

import torch
from torch import nn


class EncoderOutput(NamedTuple):
    """What every encoder returns."""

    pooled: torch.Tensor
    """B x D: one vector per sample."""
    tokens: torch.Tensor
    """B x T x D: a sequence (image patches or text tokens) for attention-based parts."""
    mask: Optional[torch.Tensor] = None
    """B x T bool, True where a token is real; None when every token is."""


class Encoder(nn.Module):
    """An image or text tower: `forward` returns EncoderOutput with pooled B x `out_dim`.

    What the rest of mmtrain may ask of a tower, each with the answer a plain one gives:
    - `layer_ids()`: parameter name -> depth (0 = embeddings), for layer-wise lr decay
      (`stages.<s>.layer_decay`); {} = the tower does not number its layers;
    - `architecture()`: the constructor arguments that rebuild it offline, for a tower
      whose shape comes from a downloaded config; None = its config says it all;
    - `joint_space`: the embedding space a CLIP model's two towers share (the contrastive
      head keeps it and its logit scale when both towers name the same one);
    - class-level hooks, read from the config before anything is built (None = none):
      `data_config(**config)` on an image tower (the image_size / interpolation the data
      follows), `load_tokenizer(**config, max_length=N)` on a text tower (its own tokenizer).
    """

    out_dim: int
    joint_space: Optional[dict[str, Any]] = None
    data_config: ClassVar[Optional[Callable[..., dict[str, Any]]]] = None
    load_tokenizer: ClassVar[Optional[Callable[..., Any]]] = None

    def layer_ids(self) -> dict[str, int]:
        return {}

    def architecture(self) -> Optional[dict[str, Any]]:
        return None


class ImageEncoder(Encoder):
    """Takes normalized images B x C x H x W. A pretrained tower normalizes as it was
    trained: it sets `image_mean` / `image_std`; None = the data's statistics."""

    image_mean: Optional[tuple[float, ...]] = None
    image_std: Optional[tuple[float, ...]] = None


class TextEncoder(Encoder):
    """Takes token ids B x T and lengths B; outputs on real tokens must not depend on padding."""
