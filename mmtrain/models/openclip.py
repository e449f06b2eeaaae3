"""open_clip models as mmtrain towers: the loading both `model/image_encoder=open_clip` and
`model/text_encoder=open_clip` share, the tokenizer and the preprocessing the model brings.

Each tower loads the whole open_clip model through open_clip's own `create_model` (its
model configs, pretrained tags through the Hugging Face hub cache with HF_HUB_OFFLINE
honoured, `hf-hub:` and `local-dir:` names, local weight files) and keeps its half. The
text side is built as open_clip's `CustomTextCLIP` (`force_custom_text`), whose text tower
is one module; open_clip converts a plain CLIP checkpoint to it when loading.
A checkpoint stores the model's open_clip config (what `load` returns, kept by the towers'
`architecture()`), which rebuilds the architecture with no name lookup, no folder and no
download.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from torch import nn

from mmtrain.data.tokenizer import TextTokenizer, clip_bpe_tokenizer, hf_tokenizer
from mmtrain.errors import CheckpointError, ConfigError

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """open_clip logs through the root logger ("Loading ...", "Using default SimpleTokenizer",
    "No pretrained weights loaded" when a checkpoint brings them, "Failed to download" before
    raising): what matters reaches us as an exception, which becomes our one line."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.CRITICAL))
    try:
        yield
    finally:
        root.setLevel(level)


def _schema(name: str) -> str:
    return name.split(":", 1)[0] if name.startswith(("hf-hub:", "local-dir:")) else ""


def _local(name: str) -> str:
    """A local-dir: name with its folder made absolute (`~` expanded, which open_clip does not)."""
    if _schema(name) != "local-dir":
        return name
    return f"local-dir:{Path(name.split(':', 1)[1]).expanduser().resolve()}"


def weights_path(pretrained: Union[bool, str, None], what: str) -> Optional[str]:
    """A pretrained tag or file as open_clip takes it; a path that does not exist is refused
    here rather than looked up as a tag."""
    if pretrained is None or pretrained is False or str(pretrained).lower() in ("false", "none", ""):
        return None
    text = str(pretrained)
    if text.lower() == "true":
        raise ConfigError(f"{what}.pretrained=true: open_clip names weights by tag (e.g. "
                          f"laion2b_s34b_b79k, see open_clip.list_pretrained()) or by a local file")
    looks_like_file = "/" in text or text.startswith(("~", ".")) or text.endswith(WEIGHT_SUFFIXES)
    if looks_like_file and not Path(text).expanduser().is_file():
        raise ConfigError(f"{what}.pretrained={text}: no such file")
    return str(Path(text).expanduser()) if looks_like_file else text


def model_config(name: str, what: str) -> dict[str, Any]:
    """open_clip's architecture config for `name` ({embed_dim, vision_cfg, text_cfg, ...})."""
    import open_clip

    if _schema(name) == "local-dir" and not (Path(_local(name).split(":", 1)[1])
                                             / "open_clip_config.json").is_file():
        raise ConfigError(f"{what}.name={name}: no open_clip_config.json in that folder")
    problem = ""
    try:
        with _quiet():
            config = open_clip.get_model_config(_local(name))
    except Exception as e:  # the hub offline without a cached copy, a malformed file, ...
        problem = _first_line(e)
    if problem:  # raised here: our line, not the library's trace, is the message's context
        raise ConfigError(f"{what}.name={name}: cannot read its open_clip config ({problem})")
    if config is None:
        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ConfigError(f"{what}.name={name!r} is not an open_clip model{hint}: see "
                          f"open_clip.list_models(), or use hf-hub:ORG/REPO or local-dir:FOLDER")
    return config


def preprocess_config(name: str, pretrained: Union[bool, str, None], what: str) -> dict[str, Any]:
    """The preprocessing (size, mean, std, interpolation, ...) open_clip's create_model gives
    `name` with `pretrained`, resolved as it resolves it but without building the model: its
    defaults under a local-dir/hf-hub config's preprocess_cfg, or under a tag's pretrained
    config (a weights file brings none)."""
    import open_clip
    from open_clip.pretrained import download_pretrained_from_hf
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    schema, overlay = _schema(name), {}
    if schema:
        model_config(name, what)  # a missing or unreadable config is refused there, in one line
        where = _local(name).split(":", 1)[1]  # the folder, or the hub repo id
        path = (Path(where) / "open_clip_config.json" if schema == "local-dir" else
                Path(download_pretrained_from_hf(where, filename="open_clip_config.json")))
        overlay = json.loads(path.read_text(encoding="utf-8")).get("preprocess_cfg") or {}
    else:
        weights = weights_path(pretrained, what)
        if weights is not None and not Path(weights).is_file():
            overlay = open_clip.get_pretrained_cfg(name, weights) or {}
    return merge_preprocess_dict(asdict(PreprocessCfg()), overlay)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def load(name: str, pretrained: Union[bool, str, None], stored: Optional[str],
         image_size: Optional[int], what: str) -> tuple[nn.Module, str]:
    """The open_clip model (CustomTextCLIP) for a tower and its config as JSON (architecture and
    preprocessing: what a checkpoint stores). From the checkpoint's `stored` config with random
    weights (the checkpoint brings its own), else from `name` with its weights (`pretrained`:
    a tag or a file; a hf-hub:/local-dir: name brings them itself)."""
    import open_clip

    if stored is not None:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "open_clip_config.json").write_text(stored, encoding="utf-8")
            config = json.loads(stored)["model_cfg"]
            return _create(f"local-dir:{folder}", None, config, image_size, what), stored
    config = model_config(name, what)
    weights = weights_path(pretrained, what)
    if weights is not None and _schema(name) == "" and not Path(weights).is_file() \
            and not open_clip.get_pretrained_cfg(name, weights):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ConfigError(f"{what}.pretrained={weights} is neither a file nor a pretrained tag of "
                          f"{name} (its tags: {tags})")
    model = _create(_local(name), weights, config, image_size, what)
    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    return model, json.dumps({"model_cfg": config, "preprocess_cfg": preprocess})


def _create(name: str, weights: Optional[str], config: dict[str, Any], image_size: Optional[int],
            what: str) -> nn.Module:
    import open_clip

    resize = image_size is not None and image_size != _native_size(config)
    try:
        # On the default device: `build_for_weights` first builds a shell on the meta device.
        # No tower's own base weights (a timm or HF tower's hub weights): the CLIP weights, or
        # the checkpoint's, or none at all when asked for none.
        with _quiet():
            return open_clip.create_model(name, pretrained=weights, force_custom_text=True,
                                          pretrained_image=False, pretrained_text=False,
                                          device=torch.get_default_device(),
                                          force_image_size=image_size if resize else None)
    except Exception as e:  # a mismatched or unreadable file, an offline hub without a cache
        problem = _first_line(e)
    hint = ("; the tag's weights come through the Hugging Face hub cache: fetch them once with "
            "network access, or pass pretrained=PATH to a local file" if "download" in problem.lower() else "")
    raise CheckpointError(f"{what}: cannot load open_clip model {name}"
                          f"{f' with {weights}' if weights else ''} ({problem}){hint}")


def native_image_size(name: str, what: str) -> int:
    """The input size the model's config says it was trained at."""
    return _native_size(model_config(name, what))


def _native_size(config: dict[str, Any]) -> int:
    size = config["vision_cfg"].get("image_size", 224)
    return int(size if isinstance(size, int) else size[-1])


def joint_space(model: nn.Module) -> dict[str, Any]:
    """What both towers of one open_clip model share: the embedding width and the learned
    (log) logit scale. ContrastiveTask keeps this space instead of adding projections."""
    scale = model.logit_scale.detach()
    return {"embed_dim": int(model.text.output_dim),
            "log_logit_scale": 0.0 if scale.is_meta else float(scale.reshape(()))}


def tokenizer(name: str, max_length: int, what: str) -> TextTokenizer:
    """open_clip's tokenizer for the model, as a fast tokenizer the data pipeline uses."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    config = model_config(name, what)
    context = int(config["text_cfg"].get("context_length", 77))
    if max_length > context:
        raise ConfigError(f"data.tokenizer_options.max_length={max_length} is longer than {name}'s "
                          f"context ({context} tokens): lower it")
    problem = ""
    try:
        with _quiet():
            found = open_clip.get_tokenizer(_local(name))
    except Exception as e:
        problem = _first_line(e)
    if problem:
        raise ConfigError(f"{what}.name={name}: cannot load its tokenizer ({problem})")
    if type(found) is SimpleTokenizer:
        merges = sorted(found.bpe_ranks, key=found.bpe_ranks.get)
        sot, eot = (found.decoder[i] for i in (found.sot_token_id, found.eot_token_id))
        return clip_bpe_tokenizer(dict(found.encoder), merges, sot, eot, max_length)
    if isinstance(found, HFTokenizer) and not found.strip_sep_token and not found.tokenizer_mode:
        return hf_tokenizer(found.tokenizer, max_length, name, what)
    raise ConfigError(f"{what}.name={name} uses open_clip's {type(found).__name__} in a form mmtrain "
                      f"cannot turn into a fast tokenizer (supported: CLIP's BPE, a plain Hugging Face one)")


def project_tokens(tokens: torch.Tensor, projection: Any, width: int) -> Optional[torch.Tensor]:
    """An open_clip tower's token sequence in its pooled embedding's space (the tower's own
    projection, a matrix or a Linear, applied to every token); None when it has none that fits."""
    if isinstance(projection, nn.Linear):
        return projection(tokens) if projection.in_features == tokens.shape[-1] else None
    if isinstance(projection, torch.Tensor) and projection.shape[0] == tokens.shape[-1]:
        return tokens @ projection
    return tokens if tokens.shape[-1] == width else None


_RESBLOCK = re.compile(r"\.(?:resblocks|blocks|layers?)\.(\d+)\.")


def resblock_ids(named: Any) -> dict[str, int]:
    """Depths for an open_clip tower's parameters for layer-wise lr decay: embeddings 0,
    residual block i -> i + 1, what follows the last block (final norm, projection) with it."""
    names = [name for name, _ in named]
    found = {name: int(m.group(1)) + 1 for name in names if (m := _RESBLOCK.search(name))}
    top = max(found.values(), default=0)
    embeds = ("embed", "conv1", "ln_pre", "cls_emb", "patch")
    return {name: found.get(name, 0 if any(e in name for e in embeds) else top) for name in names}
