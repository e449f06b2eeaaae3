"""Image encoders, text encoders, fusions and the model that assembles them."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class EncoderOutput(NamedTuple):
    """What every encoder returns."""

    pooled: torch.Tensor
    """B x D: one vector per sample."""
    tokens: torch.Tensor
    """B x T x D: a sequence (image patches or text tokens) for attention-based parts."""
    mask: Optional[torch.Tensor] = None
    """B x T bool, True where a token is real; None when every token is."""
