"""Image encoders: normalized float images B x C x H x W -> EncoderOutput.

Each takes `in_channels` and `image_size` from the data (so grayscale and RGB, 28 px
and 224 px, need no config change) and returns a pooled vector and a token sequence
(feature-map cells or patches) for fusions and decoders that attend over the image.
torchvision's `pretrained=PATH` loads a local weights file: nothing is fetched at run time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from mmtrain.errors import CheckpointError, ConfigError
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


def load_weights_file(path: str, what: str) -> dict[str, torch.Tensor]:
    """A torchvision state dict from a local file (e.g. resnet18-f37072fd.pth)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what}.pretrained={path}: no such file; download the torchvision weights "
                          f"(e.g. https://download.pytorch.org/models/resnet18-f37072fd.pth) and pass "
                          f"their local path, or pretrained=null for random init")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, a pickle with code in it, ...
        raise CheckpointError(f"{what}.pretrained={path} is not a readable weights file: {e}") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_fitting(module: nn.Module, state: dict[str, torch.Tensor], problem: str) -> None:
    """Load `state` into `module`, or raise one line saying how many tensors are missing or misshapen."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    misshapen = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    unexpected = [k for k in state if k not in expected]
    if missing or misshapen or unexpected:
        details = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
                   ((missing, "missing"), (misshapen, "of another shape"), (unexpected, "unexpected")) if keys]
        raise CheckpointError(f"{problem}: tensors {', '.join(details)}")
    module.load_state_dict(state)


def _adapt_input_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of an RGB input conv for `in_channels`: grayscale sums the RGB filters, so a
    grey image gives the response the RGB net gives to the same image in colour."""
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        if in_channels == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new


class ResNetEncoder(nn.Module):
    """torchvision's ResNet-18/34/50 trunk; tokens are the last feature map's cells.

    `small_input=true` swaps the 7x7/2 stem and max-pool for a 3x3/1 conv (CIFAR-style), so a
    32 px image keeps a 4x4 map instead of shrinking to 1x1; the stem is then trained from scratch.
    """

    ARCHS = ("resnet18", "resnet34", "resnet50")

    def __init__(self, arch: str = "resnet18", in_channels: int = 3, image_size: int = 224,
                 pretrained: Optional[str] = None, small_input: bool = False,
                 dim: Optional[int] = None) -> None:
        super().__init__()
        if arch not in self.ARCHS:
            raise ConfigError(f"model.image_encoder.arch={arch!r}: choose one of {', '.join(self.ARCHS)}")
        import torchvision  # imported here: ~1 s of start-up that a cnn run does not need

        net = getattr(torchvision.models, arch)(weights=None)
        if pretrained:
            load_fitting(net, load_weights_file(pretrained, "model.image_encoder"),
                         f"model.image_encoder.pretrained={pretrained} does not hold {arch} weights")
        if small_input:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        else:
            net.conv1 = _adapt_input_conv(net.conv1, in_channels)
        self.trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool,
                                   net.layer1, net.layer2, net.layer3, net.layer4)
        channels = net.fc.in_features
        self.proj = nn.Linear(channels, dim) if dim else nn.Identity()
        self.out_dim = dim or channels

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        tokens = self.proj(self.trunk(images).flatten(2).transpose(1, 2))   # B x hw x D
        return EncoderOutput(pooled=tokens.mean(dim=1), tokens=tokens)


class ViTEncoder(nn.Module):
    """A Vision Transformer (torchvision's implementation) at any size.

    `vit_tiny` (patch 4, width 192) suits 28-64 px inputs; `vit_b_16` is ViT-B/16 and loads
    torchvision's ImageNet weights, with the position embeddings resized when the input is not
    224 px. Pooled = the class token; tokens = the patch tokens.
    """

    def __init__(self, in_channels: int = 3, image_size: int = 32, patch_size: int = 4,
                 dim: int = 192, depth: int = 6, heads: int = 3, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, pretrained: Optional[str] = None) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"model.image_encoder.patch_size={patch_size} does not divide the data's "
                              f"image_size={image_size}: pick a patch size that does (e.g. "
                              f"{next(p for p in (16, 14, 8, 7, 4, 2, 1) if image_size % p == 0)})")
        if dim % heads:
            raise ConfigError(f"model.image_encoder: dim={dim} must be a multiple of heads={heads}")
        from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

        self.vit = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=depth,
                                     num_heads=heads, hidden_dim=dim, mlp_dim=int(dim * mlp_ratio),
                                     dropout=dropout)
        self.vit.heads = nn.Identity()
        if pretrained:
            state = load_weights_file(pretrained, "model.image_encoder")
            state = {k: v for k, v in state.items() if not k.startswith("heads.")}
            if "encoder.pos_embedding" in state:
                state = interpolate_embeddings(image_size, patch_size, state)
            load_fitting(self.vit, state, f"model.image_encoder.pretrained={pretrained} does not fit this "
                                          f"ViT (dim={dim}, depth={depth}, patch_size={patch_size})")
        self.vit.conv_proj = _adapt_input_conv(self.vit.conv_proj, in_channels)
        self.out_dim = dim

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        vit = self.vit
        x = vit.conv_proj(images).flatten(2).transpose(1, 2)             # B x N x D
        x = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = vit.encoder(x)                                                # B x (1 + N) x D
        return EncoderOutput(pooled=x[:, 0], tokens=x[:, 1:])
