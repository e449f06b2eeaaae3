"""Classification: the confusion matrix (values and PNG) and modality dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmtrain.data import DataInfo
from mmtrain.errors import ConfigError
from mmtrain.models.model import MultimodalModel, blank_modalities, drop_modalities
from mmtrain.tasks.classification import ClassificationTask


class LogitModel(MultimodalModel):
    """A stand-in whose fused output is the batch's `logits` and whose head is the identity."""

    def __init__(self) -> None:
        fusion = nn.Identity()
        fusion.out_dim = 3
        super().__init__(nn.Identity(), nn.Identity(), fusion)

    def forward(self, batch):
        return {"fused": batch["logits"]}


def test_confusion_matrix_counts_and_png(tmp_path):
    task = ClassificationTask(hidden_dim=0)
    model = LogitModel()
    task.attach(model, DataInfo(3, 8, 10, 0, {"label": 3}, class_names={"label": ["cat", "dog", "eel"]}))
    model.heads["classification"] = nn.Identity()
    target = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    batch = {"logits": nn.functional.one_hot(preds, 3).float(), "label": target}
    evaluation = task.evaluate(model, [batch])
    assert evaluation.metrics["accuracy"] == pytest.approx(5 / 7)
    (confusion,) = evaluation.artifacts
    assert confusion.counts.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    (path,) = evaluation.write_artifacts(tmp_path)
    assert path.name == "classification_confusion.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 2000


def _batch(n: int = 4000) -> dict[str, torch.Tensor]:
    return {"image": torch.randint(0, 255, (n, 1, 2, 2), dtype=torch.uint8),
            "text": torch.randint(4, 50, (n, 6)), "text_lengths": torch.full((n,), 6),
            "label": torch.zeros(n, dtype=torch.long)}


def test_modality_dropout_blanks_one_modality_of_about_p_of_the_samples():
    torch.manual_seed(0)
    batch = _batch()
    mean = torch.tensor([0.25])  # uint8 64 after scaling: what the model normalizes to zero
    out = drop_modalities(batch, 0.3, mean)
    blank_image = (out["image"] == 64).flatten(1).all(1)
    blank_text = out["text_lengths"] == 1
    assert not (blank_image & blank_text).any(), "never both modalities of one sample"
    assert (blank_image | blank_text).float().mean() == pytest.approx(0.3, abs=0.03)
    assert blank_image.float().mean() == pytest.approx(0.15, abs=0.03)
    # A dropped modality looks exactly like `mmtrain eval ablate=true`'s blank one.
    reference = blank_modalities(batch, ["text"], mean)
    row = int(blank_text.nonzero()[0])
    assert out["text"][row, :1].tolist() == reference["text"][row].tolist()
    assert out["text"][row, 1:].eq(0).all()
    kept = ~(blank_image | blank_text)
    assert torch.equal(out["image"][kept], batch["image"][kept])
    assert torch.equal(out["text"][kept], batch["text"][kept])
    assert drop_modalities(batch, 0.0, mean) is batch


def test_modality_dropout_must_be_a_probability():
    model = LogitModel()
    with pytest.raises(ConfigError, match="modality_dropout=1.5 must be a probability"):
        ClassificationTask(modality_dropout=1.5).attach(model, DataInfo(3, 8, 10, 0, {"label": 3}))
