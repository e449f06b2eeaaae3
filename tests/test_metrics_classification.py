"""Accuracy, macro-F1 and the confusion matrix equal scikit-learn's, edge cases included."""

from __future__ import annotations

import pytest
import torch

from mmtrain.metrics import accuracy, confusion_matrix, macro_f1

sklearn_metrics = pytest.importorskip("sklearn.metrics")

CASES = {
    "random": (torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(0)),
               torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(1)), 5),
    "classes absent from targets and predictions": (torch.tensor([0, 2, 2, 5, 0]), torch.tensor([0, 2, 5, 5, 2]), 8),
    "a class predicted but never true": (torch.tensor([1, 1, 3, 3]), torch.tensor([1, 1, 1, 0]), 4),
    "all one class, all right": (torch.full((7,), 3), torch.full((7,), 3), 4),
    "all one class, all wrong": (torch.full((7,), 1), torch.full((7,), 3), 4),
    "one sample": (torch.tensor([2]), torch.tensor([2]), 3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_classification_metrics_equal_scikit_learn(name):
    preds, target, n = CASES[name]
    confusion = confusion_matrix(preds, target, n)
    assert confusion.tolist() == sklearn_metrics.confusion_matrix(target, preds, labels=list(range(n))).tolist()
    assert accuracy(confusion) == pytest.approx(sklearn_metrics.accuracy_score(target, preds), abs=1e-12)
    assert macro_f1(confusion) == pytest.approx(
        sklearn_metrics.f1_score(target, preds, average="macro", zero_division=0), abs=1e-12)


def test_first_validation_imports_neither_torchmetrics_nor_scipy_nor_matplotlib():
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from mmtrain.tasks.classification import ClassificationTask\n"
            "from mmtrain.tasks.multitask import MultitaskTask\n"
            "task = ClassificationTask(); task.num_classes = 3; task.name = 'c'; task.label = 'label'\n"
            "class M:\n"
            "    def fused_head(self, name, batch): return batch['x']\n"
            "print(task.evaluate(M(), [{'x': torch.randn(8, 3), 'label': torch.randint(0, 3, (8,))}]))\n"
            "print(sorted(m for m in ('torchmetrics', 'scipy', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
