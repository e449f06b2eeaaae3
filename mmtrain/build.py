"""Config -> data, model and tasks: the one place that builds them.

`mmtrain train` builds a new run from its config; `mmtrain eval` and the inference commands
(through mmtrain.inference) rebuild a checkpoint's model from the config it carries;
`mmtrain baseline`, the scripts and the tests build the same way, so a stage, a monitor or
a model never differs between the command that trained it and the one that reads it.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mmtrain.config import instantiate
from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.metrics import lower_is_better

log = logging.getLogger("mmtrain")


def seed_everything(seed: int, deterministic: bool) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def _command_line_keys() -> set[str]:
    """Keys set on the command line of this Hydra job (none outside one, e.g. the Python API)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}


def follow_pretrained_preprocessing(cfg: DictConfig) -> None:
    """data.image_size and data.interpolation become a pretrained image encoder's input size and
    resize filter, unless the command line sets them: transfer works best on images prepared
    as the weights' were. A data family without the key (mnist_imdb's 28 px digits) keeps its own."""
    from mmtrain.data.coco import INTERPOLATIONS
    from mmtrain.models.model import model_data_config

    set_here = _command_line_keys()
    for key, value in model_data_config(cfg.model).items():
        if key not in cfg.data or cfg.data[key] == value:
            continue
        if key == "interpolation" and value not in INTERPOLATIONS:
            log.info("data.interpolation=%s kept: the image encoder was pretrained on %s-resized images, "
                     "a filter mmtrain does not offer", cfg.data.interpolation, value)
        elif f"data.{key}" in set_here:
            log.info("data.%s=%s as set, although the image encoder was pretrained with %s",
                     key, cfg.data[key], value)
        else:
            log.info("data.%s: %s -> %s, the image encoder's pretraining preprocessing (set data.%s on "
                     "the command line to keep another)", key, cfg.data[key], value, key)
            cfg.data[key] = value


def build_data(cfg: DictConfig, tokenizer: Any = None) -> Any:
    """The run's DataBundle. Under torchrun rank 0 downloads, extracts and fills the caches
    first; the other ranks then read them."""
    from mmtrain import data as data_lib
    from mmtrain import distributed

    first = distributed.rank() == 0
    if not first:
        distributed.barrier()
    data = data_lib.build(cfg.data, tokenizer=tokenizer)
    if first:
        distributed.barrier()
    return data


def monitor_mode(stage: str, stage_cfg: Any, task: Any, monitor: str) -> str:
    """A monitor named by the user ranks low-is-better when it is a loss, unless told otherwise."""
    mode = stage_cfg.monitor_mode
    if mode is None:
        mode = "min" if stage_cfg.monitor and lower_is_better(monitor) else task.monitor_mode
    if mode not in ("min", "max"):
        raise ConfigError(f"stages.{stage}.monitor_mode={mode!r}: choose min or max")
    return mode


def build_tasks(cfg: DictConfig, model: Any, info: Any) -> list:
    """Instantiate each stage's task once and attach its heads, in stage order."""
    from mmtrain.engine.trainer import Stage
    from mmtrain.tasks import check_task

    stages, by_name = [], {}
    for name, stage_cfg in cfg.stages.items():
        head = stage_cfg.task.get("name")
        # It names a module and the task's artifact files: a '/' or '..' would write elsewhere.
        if head is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", str(head)):
            raise ConfigError(f"stages.{name}.task.name={head!r}: use letters, digits, _ and -")
        task = check_task(instantiate(stage_cfg.task, _convert_="all"), f"stages.{name}.task")
        if task.name in by_name:
            earlier_cfg, earlier_task = by_name[task.name]
            if earlier_cfg != stage_cfg.task:
                raise ConfigError(f"stages.{name}.task uses head name '{task.name}' like an earlier stage "
                                  f"with other settings: set stages.{name}.task.name to a new name")
            task = earlier_task
        else:
            task.attach(model, info)
            by_name[task.name] = (stage_cfg.task, task)
        monitor = stage_cfg.monitor or task.monitor
        cap = cfg.trainer.get("max_epochs")
        epochs = stage_cfg.epochs if cap is None else min(stage_cfg.epochs, cap)
        stages.append(Stage(name=str(name), task=task, epochs=epochs,
                            freeze=list(stage_cfg.freeze), lr=stage_cfg.lr,
                            lr_scale=dict(stage_cfg.lr_scale),
                            monitor=monitor, monitor_mode=monitor_mode(name, stage_cfg, task, monitor),
                            patience=stage_cfg.get("patience"), min_delta=stage_cfg.get("min_delta", 0.0),
                            layer_decay=stage_cfg.layer_decay))
    return stages


def build_for_weights(cfg: DictConfig, info: Any, state: Any, path: Any) -> tuple[Any, dict[str, Any]]:
    """Model and stages (by name) a checkpoint's config describes, checked against its weights
    `state` first on the meta device: a model may be no bigger than the weights the file
    holds, so a config describing a huge layer is refused before it is allocated."""
    import torch

    from mmtrain.engine.checkpoint import check_model_state
    from mmtrain.models.model import build_model, stored_architecture

    architecture = stored_architecture(cfg)
    with torch.device("meta"):
        shell = build_model(cfg.model, info, architecture=architecture)
        build_tasks(cfg, shell, info)
    check_model_state(shell, state, path)
    model = build_model(cfg.model, info, architecture=architecture)
    return model, {s.name: s for s in build_tasks(cfg, model, info)}


def drop_pretrained(cfg: DictConfig) -> None:
    """A checkpoint's weights replace any pretrained ones: its model is built without reading
    (or fetching) those."""
    for part in cfg.model.values():
        if isinstance(part, DictConfig) and part.get("pretrained"):
            part.pretrained = None


def build_trained(cfg: DictConfig, info: Any, ckpt: dict[str, Any], path: Path) -> tuple[Any, Any]:
    """(model with the checkpoint's weights, the task of the stage that saved it), from a
    checkpoint `ckpt` and its trust-checked config `cfg`; pretrained weights its encoders name
    are not read (`drop_pretrained`)."""
    from mmtrain.engine.checkpoint import load_model_state

    drop_pretrained(cfg)
    model, stages = build_for_weights(cfg, info, ckpt["model"], path)
    if ckpt["stage"] not in stages:
        raise CheckpointError(f"{path} was saved in stage {ckpt['stage']!r}, which its config lacks")
    load_model_state(model, ckpt["model"], path)
    return model, stages[ckpt["stage"]].task


@dataclass
class BuiltRun:
    """What `mmtrain train` trains: its data, model and stages, and what init_from brought."""

    data: Any
    model: Any
    stages: list
    transferred: dict[str, Any] | None
    """{checkpoint, loaded: [module], skipped: {module: why}} when init_from loaded weights."""


def build_run(cfg: DictConfig, resume: dict[str, Any] | None, resume_path: Path | None) -> BuiltRun:
    """Data, model and stages of a training run; a resumed one is rebuilt as its checkpoint
    was saved (tokenizer, encoder architectures), a new one may take weights from init_from."""
    from mmtrain.engine.checkpoint import checkpoint_tokenizer, load_checkpoint
    from mmtrain.engine.transfer import find_init_checkpoint, load_modules
    from mmtrain.models.model import build_model, model_tokenizer

    init_path = find_init_checkpoint(cfg.init_from) if cfg.init_from and resume is None else None
    init = load_checkpoint(init_path) if init_path else None
    init_modules = list(cfg.init_modules) if cfg.init_modules is not None else None
    # A resumed run keeps its checkpoint's tokenizer; a pretrained text encoder brings its own;
    # a text encoder taken over by init_from keeps the vocabulary its embeddings were trained on.
    tokenizer = checkpoint_tokenizer(resume, resume_path) if resume else model_tokenizer(cfg.model, cfg.data)
    if tokenizer is None and init is not None and "text_encoder" in (init_modules or ["text_encoder"]):
        tokenizer = checkpoint_tokenizer(init, init_path)
    data = build_data(cfg, tokenizer)
    model = build_model(cfg.model, data.info,
                        architecture=resume["config"].get("architecture") if resume else None)
    stages = build_tasks(cfg, model, data.info)
    transferred = None
    if init is not None:
        loaded, skipped = load_modules(model, init["model"], init_modules, init_path)
        transferred = {"checkpoint": str(init_path), "loaded": loaded, "skipped": skipped}
        log.info("init_from %s: loaded %s%s", init_path, ", ".join(loaded),
                 "".join(f"; skipped {n} ({why})" for n, why in skipped.items()))
    return BuiltRun(data, model, stages, transferred)
