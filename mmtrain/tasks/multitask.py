"""Multitask pretraining: each encoder learns the label its own modality determines.

For MNIST+IMDB the image encoder learns the digit and the text encoder the sentiment,
each through its own head on its pooled output, before a fused fine-tune needs both.
Which label goes with which modality comes from the dataset (`DataInfo.modality_labels`).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mmtrain.data import DataInfo
from mmtrain.errors import ConfigError
from mmtrain.models.model import MultimodalModel
from mmtrain.tasks import Batch, Evaluation, Task


class MultitaskTask(Task):
    """Sum of per-modality cross-entropies (optionally weighted); accuracy per modality."""

    kind = "multitask"
    monitor = "mean_accuracy"
    monitor_mode = "max"

    def __init__(self, weights: dict[str, float] | None = None, hidden_dim: int = 0,
                 dropout: float = 0.0, name: str = "multitask") -> None:
        self.weights = dict(weights or {})
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.name = name
        self.labels: dict[str, str] = {}
        self.num_classes: dict[str, int] = {}

    def attach(self, model: MultimodalModel, info: DataInfo) -> None:
        if not info.modality_labels:
            raise ConfigError("task multitask needs a dataset whose modalities each determine a label "
                              "(DataInfo.modality_labels), e.g. data=mnist_imdb; this one has none")
        unknown = set(self.weights) - set(info.modality_labels)
        if unknown:
            raise ConfigError(f"task.weights names {sorted(unknown)}: the modalities with labels are "
                              f"{', '.join(info.modality_labels)}")
        self.labels = dict(info.modality_labels)
        self.num_classes = {m: info.num_classes[label] for m, label in self.labels.items()}
        dims = {"image": model.image_encoder.out_dim, "text": model.text_encoder.out_dim}
        heads = nn.ModuleDict()
        for modality, n in self.num_classes.items():
            dim = dims[modality]
            heads[modality] = (nn.Sequential(nn.Linear(dim, self.hidden_dim), nn.GELU(),
                                             nn.Dropout(self.dropout), nn.Linear(self.hidden_dim, n))
                               if self.hidden_dim else nn.Linear(dim, n))
        model.heads[self.name] = heads

    def logits(self, model: MultimodalModel, batch: Batch) -> dict[str, torch.Tensor]:
        heads = model.heads[self.name]
        out = {}
        if "image" in self.labels:
            out["image"] = heads["image"](model.encode_image(batch["image"]).pooled)
        if "text" in self.labels:
            out["text"] = heads["text"](model.encode_text(batch["text"], batch["text_lengths"]).pooled)
        return out

    def training_step(self, model: MultimodalModel, batch: Batch) -> dict[str, torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        loss = 0.0
        for modality, logits in self.logits(model, batch).items():
            target = batch[self.labels[modality]]
            part = F.cross_entropy(logits.float(), target)
            loss = loss + self.weights.get(modality, 1.0) * part
            result[f"{modality}_loss"] = part.detach()
            result[f"{modality}_accuracy"] = (logits.argmax(-1) == target).float().mean()
        result["loss"] = loss
        return result

    @torch.no_grad()
    def evaluate(self, model: MultimodalModel, batches: Iterable[Batch]) -> Evaluation:
        logits: dict[str, list[torch.Tensor]] = {m: [] for m in self.labels}
        targets: dict[str, list[torch.Tensor]] = {m: [] for m in self.labels}
        for batch in batches:
            for modality, out in self.logits(model, batch).items():
                logits[modality].append(out.float())
                targets[modality].append(batch[self.labels[modality]])
        metrics, loss = {}, 0.0
        for modality in self.labels:
            lg, tg = torch.cat(logits[modality]), torch.cat(targets[modality])
            part = float(F.cross_entropy(lg, tg))
            loss += self.weights.get(modality, 1.0) * part
            metrics[f"{modality}_loss"] = part
            metrics[f"{modality}_accuracy"] = float((lg.argmax(-1) == tg).double().mean()) if len(tg) else 0.0
        metrics["loss"] = loss
        metrics["mean_accuracy"] = sum(metrics[f"{m}_accuracy"] for m in self.labels) / len(self.labels)
        return Evaluation(metrics)
