"""Zero-shot classification with a contrastive checkpoint (`mmtrain eval zero_shot=true`).

OpenAI CLIP's protocol: every class name is put in each prompt template, the prompts'
normalized text embeddings are averaged per class (`inference.class_embeddings`, which
`mmtrain predict labels=[...]` uses too), and each image takes the class whose embedding is
most similar to its own. Top-k accuracy counts an image right when its label is among the k
most similar classes; k is reported only below the number of classes (k >= classes is 1.0).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from mmtrain.errors import ConfigError

TOP_K = (1, 5)
DEFAULT_TEMPLATES = ("a photo of a {}.",)


def zero_shot_label(info: Any, label: str | None) -> str:
    """The label to classify: the one given, else the image's own (modality_labels), else 'label'."""
    key = label or info.modality_labels.get("image") or "label"
    if key not in info.class_names:
        have = ", ".join(info.class_names) or "none"
        raise ConfigError(f"zero_shot_label={key}: the data has no class names for it (it has: {have}); "
                          f"zero-shot classification needs a labelled set such as data=synthetic or "
                          f"data=mnist_imdb")
    return key


@torch.no_grad()
def zero_shot_accuracy(loaded: Any, dataset: Dataset, *, label: str | None = None,
                       templates: Sequence[str] | None = None, batch_size: int = 256,
                       num_workers: int = 0, limit: int | None = None) -> dict[str, float]:
    """zero_shot_top1 (and top5 with more than 5 classes) of `loaded` (an inference.Loaded of a
    contrastive checkpoint) on `dataset`, from its class names and prompt templates."""
    from mmtrain.data.loader import make_loader
    from mmtrain.inference import class_embeddings, image_embedding

    loaded.require("eval zero_shot=true", "contrastive")
    key = zero_shot_label(loaded.info, label)
    names = loaded.info.class_names[key]
    prompts = list(templates or loaded.info.prompt_templates.get(key) or DEFAULT_TEMPLATES)
    classes = class_embeddings(loaded, names, prompts, batch_size)[0]
    ks = [k for k in TOP_K if k < len(names)]
    if not ks:
        raise ConfigError(f"zero_shot_label={key} has {len(names)} class: nothing to choose between")
    hits = {k: 0 for k in ks}
    seen = 0
    loader = make_loader(dataset, batch_size, train=False, num_workers=num_workers, device=loaded.device)
    for i, batch in enumerate(loader):
        if limit is not None and i >= limit:
            break
        ranked = (image_embedding(loaded, batch["image"]) @ classes.t()).topk(max(ks), dim=-1).indices
        target = batch[key].cpu()[:, None]
        for k in ks:
            hits[k] += int((ranked[:, :k] == target).any(dim=1).sum())
        seen += target.shape[0]
    return {f"zero_shot_top{k}": hits[k] / max(1, seen) for k in ks}
