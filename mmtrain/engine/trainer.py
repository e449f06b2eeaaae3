"""The training loop: stages in order, each from the weights the previous one ended with.

Read top to bottom: `fit` runs the stages (and restores a resumed run's state first);
`_run_stage` runs a stage's epochs (validate, rank best.pt, save last.pt, stop early);
`_train_epoch` is the step loop: micro-batches, backward, clip, optimizer step, logging,
stop signals. The run's state (position, results, the stage's optimizer, schedule,
scaler and best record) lives in a `TrainState` (engine/state.py), which is also what a
checkpoint saves and a resume loads.

Host syncs: the losses are summed on the device and read back only at log steps; the one
per-step sync is the finiteness check of the gradient norm, which decides whether the
optimizer may step (GradScaler makes the same sync for fp16). Under DDP the gradients are
already averaged at that point, so every rank takes the same decision. (The gru/lstm text
encoders add one: packing needs the lengths on the CPU.)
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mmtrain.data import DataBundle
from mmtrain.data.loader import make_loader, to_device
from mmtrain import distributed as dist
from mmtrain.engine.checkpoint import FORMAT_VERSION, CheckpointSaver, remove_partial_writes
from mmtrain.engine import epoch_log
from mmtrain.engine.logger import MetricLogger
from mmtrain.engine.precision import autocast, enable_tf32, grad_scaler, resolve_precision
from mmtrain.engine.preemption import Preempted, StopSignal, resume_command
from mmtrain.engine.state import Best, StageState, TrainState
from mmtrain.engine.throughput import ThroughputMeter, peak_flops
from mmtrain.errors import CheckpointError, ConfigError, MmtrainError
from mmtrain.models.model import MultimodalModel, StageModule, blank_modalities, set_frozen
from mmtrain.tasks import Batch, Evaluation, Task

log = logging.getLogger("mmtrain")


@dataclass
class Stage:
    name: str
    task: Task
    epochs: int
    freeze: list[str]
    lr: float | None
    lr_scale: dict[str, float]
    monitor: str
    monitor_mode: str
    patience: int | None = None
    """Stop the stage after this many validations without a `min_delta` improvement; None: never."""
    min_delta: float = 0.0
    layer_decay: float | None = None


def evaluate(model: MultimodalModel, task: Task, loader: Iterable, device: torch.device,
             precision: str, blank: Iterable[str] = (), limit: int | None = None) -> Evaluation:
    """Run `task`'s metrics over a whole loader (optionally with modalities blanked)."""
    blank = tuple(blank)

    def batches() -> Iterator[Batch]:
        for i, batch in enumerate(loader):
            if limit is not None and i >= limit:
                break
            batch = to_device(batch, device)
            yield blank_modalities(batch, blank, model.image_mean) if blank else batch

    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        evaluation = task.evaluate(model, batches())
    model.train(was_training)
    return evaluation


@dataclass(frozen=True)
class TrainerSettings:
    """What the trainer reads of the `trainer` config, as plain values (`from_config`)."""

    batch_size: int
    """Per process and micro-batch."""
    eval_batch_size: int
    accumulate_grad_batches: int
    precision: str
    """Resolved for the device: 32, bf16-mixed or fp16-mixed."""
    num_workers: int
    grad_clip: float | None
    max_nonfinite_steps: int
    log_every_n_steps: int
    limit_train_batches: int | None
    limit_eval_batches: int | None
    contrastive_cache: bool
    """Accumulate contrastive tasks through the gradient cache (the task's `cached_backward`)."""
    compile_backend: str | None
    """torch.compile's backend; None: not compiled."""
    channels_last: bool
    progress: bool
    save_every_n_steps: int
    keep_last: int
    keep_best: int

    @classmethod
    def from_config(cls, cfg: Any, device: torch.device) -> TrainerSettings:
        """From the `trainer` node (config.TrainerConfig), for a run on `device`."""
        return cls(
            batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size or 2 * cfg.batch_size,
            accumulate_grad_batches=cfg.accumulate_grad_batches,
            precision=resolve_precision(cfg.precision, device), num_workers=cfg.num_workers,
            grad_clip=cfg.grad_clip, max_nonfinite_steps=cfg.max_nonfinite_steps,
            log_every_n_steps=max(1, cfg.log_every_n_steps), limit_train_batches=cfg.limit_train_batches,
            limit_eval_batches=cfg.limit_eval_batches,
            contrastive_cache=cfg.contrastive_accumulation == "cache",
            compile_backend=cfg.compile_backend if cfg.compile else None,
            channels_last=cfg.channels_last, progress=cfg.progress,
            save_every_n_steps=cfg.checkpoint.every_n_steps, keep_last=cfg.checkpoint.keep_last,
            keep_best=cfg.checkpoint.keep_best)


class Trainer:
    """Runs stages on a model. `optimizer(model, lr=, lr_scale=, layer_decay=)` builds a
    stage's optimizer (lr None: the optimizer's own) and `scheduler(optimizer, total_steps=)`
    its schedule; the run's state lives in `self.state` (engine/state.py)."""

    def __init__(self, model: MultimodalModel, data: DataBundle, run_dir: Path, *,
                 settings: TrainerSettings, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler], device: torch.device,
                 seed: int, config: dict, logger: MetricLogger, stop: StopSignal | None = None) -> None:
        self.model = model.to(device)
        self.data = data
        self.run_dir = run_dir
        self.settings = settings
        self.make_optimizer = optimizer
        self.make_scheduler = scheduler
        self.device = device
        self.config = config
        self.logger = logger
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        enable_tf32(device)
        if settings.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        # Only rank 0 evaluates, on the whole split: the metrics need no reduction and no
        # sample is counted twice (a split sharded over ranks is padded to equal shares).
        self.val_loader = make_loader(data.val, settings.eval_batch_size, train=False,
                                      num_workers=settings.num_workers, device=device)
        self.train_loader = make_loader(data.train, settings.batch_size, train=True, seed=seed,
                                        num_workers=settings.num_workers, device=device,
                                        rank=self.rank, world_size=self.world_size)
        # `mmtrain train` passes the one it holds from start to end; alone, the trainer has its own.
        self.stop = stop or StopSignal()
        self.meter = ThroughputMeter(device, self.world_size, peak=peak_flops(device, settings.precision))
        self.state = TrainState(self.model)
        self.started = time.perf_counter()

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far, over all stages (resumed runs included)."""
        return self.state.position.global_step

    @property
    def precision(self) -> str:
        return self.settings.precision

    @property
    def eval_batch_size(self) -> int:
        return self.settings.eval_batch_size

    def checkpoint_path(self, stage: str, kind: str) -> Path:
        return self.run_dir / "checkpoints" / stage / f"{kind}.pt"

    # ------------------------------------------------------------------ stages

    def fit(self, stages: list[Stage], resume: dict[str, Any] | None = None, *,
            best_files: bool = True) -> dict[str, dict]:
        """Run every stage, or from where `resume` (a last.pt's contents) stopped; returns each
        stage's final validation metrics and best value. `best_files=False`: the best
        checkpoints `resume` ranked are not in this run dir (TrainState.load_state_dict)."""
        self.started = time.perf_counter()
        self.stage_count = len(stages)
        self.steps_per_epoch = self._steps_per_epoch()
        self.state = TrainState(self.model)
        if resume is not None:
            index = resume["position"]["stage_index"]
            if not 0 <= index < len(stages):
                raise CheckpointError(f"the checkpoint stopped in stage {index + 1}; this run has "
                                      f"{len(stages)}: resume with the run's own stages")
            # The stage it stopped in gets its optimizer, schedule and scaler to load their state into.
            self.state.stage = self._stage_state(stages[index])
            self.state.load_state_dict(resume, best_files=best_files)
            if self.is_main:
                remove_partial_writes(self.run_dir / "checkpoints")
        own = contextlib.nullcontext() if self.stop.active else self.stop
        with own, self.stop.deferred():
            for stage in stages[self.state.position.stage_index:]:
                if self.state.stage is None:
                    self.state.stage = self._stage_state(stage)
                # A checkpoint written when its stage had finished carries on with the next one,
                # from the RNG state the stage ended with, as the uninterrupted run did.
                if stage.epochs == 0 or self.state.position.epoch < stage.epochs:
                    self._run_stage(stage)
                self.state.next_stage(self._stage_result(stage))
            if dist.any_rank(self.stop.requested is not None):
                # A signal after the last step (during the last validation or save): last.pt
                # is at the end, so a resume goes straight to the final test.
                raise Preempted(f"stopped by {self.stop.requested or 'a signal on another rank'} after "
                                f"the last step ({self.global_step}); last.pt saved: continue with "
                                f"{resume_command(self.run_dir)}")
        return self.state.results

    def _steps_per_epoch(self) -> int:
        s = self.settings
        per_rank = self.train_loader.sampler.per_rank
        batches = per_rank // s.batch_size
        if batches // s.accumulate_grad_batches == 0:  # drop_last would leave the epoch without a full step
            raise ConfigError(f"the training split has {per_rank} samples per process, fewer than "
                              f"trainer.batch_size={s.batch_size} x trainer.accumulate_grad_batches="
                              f"{s.accumulate_grad_batches}: lower them or use more data")
        if s.limit_train_batches is not None:
            batches = min(batches, s.limit_train_batches)
        return max(1, batches // s.accumulate_grad_batches)

    def _stage_state(self, stage: Stage) -> StageState:
        """A stage's fresh optimizer (over its unfrozen weights), schedule and scaler."""
        set_frozen(self.model, stage.freeze)
        optimizer = self.make_optimizer(self.model, lr=stage.lr, lr_scale=stage.lr_scale,
                                        layer_decay=stage.layer_decay)
        scheduler = self.make_scheduler(optimizer, total_steps=self.steps_per_epoch * stage.epochs)
        return StageState(stage.name, optimizer, scheduler, grad_scaler(self.device, self.precision),
                          Best(stage.monitor, stage.monitor_mode))

    def _run_stage(self, stage: Stage) -> None:
        """The stage's epochs from where the run is: train, validate, rank, save, maybe stop early."""
        position, best = self.state.position, self.state.stage.best
        start_epoch = position.epoch
        module, cached = self._stage_module(stage)
        if stage.epochs > start_epoch:
            self._count_flops(stage)
        if self.is_main:
            log.info(epoch_log.stage_start(
                name=stage.name, index=position.stage_index, count=self.stage_count,
                task=type(stage.task).__name__, n_epochs=stage.epochs, start_epoch=start_epoch,
                steps_per_epoch=self.steps_per_epoch,
                samples_per_step=self.settings.batch_size * self.settings.accumulate_grad_batches
                * self.world_size,
                # The configured (peak) learning rate: a warmup starts the schedule below it.
                frozen=stage.freeze, lr=self.state.stage.optimizer.defaults["lr"],
                lr_scale=stage.lr_scale, monitor=stage.monitor,
                mode=stage.monitor_mode, patience=stage.patience, min_delta=stage.min_delta))
        if stage.epochs == 0:  # evaluate-only stage: still leaves last.pt/best.pt for eval
            self._update_best(stage, self.validate(stage), epoch=0)
            self._save_last()
        stage_started = time.perf_counter()
        for epoch in range(start_epoch, stage.epochs):
            train_loss, samples_per_s = self._train_epoch(stage, module, cached, epoch)
            metrics = self.validate(stage)
            self.logger.log({f"{stage.name}/val/{k}": v for k, v in metrics.items()}, self.global_step,
                            stage=stage.name, epoch=epoch + 1, split="val")
            improved = self._update_best(stage, metrics, epoch + 1)
            stop = best.early_stop(metrics[stage.monitor], stage.monitor_mode, stage.patience, stage.min_delta)
            if stop:
                best.stopped_epoch = epoch + 1
            # A stage that stopped early is saved as finished, so a resume goes on to the next one.
            position.epoch, position.step = stage.epochs if stop else epoch + 1, 0
            self._save_last()
            if self.is_main:
                per_epoch = (time.perf_counter() - stage_started) / (epoch + 1 - start_epoch)
                log.info(epoch_log.epoch_line(
                    name=stage.name, epoch=epoch + 1, epochs=stage.epochs, train_loss=train_loss,
                    metrics=metrics, monitor=stage.monitor, improved=improved, best=best.state_dict(),
                    patience_left=None if stage.patience is None else stage.patience - best.wait,
                    samples_per_s=samples_per_s, elapsed=time.perf_counter() - self.started,
                    eta=None if stop else per_epoch * (stage.epochs - epoch - 1)))
            if stop:
                if self.is_main:
                    log.info(epoch_log.early_stop(name=stage.name, epoch=epoch + 1, epochs=stage.epochs,
                                                  monitor=stage.monitor, best=best.state_dict(),
                                                  patience=stage.patience))
                break

    def _stage_result(self, stage: Stage) -> dict:
        """What metrics.json says of a stage: its last validation metrics, and its best epoch
        with that epoch's metrics and the checkpoint files that exist for it."""
        best = self.state.stage.best
        # With keep_best=1 only best.pt is written: the ranked names are internal then.
        top = [[v, "best.pt" if max(1, self.settings.keep_best) == 1 else n] for v, n in best.top]
        return {"val": self.state.stage.metrics, "last_epoch": best.stopped_epoch or stage.epochs,
                "best": {**best.public(), "top": top,
                         "checkpoint": str(self.checkpoint_path(stage.name, "best"))}}

    def _stage_module(self, stage: Stage) -> tuple[torch.nn.Module, bool]:
        """The module the step loop calls: compiled if asked, then wrapped in DDP.

        Returns (module, cached): with contrastive_accumulation=cache the loop calls the
        task's `cached_backward` on the plain model instead.
        """
        cached = (self.settings.contrastive_cache and self.settings.accumulate_grad_batches > 1
                  and stage.task.supports_gradient_cache)
        module: torch.nn.Module = StageModule(self.model, stage.task)
        if cached:
            return module, True
        if self.settings.compile_backend is not None:
            # Compiles the wrapper; self.model keeps its own parameter names, so checkpoints
            # saved from it load without compile.
            module = torch.compile(module, backend=self.settings.compile_backend)
        if dist.is_distributed():
            # Stages use part of the model (pretraining leaves the classifier idle), so DDP
            # must look for parameters without gradients; their .grad stays None.
            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        return module, False

    def _count_flops(self, stage: Stage) -> None:
        """The meter's FLOPs per sample, counted on a training-sized slice of a validation batch
        (same shapes), in train mode as the step runs (cuDNN RNNs have no backward in eval mode)."""
        module = StageModule(self.model, stage.task)

        def step() -> tuple[torch.Tensor, int]:
            self._set_train_mode(stage)
            batch = next(iter(self.val_loader))
            batch = to_device({k: v[: self.settings.batch_size] for k, v in batch.items()}, self.device)
            with autocast(self.device, self.precision):
                return module(batch)["loss"], batch["image"].shape[0]

        self.meter.count_flops(self.model, step)

    def validate(self, stage: Stage) -> dict[str, float]:
        metrics = None
        if self.is_main:
            with dist.local_only():
                metrics = evaluate(self.model, stage.task, self.val_loader, self.device, self.precision,
                                   limit=self.settings.limit_eval_batches).metrics
        return dist.broadcast_object(metrics)

    # ------------------------------------------------------------------ steps

    def _train_epoch(self, stage: Stage, module: torch.nn.Module, cached: bool,
                     epoch: int) -> tuple[float | None, float]:
        """The epoch's optimizer steps from where the run is; -> the mean training loss of the
        steps this process ran, and samples/s over all ranks."""
        s, position, state = self.settings, self.state.position, self.state.stage
        optimizer, scaler, accumulate = state.optimizer, state.scaler, s.accumulate_grad_batches
        skip, steps = position.step, self.steps_per_epoch
        self.train_loader.sampler.set_epoch(epoch, skip=skip * accumulate * s.batch_size)
        self._set_train_mode(stage)
        ddp = isinstance(module, DistributedDataParallel)
        amp = lambda: autocast(self.device, s.precision)  # noqa: E731
        bar = tqdm(total=steps, initial=skip, desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
                   disable=not (s.progress and self.is_main), dynamic_ncols=True, leave=False)
        # The iterator draws its worker seed from the loader's own generator (make_loader), not
        # the global RNG, so a run resumed mid-epoch (one more iterator) does not drift.
        batches = iter(self.train_loader)
        optimizer.zero_grad(set_to_none=True)
        self.meter.reset()
        running: dict[str, torch.Tensor] = {}
        count = 0
        epoch_loss: torch.Tensor | float = 0.0  # summed on the device, read once at the end
        epoch_started = time.perf_counter()
        for step in range(skip, steps):
            try:
                if cached:
                    micro_batches = [self._next_batch(batches) for _ in range(accumulate)]
                    out = stage.task.cached_backward(self.model, micro_batches, amp, scaler.scale)
                else:
                    out = {}
                    for i in range(accumulate):
                        batch = self._next_batch(batches)
                        # Under DDP only the last micro-batch all-reduces; the others add to local grads.
                        with module.no_sync() if ddp and i < accumulate - 1 else contextlib.nullcontext():
                            with amp():
                                micro = module(batch)
                            # Mean over micro-batches: N micro-batches of B give the gradient of
                            # one batch of N*B for a per-sample mean loss.
                            scaler.scale(micro["loss"] / accumulate).backward()
                        for k, v in micro.items():
                            out[k] = out.get(k, 0.0) + v.detach().float() / accumulate
                scaler.unscale_(optimizer)
                params = [p for p in self.model.parameters() if p.grad is not None]
                if s.grad_clip is not None:
                    norm = torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
                else:
                    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
                if bool(torch.isfinite(norm)):  # the per-step host sync
                    scaler.step(optimizer)
                    state.nonfinite = 0
                else:
                    self._skip_step(stage)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                state.scheduler.step()
            except torch.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self._save_last()
                raise ConfigError(
                    f"CUDA out of memory at step {position.global_step + 1} of stage {stage.name} with "
                    f"trainer.batch_size={s.batch_size}: lower it and raise "
                    f"trainer.accumulate_grad_batches to keep the batch (or use precision=bf16-mixed); "
                    f"last.pt saved, resume with trainer.resume=true") from None
            for k, v in out.items():
                running[k] = running.get(k, 0.0) + v
            epoch_loss = epoch_loss + out["loss"]
            count += 1
            position.step, position.global_step = step + 1, position.global_step + 1
            bar.update(1)
            if position.step % s.log_every_n_steps == 0 or position.step == steps:
                # The only host sync for logging, once per log interval.
                values = {k: float(v) / count for k, v in dist.mean_over_ranks(running).items()}
                values.update(self.meter.read(), lr=optimizer.param_groups[0]["lr"])
                self.logger.log({f"{stage.name}/train/{k}": v for k, v in values.items()},
                                position.global_step, stage=stage.name, epoch=epoch + 1, split="train")
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                running, count = {}, 0
            if dist.any_rank(self.stop.requested is not None):
                self._save_last()
                dist.barrier()  # no rank exits (and makes torchrun stop the others) before the save
                bar.close()
                raise Preempted(f"stopped by {self.stop.requested or 'a signal on another rank'} after "
                                f"step {position.global_step} (stage {stage.name}, epoch {epoch + 1}); "
                                f"last.pt saved: continue with {resume_command(self.run_dir)}")
            if s.save_every_n_steps and position.step % s.save_every_n_steps == 0 and position.step < steps:
                self._save_last()
        bar.close()
        seconds = max(time.perf_counter() - epoch_started, 1e-9)
        if steps == skip:
            return None, 0.0
        loss = dist.mean_over_ranks({"loss": torch.as_tensor(epoch_loss) / (steps - skip)})["loss"]
        return float(loss), (steps - skip) * s.batch_size * accumulate * self.world_size / seconds

    def _next_batch(self, batches: Iterator) -> dict[str, torch.Tensor]:
        waited = time.perf_counter()
        batch = to_device(next(batches), self.device)
        self.meter.data_wait(time.perf_counter() - waited)
        self.meter.add(batch["image"].shape[0])
        if self.settings.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def _skip_step(self, stage: Stage) -> None:
        """A non-finite gradient norm: the optimizer did not step; too many in a row end the run."""
        state = self.state.stage
        state.nonfinite += 1
        if self.is_main:
            log.warning("non-finite gradient at step %d of stage %s: step skipped (%d in a row)",
                        self.global_step + 1, stage.name, state.nonfinite)
        if state.nonfinite >= self.settings.max_nonfinite_steps:
            raise MmtrainError(
                f"{state.nonfinite} non-finite gradients in a row up to step {self.global_step + 1} "
                f"of stage {stage.name}: lower optimizer.lr, set trainer.grad_clip, or use "
                f"precision=32 or bf16-mixed instead of fp16-mixed")

    def _set_train_mode(self, stage: Stage) -> None:
        self.model.train()
        # Frozen parts also keep their BatchNorm statistics and skip dropout.
        for name in stage.freeze:
            self.model.get_submodule(name).eval()

    # ------------------------------------------------------------------ checkpoints

    def _update_best(self, stage: Stage, metrics: dict[str, float], epoch: int) -> bool:
        """Rank this epoch's checkpoint by the monitor; -> whether it is the new best."""
        state = self.state.stage
        state.metrics = metrics
        if stage.monitor not in metrics:
            raise ConfigError(f"stages.{stage.name}.monitor={stage.monitor!r} is not a metric of "
                              f"{type(stage.task).__name__} (it reports: {', '.join(metrics)})")
        value, best, saver = metrics[stage.monitor], state.best, self._saver()
        name = f"best-epoch{epoch:03d}.pt"
        kept, dropped = saver.rank(best.top, value, best.mode, name)
        if name not in [n for _, n in kept]:
            return False
        best.top = kept
        improved = kept[0][1] == name
        if improved:
            best.value, best.epoch, best.metrics = value, epoch, dict(metrics)
        if self.is_main:
            saver.save_best(self._payload(resumable=False), kept, dropped, name)
        return improved

    def _save_last(self) -> None:
        if self.is_main:
            self._saver().save_last(self._payload(resumable=True), self.global_step)

    def _saver(self) -> CheckpointSaver:
        return CheckpointSaver(self.run_dir / "checkpoints" / self.state.stage.name,
                               keep_last=self.settings.keep_last, keep_best=self.settings.keep_best)

    def _payload(self, resumable: bool) -> dict[str, Any]:
        """A checkpoint: what is constant for the run, then the run's state (last.pt: all of it)."""
        return {"format": FORMAT_VERSION, "config": self.config, "tokenizer": self.data.tokenizer.to_json(),
                "data_info": self.data.info.to_payload(), **self.state.state_dict(resumable)}
