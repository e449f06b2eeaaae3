"""The training loop: stages in order, each from the weights the previous one ended with.

Read top to bottom: `fit` runs the stages; `_run_stage` builds the stage's optimizer and
schedule and runs its epochs; `_train_epoch` is the step loop. The loop does no per-step
host work a GPU would wait on: losses are summed on the device and read back only at
log steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import hydra.utils
import torch
from tqdm.auto import tqdm

from mmtrain.data import DataBundle
from mmtrain.data.loader import make_loader, to_device
from mmtrain.engine.checkpoint import (atomic_save, load_model_state, rng_state, set_rng_state,
                                       FORMAT_VERSION)
from mmtrain.engine.logger import MetricLogger
from mmtrain.engine.optimizer import build_optimizer
from mmtrain.engine.precision import autocast, grad_scaler
from mmtrain.models.model import MultimodalModel, StageModule, blank_modalities, set_frozen


@dataclass
class Stage:
    name: str
    task: Any
    epochs: int
    freeze: list[str]
    lr: float | None
    lr_scale: dict[str, float]
    monitor: str
    monitor_mode: str


@dataclass
class Position:
    """Where a run is: the next optimizer step to take is `step` of `epoch` of stage `stage_index`."""

    stage_index: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0


def evaluate(model: MultimodalModel, task: Any, loader: Iterable, device: torch.device,
             precision: str, blank: Iterable[str] = (), limit: int | None = None) -> dict[str, float]:
    """Run `task`'s metrics over a whole loader (optionally with modalities blanked)."""
    blank = tuple(blank)

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            batch = to_device(batch, device)
            yield blank_modalities(batch, blank) if blank else batch

    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        metrics = task.evaluate(model, batches())
    model.train(was_training)
    return metrics


class Trainer:
    def __init__(self, model: MultimodalModel, data: DataBundle, run_dir: Path, *,
                 trainer_cfg: Any, optimizer_cfg: Any, scheduler_cfg: Any, device: torch.device,
                 seed: int, config: dict, logger: MetricLogger) -> None:
        self.model = model.to(device)
        self.data = data
        self.run_dir = run_dir
        self.cfg = trainer_cfg
        self.optimizer_cfg = optimizer_cfg
        self.scheduler_cfg = scheduler_cfg
        self.device = device
        self.seed = seed
        self.config = config
        self.logger = logger
        self.precision = trainer_cfg.precision
        self.rank, self.world_size = 0, 1
        self.is_main = True
        self.val_loader = make_loader(data.val, self.eval_batch_size, train=False,
                                      num_workers=trainer_cfg.num_workers, device=device)
        self.train_loader = make_loader(data.train, trainer_cfg.batch_size, train=True, seed=seed,
                                        num_workers=trainer_cfg.num_workers, device=device,
                                        rank=self.rank, world_size=self.world_size)
        self.resume_state: dict[str, Any] | None = None

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.eval_batch_size or 2 * self.cfg.batch_size

    def checkpoint_path(self, stage: str, kind: str) -> Path:
        return self.run_dir / "checkpoints" / stage / f"{kind}.pt"

    # ------------------------------------------------------------------ stages

    def fit(self, stages: list[Stage], resume: dict[str, Any] | None = None) -> dict[str, dict]:
        """Run every stage; returns each stage's final validation metrics and best value."""
        start = Position()
        if resume is not None:
            load_model_state(self.model, resume["model"], "resume")
            start = Position(**resume["position"])
            self.resume_state = resume
        results: dict[str, dict] = dict(resume.get("results", {})) if resume else {}
        for index, stage in enumerate(stages):
            if index < start.stage_index:
                continue
            if index == start.stage_index and start.epoch >= stage.epochs and stage.epochs > 0:
                # The checkpoint was written when this stage had finished.
                results[stage.name] = {"val": resume["metrics"], "best": resume["best"]}
                self.resume_state = None
                continue
            pos = start if index == start.stage_index else Position(index, 0, 0, start.global_step)
            results[stage.name] = self._run_stage(stage, pos, results)
            start = Position(index + 1, 0, 0, self._global_step)
        return results

    def _run_stage(self, stage: Stage, pos: Position, results: dict[str, dict]) -> dict:
        set_frozen(self.model, stage.freeze)
        optimizer = build_optimizer(self.optimizer_cfg, self.model, lr=stage.lr, lr_scale=stage.lr_scale)
        accumulate = self.cfg.accumulate_grad_batches
        batches = self.train_loader.sampler.per_rank // self.cfg.batch_size
        if self.cfg.limit_train_batches is not None:
            batches = min(batches, self.cfg.limit_train_batches)
        steps_per_epoch = max(1, batches // accumulate)
        scheduler = hydra.utils.instantiate(self.scheduler_cfg)(optimizer,
                                                                total_steps=steps_per_epoch * stage.epochs)
        scaler = grad_scaler(self.device, self.precision)
        best = {"metric": stage.monitor, "mode": stage.monitor_mode, "value": None, "epoch": None}
        metrics: dict[str, float] = {}
        if self.resume_state is not None:
            state, self.resume_state = self.resume_state, None
            if state["position"]["stage_index"] == pos.stage_index:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                scaler.load_state_dict(state["scaler"])
                best = state["best"]
                metrics = state.get("metrics", {})
                set_rng_state(state["rng"])
        self._global_step = pos.global_step
        module = StageModule(self.model, stage.task)
        ctx = dict(stage=stage, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   best=best, results=results)

        if stage.epochs == 0:  # evaluate-only stage: still leaves last.pt/best.pt for eval
            metrics = self.validate(stage)
            self._update_best(ctx, metrics, epoch=0)
            self._save("last", ctx, Position(pos.stage_index, 0, 0, self._global_step), metrics)
        for epoch in range(pos.epoch, stage.epochs):
            skip = pos.step if epoch == pos.epoch else 0
            self._train_epoch(module, ctx, pos.stage_index, epoch, skip, steps_per_epoch, accumulate)
            metrics = self.validate(stage)
            self.logger.log({f"{stage.name}/val/{k}": v for k, v in metrics.items()}, self._global_step,
                            stage=stage.name, epoch=epoch + 1, split="val")
            self._update_best(ctx, metrics, epoch + 1)
            self._save("last", ctx, Position(pos.stage_index, epoch + 1, 0, self._global_step), metrics)
        return {"val": metrics, "best": ctx["best"]}

    def validate(self, stage: Stage) -> dict[str, float]:
        return evaluate(self.model, stage.task, self.val_loader, self.device, self.precision,
                        limit=self.cfg.limit_eval_batches)

    # ------------------------------------------------------------------ steps

    def _train_epoch(self, module: StageModule, ctx: dict, stage_index: int, epoch: int, skip: int,
                     steps_per_epoch: int, accumulate: int) -> None:
        stage: Stage = ctx["stage"]
        optimizer, scheduler, scaler = ctx["optimizer"], ctx["scheduler"], ctx["scaler"]
        sampler = self.train_loader.sampler
        sampler.set_epoch(epoch, skip=skip * accumulate * self.cfg.batch_size)
        self._set_train_mode(stage)
        log_every = max(1, self.cfg.log_every_n_steps)
        every_n = self.cfg.checkpoint.every_n_steps
        running: dict[str, torch.Tensor] = {}
        count = 0
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
                   disable=not (self.cfg.progress and self.is_main), dynamic_ncols=True, leave=False)
        step, micro = skip, 0
        optimizer.zero_grad(set_to_none=True)
        for batch in self.train_loader:
            if step >= steps_per_epoch:
                break
            batch = to_device(batch, self.device)
            with autocast(self.device, self.precision):
                out = module(batch)
            scaler.scale(out["loss"] / accumulate).backward()
            for k, v in out.items():
                running[k] = running.get(k, 0.0) + v.detach().float() / accumulate
            micro += 1
            if micro % accumulate:
                continue
            if self.cfg.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            count += 1
            self._global_step += 1
            bar.update(1)
            if step % log_every == 0 or step == steps_per_epoch:
                # The only host sync of the step loop, once per log interval.
                values = {k: float(v) / count for k, v in running.items()}
                values["lr"] = optimizer.param_groups[0]["lr"]
                self.logger.log({f"{stage.name}/train/{k}": v for k, v in values.items()},
                                self._global_step, stage=stage.name, epoch=epoch + 1, split="train")
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                if not math.isfinite(values["loss"]):
                    from mmtrain.errors import MmtrainError

                    raise MmtrainError(f"training loss is {values['loss']} at step {self._global_step} "
                                       f"of stage {stage.name}: lower optimizer.lr or use precision=32")
                running, count = {}, 0
            if every_n and step % every_n == 0 and step < steps_per_epoch:
                self._save("last", ctx, Position(stage_index, epoch, step, self._global_step),
                           ctx.get("metrics", {}))
        bar.close()

    def _set_train_mode(self, stage: Stage) -> None:
        self.model.train()
        # Frozen parts also keep their BatchNorm statistics and skip dropout.
        for name in stage.freeze:
            self.model.get_submodule(name).eval()

    # ------------------------------------------------------------------ checkpoints

    def _update_best(self, ctx: dict, metrics: dict[str, float], epoch: int) -> None:
        best, stage = ctx["best"], ctx["stage"]
        if stage.monitor not in metrics:
            from mmtrain.errors import ConfigError

            raise ConfigError(f"stages.{stage.name}.monitor={stage.monitor!r} is not a metric of "
                              f"{type(stage.task).__name__} (it reports: {', '.join(metrics)})")
        value = metrics[stage.monitor]
        better = best["value"] is None or (value > best["value"] if best["mode"] == "max"
                                           else value < best["value"])
        if better:
            best.update(value=value, epoch=epoch)
            self._save("best", ctx, None, metrics)

    def _save(self, kind: str, ctx: dict, pos: Position | None, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        stage: Stage = ctx["stage"]
        ctx["metrics"] = metrics
        payload = {
            "format": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "config": self.config,
            "tokenizer": self.data.tokenizer.to_json(),
            "stage": stage.name,
            "metrics": metrics,
            "best": dict(ctx["best"]),
            "results": ctx["results"],
        }
        if pos is not None:  # last.pt: everything an exact resume needs
            payload.update(
                position=vars(pos).copy(),
                optimizer=ctx["optimizer"].state_dict(),
                scheduler=ctx["scheduler"].state_dict(),
                scaler=ctx["scaler"].state_dict(),
                rng=rng_state(),
            )
        atomic_save(payload, self.checkpoint_path(stage.name, kind))
