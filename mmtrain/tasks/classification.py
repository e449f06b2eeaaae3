"""Classification from the fused image + text vector."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from mmtrain.data import DataInfo
from mmtrain.errors import ConfigError
from mmtrain.metrics import accuracy, confusion_matrix, macro_f1
from mmtrain.models.model import MODALITIES, drop_modalities


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


class ClassificationTask:
    """Cross-entropy on `label` from the fused features; accuracy, macro-F1, a confusion matrix.

With `model/fusion=late` each modality gets its own head and the logits are averaged.

    `modality_dropout=p` blanks one modality of a training sample with probability p, so the
    model still works when an input is missing (see `mmtrain eval ablate=true`).
    """

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
        self.per_modality = False
        self.class_names: list[str] = []
        self.confusion: torch.Tensor | None = None
        """C x C counts (rows: true class) from the latest `evaluate`."""

    def attach(self, model: Any, info: DataInfo) -> None:
        if not 0.0 <= self.modality_dropout <= 1.0:
            raise ConfigError(f"{self.name} task: modality_dropout={self.modality_dropout} must be a "
                              f"probability in [0, 1]")
        if self.label not in info.num_classes:
            raise ConfigError(f"task label {self.label!r} is not in this dataset "
                              f"(it has: {', '.join(info.num_classes)})")
        self.num_classes = info.num_classes[self.label]
        self.class_names = list(info.class_names.get(self.label, [])) or \
            [str(i) for i in range(self.num_classes)]
        # A late fusion keeps the modalities apart: one head on each, logits averaged.
        self.per_modality = hasattr(model.fusion, "per_modality")
        if self.per_modality:
            model.heads[self.name] = nn.ModuleDict({m: self._head(model.fusion.out_dim) for m in MODALITIES})
        else:
            model.heads[self.name] = self._head(model.fusion.out_dim)

    def _head(self, dim: int) -> nn.Module:
        if not self.hidden_dim:
            return nn.Linear(dim, self.num_classes)
        return nn.Sequential(nn.Linear(dim, self.hidden_dim), nn.GELU(), nn.Dropout(self.dropout),
                             nn.Linear(self.hidden_dim, self.num_classes))

    def logits(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        head = model.heads[self.name]
        if not self.per_modality:
            return head(model(batch)["fused"])
        image = model.encode_image(batch["image"]).pooled
        text = model.encode_text(batch["text"], batch["text_lengths"]).pooled
        image_part, text_part = model.fusion.per_modality(image, text)
        return 0.5 * (head["image"](image_part) + head["text"](text_part))

    def training_step(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.logits(model, drop_modalities(batch, self.modality_dropout, model.image_mean))
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
        self.confusion = confusion_matrix(preds, target, self.num_classes).cpu()
        return {
            "loss": float(F.cross_entropy(logits, target)),
            "accuracy": accuracy(self.confusion),
            "macro_f1": macro_f1(self.confusion),
        }

    def write_artifacts(self, out_dir: Path) -> list[Path]:
        """The latest evaluation's confusion matrix as `<name>_confusion.png` in `out_dir`."""
        if self.confusion is None:
            return []
        path = Path(out_dir) / f"{self.name}_confusion.png"
        plot_confusion(self.confusion, self.class_names, path, title=f"{self.name}: {self.label}")
        return [path]
