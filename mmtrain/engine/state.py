"""A run's state, owned in one place (torchtitan's habit): where the run is, what it has
found so far, and the objects whose state an exact resume restores.

`TrainState.state_dict()` is everything of a checkpoint that changes while a run trains;
`TrainState.load_state_dict()` restores all of it. The trainer builds the objects (model,
optimizer, schedule, scaler) and adds what is constant for a run (format, config,
tokenizer, data description). The keys are the checkpoint format, which eval, predict,
export and older checkpoints rely on:

- best.pt and last.pt: model, stage, metrics, best, results
- last.pt only (an exact resume): position, optimizer, scheduler, scaler, rng
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from mmtrain.engine.checkpoint import load_model_state, rng_state, set_rng_state


@dataclass
class Position:
    """Where a run is: the next optimizer step to take is `step` of `epoch` of stage `stage_index`."""

    stage_index: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    """Optimizer steps taken so far, over all stages."""


@dataclass
class Best:
    """A stage's ranking of its checkpoints by the monitor, and Lightning's EarlyStopping
    count on it; last.pt holds both, so a resumed run ranks and counts on exactly."""

    metric: str
    mode: str
    value: float | None = None
    epoch: int | None = None
    top: list[list] = field(default_factory=list)
    """[[value, file name], ...] best first: the files `CheckpointSaver` keeps."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The validation metrics of the best epoch."""
    wait: int = 0
    """Validations since the last improvement by more than min_delta."""
    reference: float | None = None
    """The value an improvement must beat by more than min_delta."""
    stopped_epoch: int | None = None
    """The epoch early stopping ended the stage at."""

    def early_stop(self, value: float, mode: str, patience: int | None, min_delta: float) -> bool:
        """Count this validation's `value`; -> whether `patience` validations in a row have
        not beaten the last improving one by more than `min_delta` (never with no patience)."""
        if patience is None:
            return False
        sign = 1.0 if mode == "max" else -1.0
        if self.reference is None or sign * (value - self.reference) > min_delta:
            self.reference, self.wait = value, 0
            return False
        self.wait += 1
        return self.wait >= patience

    def state_dict(self) -> dict[str, Any]:
        state = asdict(self)
        if self.stopped_epoch is None:  # only a stage that stopped early says so
            del state["stopped_epoch"]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Checkpoints written before early stopping existed have no wait/reference.
        fresh = Best(self.metric, self.mode)
        for f in fields(self):
            setattr(self, f.name, state.get(f.name, getattr(fresh, f.name)))

    def public(self) -> dict[str, Any]:
        """What metrics.json says of the best epoch (the early-stopping count is internal)."""
        return {k: v for k, v in self.state_dict().items() if k not in ("wait", "reference")}


@dataclass
class StageState:
    """The stage being trained: its optimizer, schedule and scaler, built by the trainer when
    the stage starts, and its record so far."""

    name: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    best: Best
    metrics: dict[str, float] = field(default_factory=dict)
    """The last validation's metrics."""
    nonfinite: int = 0
    """Steps skipped in a row for a non-finite gradient; not saved, a resume counts from 0."""


@dataclass
class TrainState:
    """The whole run: the model's weights, where the run is, the finished stages' results,
    and the stage being trained."""

    model: torch.nn.Module
    position: Position = field(default_factory=Position)
    results: dict[str, dict] = field(default_factory=dict)
    """Each finished stage's result, as metrics.json lists it."""
    stage: StageState | None = None

    def state_dict(self, resumable: bool = True) -> dict[str, Any]:
        """The checkpoint's run state; `resumable=False` leaves out what only a resume needs (best.pt)."""
        assert self.stage is not None, "a checkpoint is written while a stage runs"
        state = {
            "model": self.model.state_dict(),
            "stage": self.stage.name,
            "metrics": self.stage.metrics,
            "best": self.stage.best.state_dict(),
            "results": self.results,
        }
        if resumable:
            state.update(
                position=asdict(self.position),
                optimizer=self.stage.optimizer.state_dict(),
                scheduler=self.stage.scheduler.state_dict(),
                scaler=self.stage.scaler.state_dict(),
                rng=rng_state(),
            )
        return state

    def load_state_dict(self, state: dict[str, Any], *, best_files: bool = True) -> None:
        """Restore a last.pt's run state; `self.stage` must be built for the stage it was
        saved in. `best_files=False`: the ranked best checkpoints it names are not in this
        run dir (a lone last.pt resumed elsewhere), so the stage ranks afresh."""
        assert self.stage is not None, "build the stage the checkpoint was saved in first"
        load_model_state(self.model, state["model"], "resume")
        self.position = Position(**state["position"])
        self.results = dict(state.get("results", {}))
        self.stage.optimizer.load_state_dict(state["optimizer"])
        self.stage.scheduler.load_state_dict(state["scheduler"])
        self.stage.scaler.load_state_dict(state["scaler"])
        self.stage.best.load_state_dict(state["best"])
        if not best_files:
            self.stage.best.value, self.stage.best.epoch, self.stage.best.top = None, None, []
        self.stage.metrics = state.get("metrics", {})
        set_rng_state(state["rng"])

    def next_stage(self, result: dict[str, Any]) -> None:
        """The stage being trained ended with `result` (metrics.json's entry): go on at the next."""
        assert self.stage is not None
        self.results[self.stage.name] = result
        self.position = Position(self.position.stage_index + 1, 0, 0, self.position.global_step)
        self.stage = None
