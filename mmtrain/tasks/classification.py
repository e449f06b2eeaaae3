"""Classification from the fused image + text vector."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mmtrain.data import DataInfo
from mmtrain.errors import ConfigError
from mmtrain.metrics import accuracy, confusion_matrix, macro_f1
from mmtrain.models.model import MultimodalModel, drop_modalities
from mmtrain.tasks import Batch, Evaluation, Task


def plot_confusion(confusion: torch.Tensor, class_names: list[str], path: Path, title: str = "") -> None:
    """A C x C count matrix (rows: true class) as a PNG, coloured by each row's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = confusion.float()
    share = counts / counts.sum(1, keepdim=True).clamp(min=1)
    n = counts.shape[0]
    size = min(20.0, 2.0 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), class_names, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:  # beyond that the numbers are unreadable; the colours still show the pattern
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class ConfusionMatrix:
    """An evaluation's C x C counts (rows: true class), written as `<task>_confusion.png`."""

    counts: torch.Tensor
    class_names: list[str]
    task: str
    title: str = ""

    def write(self, out_dir: Path) -> Path:
        path = out_dir / f"{self.task}_confusion.png"
        plot_confusion(self.counts, self.class_names, path, title=self.title)
        return path


class ClassificationTask(Task):
    """Cross-entropy on `label` from the fused features; accuracy, macro-F1, a confusion matrix.

    The head sits on the model's fused features (`MultimodalModel.add_fused_head`): with
    `model/fusion=late` that is one head per modality, their logits averaged.

    `modality_dropout=p` blanks one modality of a training sample with probability p, so the
    model still works when an input is missing (see `mmtrain eval ablate=true`).
    """

    kind = "classification"
    monitor = "accuracy"
    monitor_mode = "max"

    def __init__(self, label: str = "label", hidden_dim: int = 256, dropout: float = 0.1,
                 label_smoothing: float = 0.0, modality_dropout: float = 0.0,
                 name: str = "classification") -> None:
        self.label = label
        self.hidden_dim = hidden_dim
        self.dropout = dropout
        self.label_smoothing = label_smoothing
        self.modality_dropout = modality_dropout
        self.name = name
        self.num_classes = 0
        self.class_names: list[str] = []

    def attach(self, model: MultimodalModel, info: DataInfo) -> None:
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ConfigError(f"{self.name} task: modality_dropout={self.modality_dropout} must be a "
                              f"probability in [0, 1]")
        if self.label not in info.num_classes:
            raise ConfigError(f"task label {self.label!r} is not in this dataset "
                              f"(it has: {', '.join(info.num_classes)})")
        self.num_classes = info.num_classes[self.label]
        self.class_names = list(info.class_names.get(self.label, [])) or \
            [str(i) for i in range(self.num_classes)]
        model.add_fused_head(self.name, self._head)

    def _head(self, dim: int) -> nn.Module:
        if not self.hidden_dim:
            return nn.Linear(dim, self.num_classes)
        return nn.Sequential(nn.Linear(dim, self.hidden_dim), nn.GELU(), nn.Dropout(self.dropout),
                             nn.Linear(self.hidden_dim, self.num_classes))

    def logits(self, model: MultimodalModel, batch: Batch) -> torch.Tensor:
        """B x num_classes (also predict and the exported classifier graph)."""
        return model.fused_head(self.name, batch)

    def training_step(self, model: MultimodalModel, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.logits(model, drop_modalities(batch, self.modality_dropout, model.image_mean))
        target = batch[self.label]
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)
        return {"loss": loss, "accuracy": (logits.argmax(-1) == target).float().mean()}

    @torch.no_grad()
    def evaluate(self, model: MultimodalModel, batches: Iterable[Batch]) -> Evaluation:
        all_logits, targets = [], []
        for batch in batches:
            all_logits.append(self.logits(model, batch).float())
            targets.append(batch[self.label])
        logits, target = torch.cat(all_logits), torch.cat(targets)
        preds = logits.argmax(-1)
        confusion = confusion_matrix(preds, target, self.num_classes).cpu()
        metrics = {
            "loss": float(F.cross_entropy(logits, target)),
            "accuracy": accuracy(confusion),
            "macro_f1": macro_f1(confusion),
        }
        return Evaluation(metrics, [ConfusionMatrix(confusion, self.class_names, self.name,
                                                    title=f"{self.name}: {self.label}")])
