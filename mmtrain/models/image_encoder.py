"""Image encoders: normalized float images B x C x H x W -> EncoderOutput."""

from __future__ import annotations

import torch
from torch import nn

from mmtrain.models import EncoderOutput


class CNNEncoder(nn.Module):
    """A small conv net: `depth` stride-2 blocks of conv-BN-ReLU, patches projected to `dim`."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, width: int = 32,
                 depth: int = 3, dim: int = 128) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for i in range(depth):
            out = width * 2**i
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.proj = nn.Conv2d(channels, dim, 1)
        self.out_dim = dim

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        fmap = self.proj(self.features(images))          # B x D x h x w
        tokens = fmap.flatten(2).transpose(1, 2)          # B x hw x D
        return EncoderOutput(pooled=tokens.mean(dim=1), tokens=tokens)
