"""The task contract (mmtrain.tasks.Task): checked once when the stages are built."""

from __future__ import annotations

import pytest

from mmtrain import data as data_lib
from mmtrain.errors import ConfigError
from mmtrain.models.model import build_model
from mmtrain.tasks import Task
from mmtrain.build import build_tasks
from tests.helpers import make_config


def _build(*overrides: str) -> list:
    cfg = make_config(*overrides)
    bundle = data_lib.build(cfg.data)
    return build_tasks(cfg, build_model(cfg.model, bundle.info), bundle.info)


def test_a_stage_whose_task_is_not_a_task_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^stages\.finetune\.task: argparse\.Namespace is not a task: "
                                          r"a task subclasses mmtrain\.tasks\.Task$"):
        _build("stages.finetune.task._target_=argparse.Namespace")


def test_a_task_missing_a_required_method_cannot_be_made():
    class NoEvaluate(Task):
        name, monitor = "x", "loss"

        def attach(self, model, info):
            pass

        def training_step(self, model, batch):
            return {}

    with pytest.raises(TypeError, match="evaluate"):
        NoEvaluate()


def test_only_the_contrastive_task_declares_the_gradient_cache():
    stages = _build()
    assert [(type(s.task).__name__, s.task.supports_gradient_cache) for s in stages] == [
        ("ContrastiveTask", True), ("ClassificationTask", False)]
    with pytest.raises(NotImplementedError, match="ClassificationTask has no gradient cache"):
        stages[1].task.cached_backward(None, [], None, None)

