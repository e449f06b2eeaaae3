"""Classification from the fused image + text vector."""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score

from mmtrain.data import DataInfo
from mmtrain.errors import ConfigError


class ClassificationTask:
    """Cross-entropy on `label` from the fused features; accuracy and macro-F1."""

    monitor = "accuracy"
    monitor_mode = "max"

    def __init__(self, label: str = "label", hidden_dim: int = 256, dropout: float = 0.1,
                 label_smoothing: float = 0.0, name: str = "classification") -> None:
        self.label = label
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.name = name
        self.num_classes = 0

    def attach(self, model: Any, info: DataInfo) -> None:
        if self.label not in info.num_classes:
            raise ConfigError(f"task label {self.label!r} is not in this dataset "
                              f"(it has: {', '.join(info.num_classes)})")
        self.num_classes = info.num_classes[self.label]
        dim = model.fusion.out_dim
        if self.hidden_dim:
            head = nn.Sequential(nn.Linear(dim, self.hidden_dim), nn.GELU(), nn.Dropout(self.dropout),
                                 nn.Linear(self.hidden_dim, self.num_classes))
        else:
            head = nn.Linear(dim, self.num_classes)
        model.heads[self.name] = head

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model.heads[self.name](model(batch)["fused"])

    def training_step(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.logits(model, batch)
        target = batch[self.label]
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        return {"loss": loss, "accuracy": (logits.argmax(-1) == target).float().mean()}

    @torch.no_grad()
    def evaluate(self, model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        all_logits, targets = [], []
        for batch in batches:
            all_logits.append(self.logits(model, batch).float())
            targets.append(batch[self.label])
        logits, target = torch.cat(all_logits), torch.cat(targets)
        preds = logits.argmax(-1)
        n = self.num_classes
        return {
            "loss": float(F.cross_entropy(logits, target)),
            "accuracy": float(multiclass_accuracy(preds, target, num_classes=n, average="micro")),
            "macro_f1": float(multiclass_f1_score(preds, target, num_classes=n, average="macro")),
        }
