"""Every config under conf/ composes against the schema and builds: its data (from the
fixture files in the official layouts, nothing downloaded), its model and tasks, and each
stage's optimizer and scheduler, which then take a step."""

from __future__ import annotations

import math

import pytest
import torch

from mmtrain.build import build_data, build_tasks
from mmtrain.config import check_train_config, instantiate
from mmtrain.data import DataInfo
from mmtrain.data.loader import make_loader
from mmtrain.engine.optimizer import build_optimizer
from mmtrain.models.model import build_model, model_tokenizer
from tests.data_helpers import coco_fixture, mnist_imdb_fixture
from tests.helpers import choices, compose
from tests.pretrained_models import save_tiny_bert
from tests.zoo import TINY_BERT, tiny_open_clip

GROUPS = ["data", "model/image_encoder", "model/text_encoder", "model/fusion", "stages",
          "optimizer", "scheduler", "trainer"]


def _fake_info(cfg) -> DataInfo:
    """Model-building facts for data configs whose files are not on this machine."""
    return DataInfo(image_channels=3, image_size=32, vocab_size=40, pad_id=0,
                    num_classes={"label": 20, "digit": 10, "sentiment": 2},
                    modality_labels={"image": "digit", "text": "sentiment"})


CASES = [f"{g}={o}" for g in GROUPS for o in choices(g)] + \
        [f"+experiment={o}" for o in choices("experiment")]


def test_every_group_has_choices():
    for group in GROUPS:
        assert choices(group), f"conf/{group} has no options"


def _offline(cfg) -> None:
    """Pretrained encoders load a tiny local model instead of the hub's (no network in tests)."""
    if cfg.model.text_encoder._target_.endswith("HFTextEncoder"):
        if not (TINY_BERT / "config.json").is_file():
            save_tiny_bert(TINY_BERT)
        cfg.model.text_encoder.name = str(TINY_BERT)
    if cfg.model.image_encoder._target_.endswith("TimmEncoder"):
        cfg.model.image_encoder.pretrained = False
    for part in (cfg.model.image_encoder, cfg.model.text_encoder):
        if part._target_.endswith(("OpenCLIPImageEncoder", "OpenCLIPTextEncoder")):
            part.name, part.pretrained = f"local-dir:{tiny_open_clip()}", None


def _stage_optimizers(cfg, model, stages, total_steps: int = 10) -> list:
    """Each stage's optimizer and scheduler, built as the trainer builds them."""
    built = []
    for stage in stages:
        optimizer = build_optimizer(cfg.optimizer, model, lr=stage.lr, lr_scale=stage.lr_scale,
                                    layer_decay=stage.layer_decay)
        scheduler = instantiate(cfg.scheduler)(optimizer, total_steps=total_steps)
        assert isinstance(optimizer, torch.optim.Optimizer)
        assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
        built.append((stage, optimizer, scheduler))
    return built


@pytest.mark.parametrize("override", CASES)
def test_config_composes_and_builds(override):
    cfg = compose([override])
    check_train_config(cfg)
    _offline(cfg)
    model = build_model(cfg.model, _fake_info(cfg))
    stages = build_tasks(cfg, model, _fake_info(cfg))
    assert [s.name for s in stages] == list(cfg.stages)
    assert sum(p.numel() for p in model.parameters()) > 0
    for stage, optimizer, scheduler in _stage_optimizers(cfg, model, stages):
        base = stage.lr if stage.lr is not None else cfg.optimizer.lr
        assert max(g["initial_lr"] for g in optimizer.param_groups) == pytest.approx(base), stage.name


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> dict[str, str]:
    """Fixture files of the real datasets, small: what data.root points the packaged data configs at."""
    root = tmp_path_factory.mktemp("data")
    return {"mnist_imdb": str(mnist_imdb_fixture(root / "mnist_imdb", n_train=60, n_test=20, n_reviews=20)),
            "coco_captions": str(coco_fixture(root / "coco", n_train=12, n_val=4))}


# The default recipe and every experiment: each data config alone would not fit the default
# stages (COCO has no class labels), the recipes that use it do.
RECIPES = [[]] + [[f"+experiment={o}"] for o in choices("experiment")]


def test_the_recipes_cover_every_data_config():
    built = {compose(r).data._target_ for r in RECIPES}
    assert built == {compose([f"data={d}"]).data._target_ for d in choices("data")}


@pytest.mark.parametrize("overrides", RECIPES, ids=lambda o: o[0] if o else "default")
def test_recipe_builds_its_data_and_trains_a_step_of_each_stage(overrides, data_roots):
    cfg = compose(overrides)
    check_train_config(cfg)
    _offline(cfg)
    family = cfg.data._target_.rsplit(".", 1)[-1].removeprefix("build_")
    if family in data_roots:
        cfg.data.root = data_roots[family]
    for split, n in (("n_train", 8), ("n_val", 4), ("n_test", 4)):
        cfg.data[split] = n
    if cfg.model.text_encoder._target_.endswith("HFTextEncoder"):  # the tiny BERT reads 64 tokens
        cfg.data.tokenizer_options.max_length = min(64, cfg.data.tokenizer_options.max_length)
    data = build_data(cfg, model_tokenizer(cfg.model, cfg.data))
    assert len(data.train) == 8 and len(data.val) > 0 and len(data.test) > 0
    torch.manual_seed(0)
    model = build_model(cfg.model, data.info)
    stages = build_tasks(cfg, model, data.info)
    batch = next(iter(make_loader(data.train, 2, train=True)))
    for stage, optimizer, scheduler in _stage_optimizers(cfg, model, stages):
        before = [p.detach().clone() for g in optimizer.param_groups for p in g["params"]]
        loss = stage.task.training_step(model, batch)["loss"]
        assert math.isfinite(float(loss.detach())), stage.name
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        after = [p for g in optimizer.param_groups for p in g["params"]]
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), f"{stage.name}: no weight moved"


def test_task_of_a_stage_can_be_swapped_from_the_command_line():
    cfg = compose(["task@stages.finetune.task=contrastive"])
    assert cfg.stages.finetune.task._target_.endswith("ContrastiveTask")


def test_stage_epochs_override():
    cfg = compose(["stages.finetune.epochs=7"])
    assert cfg.stages.finetune.epochs == 7


@pytest.mark.parametrize("override, needle", [
    (["+model.fusion.dimm=3"], "has no option 'dimm'"),
    (["trainer.precision=fp8"], "trainer.precision"),
    (["stages.finetune.epochs=-1"], "epochs"),
])
def test_bad_values_fail_the_start_checks(override, needle):
    from mmtrain.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        check_train_config(compose(override))


def test_misspelled_key_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="trainer.epochz"):
        compose(["trainer.epochz=3"])


@pytest.mark.parametrize("overrides, mode", [
    ([], "max"),                                                   # the task's accuracy
    (["stages.finetune.monitor=loss"], "min"),                     # a loss: lower is better
    (["stages.finetune.monitor=loss", "stages.finetune.monitor_mode=max"], "max"),
])
def test_best_checkpoint_direction_follows_the_monitor(overrides, mode):
    cfg = compose(overrides)
    model = build_model(cfg.model, _fake_info(cfg))
    finetune = build_tasks(cfg, model, _fake_info(cfg))[-1]
    assert finetune.monitor_mode == mode


@pytest.mark.parametrize("metric, mode", [("loss", "min"), ("text_loss", "min"), ("accuracy", "max"),
                                          ("loss_scale", "max")])
def test_training_and_the_report_rank_a_monitored_metric_the_same_way(metric, mode):
    from mmtrain.runs import _mode_of

    cfg = compose([f"stages.finetune.monitor={metric}"])
    finetune = build_tasks(cfg, build_model(cfg.model, _fake_info(cfg)), _fake_info(cfg))[-1]
    assert finetune.monitor_mode == mode
    assert _mode_of(f"finetune/best/{metric}", []) == mode  # a run whose metrics.json has no mode


def test_unknown_monitor_mode_is_refused():
    from mmtrain.errors import ConfigError

    cfg = compose(["stages.finetune.monitor_mode=lowest"])
    with pytest.raises(ConfigError, match="monitor_mode='lowest': choose min or max"):
        build_tasks(cfg, build_model(cfg.model, _fake_info(cfg)), _fake_info(cfg))
