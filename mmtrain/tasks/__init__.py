"""Objectives. A task owns its loss, its metrics and the heads it adds to the model.

A task is a plain object built from its config (`conf/task/<name>.yaml`):
- `attach(model, info)` adds its head(s) under `model.heads[task.name]`, so they are saved
  with the model;
- `training_step(model, batch)` returns a dict with a scalar `loss` (and other scalars to log);
- `evaluate(model, batches)` runs over a whole split and returns metrics as floats;
- `monitor` / `monitor_mode` name the metric that picks best.pt;
- optionally `write_artifacts(out_dir) -> list[Path]` writes files about the latest `evaluate`
  (a confusion matrix, example captions): `mmtrain train` calls it after the test split
  (into `<run dir>/artifacts/`), `mmtrain eval` after its split;
- optionally `input_modalities` (default image and text): what `mmtrain eval ablate=true`
  blanks in turn (captioning's text is its target, so it lists only the image).
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import torch

from mmtrain.data import DataInfo


class Task(Protocol):
    name: str
    monitor: str
    monitor_mode: str

    def attach(self, model: Any, info: DataInfo) -> None: ...

    def training_step(self, model: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]: ...
