"""Objectives. A task owns its loss, its metrics and the heads it adds to the model.

A task is built from its config (`conf/task/<name>.yaml`) and subclasses `Task`, which
declares the whole contract the engine and the entry points rely on:

required
- `name` (the head's key in `model.heads`, and the prefix of its artifact files), `monitor`
  (the validation metric that picks best.pt);
- `attach(model, info)` adds its head(s) under `model.heads[task.name]`, so they are saved
  with the model;
- `training_step(model, batch)` returns a dict with a scalar `loss` (and other scalars to log);
- `evaluate(model, batches)` runs over a whole split and returns an `Evaluation`: metrics as
  floats, and the artifacts that go with them (a confusion matrix, example captions), which
  `mmtrain train` writes after the test split (into `<run dir>/artifacts/`) and `mmtrain eval`
  after its split.

optional, with defaults
- `monitor_mode` ("max"): whether a larger `monitor` is better;
- `input_modalities` (image and text): what `mmtrain eval ablate=true` blanks in turn
  (captioning's text is its target, so it lists only the image);
- `supports_gradient_cache` (False) with `cached_backward(...)`: the one hook through which
  the trainer runs `trainer.contrastive_accumulation=cache` (the contrastive task has it).
- `kind` (""): what predict, embed, export and zero-shot eval can do with the task's
  checkpoints (classification, contrastive, captioning, multitask).

`build_tasks` checks once that each configured task is a `Task`; nothing looks abilities up
by name afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Iterable, Protocol

import torch

from mmtrain.data import DataInfo
from mmtrain.errors import ConfigError
from mmtrain.models.model import MODALITIES, MultimodalModel

Batch = dict[str, torch.Tensor]
"""One collated batch on the device: `image` (uint8 B x C x H x W), `text` (B x T ids),
`text_lengths` (B), the dataset's labels and, for caption sets, `image_id`."""


class Artifact(Protocol):
    """A file about one evaluation, held as data until a caller decides where it goes."""

    def write(self, out_dir: Path) -> Path:
        """Write the file into `out_dir` (created if missing); -> its path."""
        ...


@dataclass
class Evaluation:
    """What `Task.evaluate` returns: the split's metrics and the artifacts that go with them."""

    metrics: dict[str, float]
    artifacts: list[Artifact] = field(default_factory=list)

    def write_artifacts(self, out_dir: Path) -> list[Path]:
        return [artifact.write(Path(out_dir)) for artifact in self.artifacts]


class Task(ABC):
    """The contract between an objective and the rest of mmtrain (see the module docstring)."""

    name: str
    monitor: str
    monitor_mode: str = "max"
    input_modalities: tuple[str, ...] = MODALITIES
    supports_gradient_cache: ClassVar[bool] = False
    """True when `cached_backward` is implemented."""
    kind: ClassVar[str] = ""
    """What predict, embed, export and zero-shot eval can do with this task's checkpoints:
    classification, contrastive, captioning or multitask; "" = none of them (a task of your
    own is named by its class then)."""

    @abstractmethod
    def attach(self, model: MultimodalModel, info: DataInfo) -> None:
        """Check the task's settings against the data and put its head(s) in `model.heads`."""

    @abstractmethod
    def training_step(self, model: MultimodalModel, batch: Batch) -> dict[str, torch.Tensor]:
        """-> {"loss": scalar to back-propagate, ...other scalars to log}."""

    @abstractmethod
    def evaluate(self, model: MultimodalModel, batches: Iterable[Batch]) -> Evaluation:
        """Metrics (and artifacts) over a whole split; called under no_grad and autocast."""

    def cached_backward(self, model: MultimodalModel, batches: list[Batch],
                        autocast: Callable[[], ContextManager],
                        scale_loss: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Accumulate into `.grad` the gradient of one loss over all micro-`batches` together
        (what `trainer.contrastive_accumulation=cache` asks for); -> detached scalars to log.
        `scale_loss` is the GradScaler's `scale`. Only for tasks with `supports_gradient_cache`."""
        raise NotImplementedError(f"{type(self).__name__} has no gradient cache")


def check_task(obj: object, key: str) -> Task:
    """`obj` (what the config at `key` built) as a `Task`, or one line saying it is not one."""
    if not isinstance(obj, Task):
        raise ConfigError(f"{key}: {type(obj).__module__}.{type(obj).__qualname__} is not a task: "
                          f"a task subclasses mmtrain.tasks.Task")
    return obj
