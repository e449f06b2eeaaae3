"""Tiny random pretrained-format models, written in the libraries' own formats (offline):
a Hugging Face encoder + fast tokenizer saved with save_pretrained, a timm model's weights file."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from mmtrain.data.synthetic import COLOURS, POSITIONS, SHAPES, SIZES, TEMPLATES
from tests.helpers import TINY, compose

WORDS = sorted({w for t in TEMPLATES for w in t.replace("{", " ").replace("}", " ").split()}
               | set(COLOURS) | set(SHAPES) | set(SIZES) | {w for p in POSITIONS for w in p.split()})


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece fast tokenizer covering the synthetic captions."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS + ["##s", "##ed"])}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=64)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64,
                                 max_position_embeddings=64))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


TIMM_VIT = "vit_tiny_patch16_224"
# Pretrained "at 16 px" (the overlay), so a run's data follows it to 16 px, not timm's 224.
TIMM_VIT_KWARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 4, "img_size": 16,
                   "pretrained_cfg_overlay": {"input_size": (3, 16, 16)}}
TIMM_VIT_OVERRIDES = [f"model.image_encoder.name={TIMM_VIT}",
                      "model.image_encoder.model_kwargs={embed_dim:32,depth:2,num_heads:2,patch_size:4,"
                      "img_size:16,pretrained_cfg_overlay:{input_size:[3,16,16]}}"]


def save_tiny_timm_vit(path: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 2-block, 32-wide timm ViT (with its classifier, as timm publishes them) saved to `path`
    (.safetensors or a torch file); returns its state dict."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = timm.create_model(TIMM_VIT, num_classes=7, **TIMM_VIT_KWARGS).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    return state


def pretrained_config(*overrides: str) -> DictConfig:
    """The trainer tests' tiny run, without the widths of the encoders `overrides` swap out."""
    swapped = [group.split("=")[0].replace("model/", "model.") + "." for group in overrides
               if group.startswith(("model/image_encoder=", "model/text_encoder="))]
    tiny = [o for o in TINY if not o.startswith(tuple(swapped))]
    return compose([*tiny, *overrides])


# A 2-block, 32-wide CLIP (ViT with 4 px patches, "trained at" 24 px) with CLIP's BPE
# vocabulary, so open_clip's own tokenizer applies.
OPEN_CLIP_TINY = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 24, "layers": 2, "width": 32, "patch_size": 4, "head_width": 16},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
OPEN_CLIP_PREPROCESS = {"mean": [0.40, 0.45, 0.50], "std": [0.20, 0.25, 0.30]}


def save_tiny_open_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A tiny open_clip model in open_clip's own formats: a `local-dir:` folder (its
    open_clip_config.json and open_clip_model.safetensors, as save_for_hf writes them) and a
    training checkpoint ({"epoch", "state_dict"} with DDP's module. prefix) of the same weights.
    Its logit scale is not CLIP's init, so a test sees where the scale came from."""
    import json

    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": OPEN_CLIP_TINY,
                                                              "preprocess_cfg": OPEN_CLIP_PREPROCESS}))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}")
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=OPEN_CLIP_TINY)
    state = model.state_dict()
    save_file(state, folder / "open_clip_model.safetensors")
    trained = folder.parent / f"{folder.name}-epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, trained)
    return folder, trained
