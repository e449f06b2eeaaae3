"""Every config under conf/ composes against the schema and builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtrain.config import check_train_config
from mmtrain.data import DataInfo
from mmtrain.models.model import build_model
from mmtrain.build import build_tasks
from mmtrain.config import config_dir
from tests.conftest import compose_train
from tests.pretrained_models import save_tiny_bert
from tests.zoo import TINY_BERT

CONF = Path(config_dir())
GROUPS = ["data", "model/image_encoder", "model/text_encoder", "model/fusion", "stages",
          "optimizer", "scheduler", "trainer"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _fake_info(cfg) -> DataInfo:
    """Model-building facts for data configs whose files are not on this machine."""
    return DataInfo(image_channels=3, image_size=32, vocab_size=40, pad_id=0,
                    num_classes={"label": 20, "digit": 10, "sentiment": 2},
                    modality_labels={"image": "digit", "text": "sentiment"})


CASES = [f"{g}={o}" for g in GROUPS for o in _options(g)] + \
        [f"+experiment={o}" for o in _options("experiment")]


def test_every_group_has_options():
    for group in GROUPS:
        assert _options(group), f"conf/{group} has no options"


def _offline(cfg) -> None:
    """Pretrained encoders load a tiny local model instead of the hub's (no network in tests)."""
    if cfg.model.text_encoder._target_.endswith("HFTextEncoder"):
        if not (TINY_BERT / "config.json").is_file():
            save_tiny_bert(TINY_BERT)
        cfg.model.text_encoder.name = str(TINY_BERT)
    if cfg.model.image_encoder._target_.endswith("TimmEncoder"):
        cfg.model.image_encoder.pretrained = False


@pytest.mark.parametrize("override", CASES)
def test_config_composes_and_builds(override):
    cfg = compose_train([override])
    check_train_config(cfg)
    _offline(cfg)
    model = build_model(cfg.model, _fake_info(cfg))
    stages = build_tasks(cfg, model, _fake_info(cfg))
    assert [s.name for s in stages] == list(cfg.stages)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_task_of_a_stage_can_be_swapped_from_the_command_line():
    cfg = compose_train(["task@stages.finetune.task=contrastive"])
    assert cfg.stages.finetune.task._target_.endswith("ContrastiveTask")


def test_stage_epochs_override():
    cfg = compose_train(["stages.finetune.epochs=7"])
    assert cfg.stages.finetune.epochs == 7


@pytest.mark.parametrize("override, needle", [
    (["+model.fusion.dimm=3"], "has no option 'dimm'"),
    (["trainer.precision=fp8"], "trainer.precision"),
    (["stages.finetune.epochs=-1"], "epochs"),
])
def test_bad_values_fail_the_start_checks(override, needle):
    from mmtrain.errors import ConfigError

    with pytest.raises(ConfigError, match=needle):
        check_train_config(compose_train(override))


def test_misspelled_key_fails_at_compose_time():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="trainer.epochz"):
        compose_train(["trainer.epochz=3"])


@pytest.mark.parametrize("overrides, mode", [
    ([], "max"),                                                   # the task's accuracy
    (["stages.finetune.monitor=loss"], "min"),                     # a loss: lower is better
    (["stages.finetune.monitor=loss", "stages.finetune.monitor_mode=max"], "max"),
])
def test_best_checkpoint_direction_follows_the_monitor(overrides, mode):
    cfg = compose_train(overrides)
    model = build_model(cfg.model, _fake_info(cfg))
    finetune = build_tasks(cfg, model, _fake_info(cfg))[-1]
    assert finetune.monitor_mode == mode


def test_unknown_monitor_mode_is_refused():
    from mmtrain.errors import ConfigError

    cfg = compose_train(["stages.finetune.monitor_mode=lowest"])
    with pytest.raises(ConfigError, match="monitor_mode='lowest': choose min or max"):
        build_tasks(cfg, build_model(cfg.model, _fake_info(cfg)), _fake_info(cfg))
