"""Fusions: (image B x Di, text B x Dt) -> fused B x dim.

Each projects both inputs to `dim` itself, so encoder widths need not match. Usable with
plain tensors outside mmtrain:

    fusion = GatedFusion(image_dim=512, text_dim=256, dim=128)
    fused = fusion(image_vec, text_vec)                                   # B x 128
    fused = AttentionFusion(512, 256, dim=128)(img_vec, txt_vec, image_tokens=img_tok,
                                               text_tokens=txt_tok, text_mask=txt_mask)

The token sequences (B x T x D, with the text's B x T padding mask, True = real token) are
passed too; `film` and `attention` use them, the others use the pooled vectors.
"""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch
from torch import nn

from mmtrain.errors import ConfigError


@runtime_checkable
class PerModalityFusion(Protocol):
    """A fusion whose modalities never interact, which can give each one's features apart:
    `MultimodalModel` then puts a task's fused head on each modality and averages their
    outputs (a late fusion of decisions). Checked once, when the model is built."""

    out_dim: int

    def per_modality(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def _mlp(in_dim: int, dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))


class ConcatFusion(nn.Module):
    """Concatenate the two vectors, then an MLP: the strong, simple baseline."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = _mlp(image_dim + text_dim, dim, dropout)
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
        return self.out(self.combine(self.image_proj(image), self.text_proj(text)))

    @staticmethod
    def combine(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return image + text


class ProductFusion(SumFusion):
    """Project each modality to `dim` and multiply element-wise: a feature fires only when both
    modalities agree on it (a multiplicative interaction that sum cannot express)."""

    @staticmethod
    def combine(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return image * text


class GatedFusion(nn.Module):
    """Gated multimodal unit (Arevalo et al., 2017): a per-feature gate z, computed from both
    inputs, mixes tanh(W_i image) and tanh(W_t text) as z * h_i + (1 - z) * h_t."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.gate = nn.Linear(image_dim + text_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                image_tokens: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        z = torch.sigmoid(self.gate(torch.cat([image, text], dim=-1)))
        h = z * torch.tanh(self.image_proj(image)) + (1 - z) * torch.tanh(self.text_proj(text))
        return self.dropout(h)


class FiLMFusion(nn.Module):
    """FiLM (Perez et al., 2018): the text predicts a per-channel scale and shift for every image
    token, then the modulated tokens are averaged. Starts as the identity modulation."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, dim)
        self.film = nn.Linear(text_dim, 2 * dim)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim))
        self.out_dim = dim

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                image_tokens: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = image_tokens if image_tokens is not None else image[:, None]    # B x N x Di
        x = self.image_proj(tokens)                                               # B x N x D
        gamma, beta = self.film(text).chunk(2, dim=-1)                            # B x D each
        x = torch.relu(x * (1 + gamma[:, None]) + beta[:, None])
        return self.out(x.mean(dim=1))


class AttentionFusion(nn.Module):
    """Cross-attention both ways: image tokens attend to the (unpadded) text tokens and text
    tokens to the image tokens; each side is mean-pooled over its real tokens, then an MLP
    mixes the two. Cost grows with image tokens x text tokens."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"model.fusion: dim={dim} must be a multiple of heads={heads}")
        self.image_proj = nn.Linear(image_dim, dim)
        self.text_proj = nn.Linear(text_dim, dim)
        self.image_to_text = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.text_to_image = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.image_norm = nn.LayerNorm(dim)
        self.text_norm = nn.LayerNorm(dim)
        self.out = _mlp(2 * dim, dim, dropout)
        self.out_dim = dim

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                image_tokens: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # A missing sequence is a one-token sequence: the pooled vector.
        img = self.image_proj(image_tokens if image_tokens is not None else image[:, None])  # B x Ni x D
        txt = self.text_proj(text_tokens if text_tokens is not None else text[:, None])      # B x Nt x D
        if text_tokens is None or text_mask is None:
            text_mask = torch.ones(txt.shape[:2], dtype=torch.bool, device=txt.device)
        attended_img = self.image_to_text(img, txt, txt, key_padding_mask=~text_mask, need_weights=False)[0]
        attended_txt = self.text_to_image(txt, img, img, need_weights=False)[0]
        img = self.image_norm(img + attended_img)
        txt = self.text_norm(txt + attended_txt)
        keep = text_mask[..., None].to(txt.dtype)
        txt_pooled = (txt * keep).sum(1) / keep.sum(1).clamp(min=1)
        return self.out(torch.cat([img.mean(dim=1), txt_pooled], dim=-1))


class BilinearFusion(nn.Module):
    """Low-rank bilinear pooling (MLB, Kim et al., 2017): tanh(U image) * tanh(V text) in a
    `rank`-dim space, projected to `dim`; every image feature can interact with every text
    feature at rank x (Di + Dt) parameters instead of Di x Dt x dim."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, rank: int = 512,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, rank)
        self.text_proj = nn.Linear(text_dim, rank)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(rank, dim))
        self.out_dim = dim

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                image_tokens: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.out(torch.tanh(self.image_proj(image)) * torch.tanh(self.text_proj(text)))


class LateFusion(nn.Module):
    """Late fusion: each modality goes through its own MLP tower to `dim` and the two never
    interact. `forward` averages them; `per_modality` gives them apart, so the model puts a
    task's fused head on each and averages their outputs (`MultimodalModel.fused_head`)."""

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.0) -> None:
        super().__init__()
        self.image_tower = _mlp(image_dim, dim, dropout)
        self.text_tower = _mlp(text_dim, dim, dropout)
        self.out_dim = dim

    def per_modality(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (image B x dim, text B x dim), each computed from its own modality only."""
        return self.image_tower(image), self.text_tower(text)

    def forward(self, image: torch.Tensor, text: torch.Tensor,
                image_tokens: Optional[torch.Tensor] = None, text_tokens: Optional[torch.Tensor] = None,
                text_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        image_part, text_part = self.per_modality(image, text)
        return 0.5 * (image_part + text_part)
