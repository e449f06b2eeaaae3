"""Fusions: (image B x Di, text B x Dt) -> fused B x dim.

Each projects both inputs to `dim` itself, so encoder widths need not match. Usable
with plain tensors: `ConcatFusion(512, 256, dim=128)(img_vec, txt_vec)`. The token
sequences are passed too, for fusions that attend over them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class ConcatFusion(nn.Module):
    """Concatenate the two vectors, then an MLP: the strong, simple baseline."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(image_dim + text_dim, dim), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(dim, dim))
        self.out_dim = dim

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                image_tokens: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.mlp(torch.cat([image, text], dim=-1))


class SumFusion(nn.Module):
    """Project each modality to `dim` and add: cheap, order-free, needs aligned spaces."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.out_dim = dim

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                image_tokens: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.out(self.image_proj(image) + self.text_proj(text))
