"""Image encoders: normalized float images B x C x H x W -> EncoderOutput.

Each takes `in_channels` and `image_size` from the data (so grayscale and RGB, 28 px
and 224 px, need no config change) and returns a pooled vector and a token sequence
(feature-map cells or patches) for fusions and decoders that attend over the image.
torchvision's `pretrained=PATH` loads a local weights file: nothing is fetched at run time.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.models import EncoderOutput, ImageEncoder, openclip
from mmtrain.weights import load_state

log = logging.getLogger("mmtrain")


class CNNEncoder(ImageEncoder):
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


class ResNetEncoder(ImageEncoder):
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
            load_state(net, load_weights_file(pretrained, "model.image_encoder"),
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


class ViTEncoder(ImageEncoder):
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
            load_state(self.vit, state, f"model.image_encoder.pretrained={pretrained} does not fit this "
                                        f"ViT (dim={dim}, depth={depth}, patch_size={patch_size})")
        self.vit.conv_proj = _adapt_input_conv(self.vit.conv_proj, in_channels)
        self.out_dim = dim

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        vit = self.vit
        x = vit.conv_proj(images).flatten(2).transpose(1, 2)             # B x N x D
        x = torch.cat([vit.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = vit.encoder(x)                                                # B x (1 + N) x D
        return EncoderOutput(pooled=x[:, 0], tokens=x[:, 1:])


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")


def _local_weights(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file (.safetensors or a torch file, read with weights_only) or
    from a folder holding one of WEIGHT_FILES (timm's Hugging Face layout)."""
    where = Path(path).expanduser()
    if where.is_dir():
        found = [where / n for n in WEIGHT_FILES if (where / n).is_file()]
        if not found:
            raise ConfigError(f"model.image_encoder.pretrained={path}: the folder holds none of "
                              f"{', '.join(WEIGHT_FILES)}")
        where = found[0]
    if where.suffix == ".safetensors" and where.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(where)
        except Exception as e:
            raise CheckpointError(f"model.image_encoder.pretrained={path} is not a readable "
                                  f"safetensors file: {e}") from None
    return load_weights_file(str(where), "model.image_encoder")


class TimmEncoder(ImageEncoder):
    """Any timm model by name (`resnet50.a1_in1k`, `convnext_tiny`, `vit_base_patch16_224.augreg_in21k`,
    `vit_base_patch16_clip_224.openai`, ...), through its own feature API: tokens from
    `forward_features` (feature-map cells, or the patch tokens without the class token), pooled
    from `forward_head(pre_logits=True)` (the model's own pooling and norm).

    `pretrained=true` loads timm's weights for the name (timm's resolution: the Hugging Face hub
    and its cache, HF_HUB_OFFLINE honoured); `pretrained=PATH` a local .safetensors/.pth file or
    a folder holding one (nothing fetched), through timm's own loading, which adapts the first
    conv to grayscale and drops the classifier; false: random init. Images are normalized with
    the model's pretrained mean/std (`normalize=model`) or the data's (`normalize=data`); a ViT's
    position embeddings are resized to the data's image size.
    """

    def __init__(self, name: str, in_channels: int = 3, image_size: int = 224,
                 pretrained: Union[bool, str] = False, normalize: str = "model",
                 grad_checkpointing: bool = False, dim: Optional[int] = None,
                 model_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        if normalize not in ("model", "data"):
            raise ConfigError(f"model.image_encoder.normalize={normalize!r}: choose model or data")
        import timm

        if not timm.is_model(name.split(".")[0]):
            raise ConfigError(f"model.image_encoder.name={name!r} is not a timm model "
                              f"(list them with timm.list_models('*{name.split('.')[0][:6]}*'))")
        kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": in_channels, **(model_kwargs or {})}
        if isinstance(pretrained, str) and pretrained.lower() not in ("true", "false"):
            kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}),
                                                "state_dict": _local_weights(pretrained)}
            pretrained = True
        pretrained = pretrained is True or str(pretrained).lower() == "true"
        try:
            self.net = timm.create_model(name, pretrained=pretrained, **kwargs)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            # load_state_dict's report: a header line, then one line per kind of problem.
            lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [type(e).__name__]
            detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0]
            raise CheckpointError(f"model.image_encoder: the weights do not fit timm model {name} "
                                  f"or cannot be read ({detail[:300]})") from None
        config = timm.data.resolve_model_data_config(self.net)
        native = config["input_size"][-1]
        if image_size != native:
            if hasattr(self.net, "set_input_size"):  # ViT-style: resample the position embeddings
                self.net.set_input_size(img_size=image_size)
            log.info("model.image_encoder: %s was pretrained at %d px, the data is %d px",
                     name, native, image_size)
        if normalize == "model":
            self.image_mean, self.image_std = self._per_channel(config, in_channels)
        if grad_checkpointing:
            self.net.set_grad_checkpointing(True)
        width = self.net.num_features
        if getattr(self.net, "head_hidden_size", width) != width:
            raise ConfigError(f"model.image_encoder.name={name}: its pre-logits width differs from its "
                              f"feature width; pick a model without a hidden head layer")
        self.proj = nn.Linear(width, dim) if dim else nn.Identity()
        self.out_dim = dim or width
        self.prefix_tokens = int(getattr(self.net, "num_prefix_tokens", 0))
        self.channels_last_output = getattr(self.net, "output_fmt", "NCHW") == "NHWC"

    @staticmethod
    def data_config(name: str, pretrained: Union[bool, str] = False,
                    model_kwargs: Optional[dict[str, Any]] = None, **_: Any) -> dict[str, Any]:
        """The input size and resize filter the weights were trained with (timm's pretrained
        config, with the model_kwargs' pretrained_cfg_overlay), for the data to follow; {} for
        random weights."""
        if pretrained is False or str(pretrained).lower() == "false":
            return {}
        from timm.models import get_pretrained_cfg

        known = get_pretrained_cfg(name)
        overlay = dict((model_kwargs or {}).get("pretrained_cfg_overlay") or {})
        size = overlay.get("input_size", known.input_size if known is not None else None)
        interpolation = overlay.get("interpolation", known.interpolation if known is not None else None)
        return {**({"image_size": int(size[-1])} if size else {}),
                **({"interpolation": str(interpolation)} if interpolation else {})}

    @staticmethod
    def _per_channel(config: dict[str, Any], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        mean, std = tuple(config["mean"]), tuple(config["std"])
        if channels == 1:  # grey input to an RGB-trained net: its conv sums the RGB filters
            return (sum(mean) / len(mean),), (sum(std) / len(std),)
        return mean, std

    def architecture(self) -> dict[str, Any]:
        """Rebuilds offline: timm builds the architecture from its name alone."""
        return {"pretrained": False}

    def layer_ids(self) -> dict[str, int]:
        """Parameter name -> depth for layer-wise lr decay, from the model's own group_matcher."""
        from timm.models import group_parameters

        if not hasattr(self.net, "group_matcher"):
            return {}
        groups = group_parameters(self.net, self.net.group_matcher(coarse=False), reverse=True)
        top = max(groups.values())
        return {name: groups.get(name[len("net."):], top) for name, _ in self.named_parameters()}

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        features = self.net.forward_features(images)
        pooled = self.net.forward_head(features, pre_logits=True)
        if features.ndim == 4:
            tokens = features.flatten(1, 2) if self.channels_last_output else features.flatten(2).transpose(1, 2)
        else:
            tokens = features[:, self.prefix_tokens:]
        return EncoderOutput(pooled=self.proj(pooled), tokens=self.proj(tokens))


class OpenCLIPImageEncoder(ImageEncoder):
    """The image tower of an open_clip model (`name=ViT-B-32 pretrained=laion2b_s34b_b79k`, a
    local weights file, `hf-hub:ORG/REPO` or `local-dir:FOLDER`; see mmtrain/models/openclip.py).

    Pooled = open_clip's `encode_image` (its projection into the shared space, not normalized);
    tokens = a ViT's patch tokens through the same projection (the pooled vector alone for towers
    without them). Images are normalized with the model's preprocessing mean/std and the data
    follows its input size and resize filter; a grey image is fed as three equal channels. Paired with
    `model/text_encoder=open_clip` of the same model, ContrastiveTask keeps the model's shared
    space and logit scale instead of adding projections.
    """

    def __init__(self, name: str, in_channels: int = 3, image_size: int = 224,
                 pretrained: Union[bool, str, None] = None, grad_checkpointing: bool = False,
                 model_config: Optional[str] = None) -> None:
        super().__init__()
        model, self.model_config = openclip.load(name, pretrained, model_config, image_size,
                                                  "model.image_encoder")
        self.visual = model.visual
        self.joint_space = openclip.joint_space(model)
        self.in_channels = in_channels
        if hasattr(self.visual, "output_tokens"):
            self.visual.output_tokens = True
        if grad_checkpointing:
            self.visual.set_grad_checkpointing(True)
        preprocess = json.loads(self.model_config)["preprocess_cfg"]
        self.image_mean, self.image_std = TimmEncoder._per_channel(preprocess, in_channels)
        self.out_dim = self.joint_space["embed_dim"]

    @staticmethod
    def data_config(name: str, pretrained: Union[bool, str, None] = None, **_: Any) -> dict[str, Any]:
        """The model's input size and resize filter (its preprocessing config, as open_clip
        resolves it for these weights), for the data to follow, when weights are loaded."""
        what = "model.image_encoder"
        if not (name.startswith(("hf-hub:", "local-dir:")) or openclip.weights_path(pretrained, what) is not None):
            return {}
        return {"image_size": openclip.native_image_size(name, what),
                "interpolation": openclip.preprocess_config(name, pretrained, what)["interpolation"]}

    def architecture(self) -> dict[str, Any]:
        """The open_clip config: rebuilds the tower with no name lookup and no download."""
        return {"model_config": self.model_config, "pretrained": None}

    def layer_ids(self) -> dict[str, int]:
        """Parameter name -> depth for layer-wise lr decay (openclip.resblock_ids)."""
        return openclip.resblock_ids(self.named_parameters())

    def forward(self, images: torch.Tensor) -> EncoderOutput:
        if self.in_channels == 1:
            images = images.expand(-1, 3, -1, -1)
        out = self.visual(images)
        pooled, tokens = out if isinstance(out, tuple) else (out, None)
        if tokens is not None:
            tokens = openclip.project_tokens(tokens, getattr(self.visual, "proj", None), pooled.shape[-1])
        return EncoderOutput(pooled=pooled, tokens=pooled[:, None] if tokens is None else tokens)
