"""The training loop: stages in order, each from the weights the previous one ended with.

Read top to bottom: `fit` runs the stages; `_run_stage` builds the stage's optimizer,
schedule and (compiled, DDP-wrapped) module and runs its epochs; `_train_epoch` is the step
loop and `_optimizer_step` what happens once the micro-batches are in.

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
from typing import Any, Iterable, Iterator

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from mmtrain.config import instantiate
from mmtrain.data import DataBundle
from mmtrain.data.loader import make_loader, to_device
from mmtrain import distributed as dist
from mmtrain.engine.checkpoint import (FORMAT_VERSION, CheckpointSaver, load_model_state,
                                       remove_partial_writes, rng_state, set_rng_state)
from mmtrain.engine import epoch_log
from mmtrain.engine.contrastive_cache import cached_contrastive_backward, supports_cache
from mmtrain.engine.logger import MetricLogger
from mmtrain.engine.optimizer import build_optimizer
from mmtrain.engine.precision import autocast, enable_tf32, grad_scaler, resolve_precision
from mmtrain.engine.preemption import Preempted, StopSignal, resume_command
from mmtrain.engine.throughput import ThroughputMeter, count_train_flops, peak_flops
from mmtrain.errors import ConfigError, MmtrainError
from mmtrain.models.model import MultimodalModel, StageModule, blank_modalities, set_frozen

log = logging.getLogger("mmtrain")


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
    patience: int | None = None
    """Stop the stage after this many validations without a `min_delta` improvement; None: never."""
    min_delta: float = 0.0
    layer_decay: float | None = None


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
            yield blank_modalities(batch, blank, model.image_mean) if blank else batch

    was_training = model.training
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        metrics = task.evaluate(model, batches())
    model.train(was_training)
    return metrics


class Trainer:
    def __init__(self, model: MultimodalModel, data: DataBundle, run_dir: Path, *,
                 trainer_cfg: Any, optimizer_cfg: Any, scheduler_cfg: Any, device: torch.device,
                 seed: int, config: dict, logger: MetricLogger, stop: StopSignal | None = None) -> None:
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
        self.precision = resolve_precision(trainer_cfg.precision, device)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.is_main = self.rank == 0
        enable_tf32(device)
        if trainer_cfg.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        # Only rank 0 evaluates, on the whole split: the metrics need no reduction and no
        # sample is counted twice (a split sharded over ranks is padded to equal shares).
        self.val_loader = make_loader(data.val, self.eval_batch_size, train=False,
                                      num_workers=trainer_cfg.num_workers, device=device)
        self.train_loader = make_loader(data.train, trainer_cfg.batch_size, train=True, seed=seed,
                                        num_workers=trainer_cfg.num_workers, device=device,
                                        rank=self.rank, world_size=self.world_size)
        self.resume_state: dict[str, Any] | None = None
        # `mmtrain train` passes the one it holds from start to end; alone, the trainer has its own.
        self.stop = stop or StopSignal()
        self.meter = ThroughputMeter(device, self.world_size)
        self._global_step = 0
        self.started = time.perf_counter()

    @property
    def global_step(self) -> int:
        """Optimizer steps taken so far, over all stages (resumed runs included)."""
        return self._global_step

    @property
    def eval_batch_size(self) -> int:
        return self.cfg.eval_batch_size or 2 * self.cfg.batch_size

    def checkpoint_path(self, stage: str, kind: str) -> Path:
        return self.run_dir / "checkpoints" / stage / f"{kind}.pt"

    # ------------------------------------------------------------------ stages

    def fit(self, stages: list[Stage], resume: dict[str, Any] | None = None) -> dict[str, dict]:
        """Run every stage; returns each stage's final validation metrics and best value."""
        self.started = time.perf_counter()
        self.stage_count = len(stages)
        start = Position()
        if resume is not None:
            load_model_state(self.model, resume["model"], "resume")
            start = Position(**resume["position"])
            self.resume_state = resume
            if self.is_main:
                remove_partial_writes(self.run_dir / "checkpoints")
        results: dict[str, dict] = dict(resume.get("results", {})) if resume else {}
        own = contextlib.nullcontext() if self.stop.active else self.stop
        with own, self.stop.deferred():
            for index, stage in enumerate(stages):
                if index < start.stage_index:
                    continue
                if index == start.stage_index and start.epoch >= stage.epochs and stage.epochs > 0:
                    # The checkpoint was written when this stage had finished: carry on from
                    # the RNG state it ended with, as the uninterrupted run did.
                    results[stage.name] = self._stage_result(stage, resume["metrics"], resume["best"])
                    set_rng_state(resume["rng"])
                    self.resume_state = None
                    continue
                pos = start if index == start.stage_index else Position(index, 0, 0, start.global_step)
                results[stage.name] = self._run_stage(stage, pos, results)
                start = Position(index + 1, 0, 0, self._global_step)
            if dist.any_rank(self.stop.requested is not None):
                # A signal after the last step (during the last validation or save): last.pt
                # is at the end, so a resume goes straight to the final test.
                raise Preempted(f"stopped by {self.stop.requested or 'a signal on another rank'} after "
                                f"the last step ({self._global_step}); last.pt saved: continue with "
                                f"{resume_command(self.run_dir)}")
        return results

    def _run_stage(self, stage: Stage, pos: Position, results: dict[str, dict]) -> dict:
        set_frozen(self.model, stage.freeze)
        optimizer = build_optimizer(self.optimizer_cfg, self.model, lr=stage.lr, lr_scale=stage.lr_scale,
                                    device=self.device, layer_decay=stage.layer_decay)
        accumulate = self.cfg.accumulate_grad_batches
        batches = self.train_loader.sampler.per_rank // self.cfg.batch_size
        if batches // accumulate == 0:  # drop_last would leave the epoch without a full step
            raise ConfigError(f"the training split has {self.train_loader.sampler.per_rank} samples "
                              f"per process, fewer than trainer.batch_size={self.cfg.batch_size} x "
                              f"trainer.accumulate_grad_batches={accumulate}: lower them or use more data")
        if self.cfg.limit_train_batches is not None:
            batches = min(batches, self.cfg.limit_train_batches)
        steps_per_epoch = max(1, batches // accumulate)
        scheduler = instantiate(self.scheduler_cfg)(optimizer, total_steps=steps_per_epoch * stage.epochs)
        scaler = grad_scaler(self.device, self.precision)
        best = {"metric": stage.monitor, "mode": stage.monitor_mode, "value": None, "epoch": None,
                "top": [], "metrics": {}, "wait": 0, "reference": None}
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
        ckpt = self.cfg.checkpoint
        saver = CheckpointSaver(self.run_dir / "checkpoints" / stage.name, keep_last=ckpt.keep_last,
                                keep_best=ckpt.keep_best)
        module, cached = self._stage_module(stage)
        ctx = dict(stage=stage, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   best=best, results=results, metrics=metrics, saver=saver, cached=cached,
                   module=module, nonfinite=0)
        self.meter.peak = peak_flops(self.device, self.precision)
        if self.meter.peak and stage.epochs > pos.epoch:
            self.meter.flops_per_sample = self._flops_per_sample(StageModule(self.model, stage.task), stage)

        if self.is_main:
            log.info(epoch_log.stage_start(
                name=stage.name, index=pos.stage_index, count=self.stage_count,
                task=type(stage.task).__name__, n_epochs=stage.epochs, start_epoch=pos.epoch,
                steps_per_epoch=steps_per_epoch,
                samples_per_step=self.cfg.batch_size * accumulate * self.world_size,
                # The configured (peak) learning rate: a warmup starts the schedule below it.
                frozen=stage.freeze, lr=stage.lr if stage.lr is not None else self.optimizer_cfg.lr,
                lr_scale=stage.lr_scale, monitor=stage.monitor,
                mode=stage.monitor_mode, patience=stage.patience, min_delta=stage.min_delta))
        if stage.epochs == 0:  # evaluate-only stage: still leaves last.pt/best.pt for eval
            metrics = self.validate(stage)
            self._update_best(ctx, metrics, epoch=0)
            self._save_last(ctx, Position(pos.stage_index, 0, 0, self._global_step))
        stage_started = time.perf_counter()
        for epoch in range(pos.epoch, stage.epochs):
            skip = pos.step if epoch == pos.epoch else 0
            train_loss, samples_per_s = self._train_epoch(ctx, pos.stage_index, epoch, skip,
                                                          steps_per_epoch, accumulate)
            metrics = self.validate(stage)
            self.logger.log({f"{stage.name}/val/{k}": v for k, v in metrics.items()}, self._global_step,
                            stage=stage.name, epoch=epoch + 1, split="val")
            improved = self._update_best(ctx, metrics, epoch + 1)
            stop = self._early_stop(ctx, metrics[stage.monitor])
            if stop:
                ctx["best"]["stopped_epoch"] = epoch + 1
            # A stage that stopped early is saved as finished, so a resume goes on to the next one.
            self._save_last(ctx, Position(pos.stage_index, stage.epochs if stop else epoch + 1, 0,
                                          self._global_step))
            if self.is_main:
                done = epoch + 1 - pos.epoch
                per_epoch = (time.perf_counter() - stage_started) / done
                log.info(epoch_log.epoch_line(
                    name=stage.name, epoch=epoch + 1, epochs=stage.epochs, train_loss=train_loss,
                    metrics=metrics, monitor=stage.monitor, improved=improved, best=ctx["best"],
                    patience_left=None if stage.patience is None else stage.patience - ctx["best"]["wait"],
                    samples_per_s=samples_per_s, elapsed=time.perf_counter() - self.started,
                    eta=None if stop else per_epoch * (stage.epochs - epoch - 1)))
            if stop:
                if self.is_main:
                    log.info(epoch_log.early_stop(name=stage.name, epoch=epoch + 1, epochs=stage.epochs,
                                                  monitor=stage.monitor, best=ctx["best"],
                                                  patience=stage.patience))
                break
        return self._stage_result(stage, ctx["metrics"], ctx["best"])

    def _stage_result(self, stage: Stage, metrics: dict[str, float], best: dict[str, Any]) -> dict:
        """What metrics.json says of a stage: its last validation metrics, and its best epoch
        with that epoch's metrics and the checkpoint files that exist for it."""
        folder = self.run_dir / "checkpoints" / stage.name
        keep_best = max(1, self.cfg.checkpoint.keep_best)
        # With keep_best=1 only best.pt is written: the ranked names are internal then.
        top = [[v, "best.pt" if keep_best == 1 else n] for v, n in best.get("top", [])]
        public = {k: v for k, v in best.items() if k not in ("wait", "reference")}
        public.update(top=top, checkpoint=str(folder / "best.pt"))
        return {"val": metrics, "last_epoch": best.get("stopped_epoch") or stage.epochs, "best": public}

    def _stage_module(self, stage: Stage) -> tuple[torch.nn.Module, bool]:
        """The module the step loop calls: compiled if asked, then wrapped in DDP.

        Returns (module, cached): with contrastive_accumulation=cache the loop calls the
        task's `embed` on the plain model instead (see contrastive_cache.py).
        """
        cached = (self.cfg.contrastive_accumulation == "cache" and self.cfg.accumulate_grad_batches > 1
                  and supports_cache(stage.task))
        module: torch.nn.Module = StageModule(self.model, stage.task)
        if cached:
            return module, True
        if self.cfg.compile:
            # Compiles the wrapper; self.model keeps its own parameter names, so checkpoints
            # saved from it load without compile.
            module = torch.compile(module, backend=self.cfg.compile_backend)
        if dist.is_distributed():
            # Stages use part of the model (pretraining leaves the classifier idle), so DDP
            # must look for parameters without gradients; their .grad stays None.
            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        return module, False

    def _flops_per_sample(self, module: StageModule, stage: Stage) -> float:
        """Training FLOPs per sample, counted once on a training-sized slice of a validation
        batch (same shapes). Train mode, as the step runs (cuDNN RNNs have no backward in
        eval mode), with the RNG forked and the buffers (BatchNorm statistics) restored, so
        the run itself is not disturbed."""
        buffers = [b.detach().clone() for b in self.model.buffers()]
        self._set_train_mode(stage)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            batch = next(iter(self.val_loader))
            batch = to_device({k: v[: self.cfg.batch_size] for k, v in batch.items()}, self.device)
            with autocast(self.device, self.precision):
                flops = count_train_flops(lambda: module(batch)["loss"])
        with torch.no_grad():
            for b, saved in zip(self.model.buffers(), buffers):
                b.copy_(saved)
        self.model.zero_grad(set_to_none=True)
        return flops / batch["image"].shape[0]

    def validate(self, stage: Stage) -> dict[str, float]:
        metrics = None
        if self.is_main:
            with dist.local_only():
                metrics = evaluate(self.model, stage.task, self.val_loader, self.device, self.precision,
                                   limit=self.cfg.limit_eval_batches)
        return dist.broadcast_object(metrics)

    # ------------------------------------------------------------------ steps

    def _train_epoch(self, ctx: dict, stage_index: int, epoch: int, skip: int,
                     steps_per_epoch: int, accumulate: int) -> tuple[float | None, float]:
        """-> the mean training loss of the steps this process ran, and samples/s over all ranks."""
        stage: Stage = ctx["stage"]
        optimizer = ctx["optimizer"]
        sampler = self.train_loader.sampler
        sampler.set_epoch(epoch, skip=skip * accumulate * self.cfg.batch_size)
        self._set_train_mode(stage)
        log_every = max(1, self.cfg.log_every_n_steps)
        every_n = self.cfg.checkpoint.every_n_steps
        running: dict[str, torch.Tensor] = {}
        count = 0
        bar = tqdm(total=steps_per_epoch, initial=skip, desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
                   disable=not (self.cfg.progress and self.is_main), dynamic_ncols=True, leave=False)
        # The iterator draws its worker seed from the loader's own generator (make_loader), not
        # the global RNG, so a run resumed mid-epoch (one more iterator) does not drift.
        batches = iter(self.train_loader)
        optimizer.zero_grad(set_to_none=True)
        self.meter.reset()
        epoch_loss: torch.Tensor | float = 0.0  # summed on the device, read once at the end
        epoch_started, epoch_samples = time.perf_counter(), 0
        for step in range(skip, steps_per_epoch):
            try:
                out = self._accumulate(ctx, batches, accumulate)
                self._optimizer_step(ctx)
            except torch.OutOfMemoryError:
                optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self._save_last(ctx, Position(stage_index, epoch, step, self._global_step))
                raise ConfigError(
                    f"CUDA out of memory at step {self._global_step + 1} of stage {stage.name} with "
                    f"trainer.batch_size={self.cfg.batch_size}: lower it and raise "
                    f"trainer.accumulate_grad_batches to keep the batch (or use precision=bf16-mixed); "
                    f"last.pt saved, resume with trainer.resume=true") from None
            for k, v in out.items():
                running[k] = running.get(k, 0.0) + v
            epoch_loss = epoch_loss + out["loss"]
            epoch_samples += self.cfg.batch_size * accumulate
            count += 1
            self._global_step += 1
            done = step + 1
            bar.update(1)
            if done % log_every == 0 or done == steps_per_epoch:
                # The only host sync for logging, once per log interval.
                values = {k: float(v) / count for k, v in dist.mean_over_ranks(running).items()}
                values.update(self.meter.read(), lr=optimizer.param_groups[0]["lr"])
                self.logger.log({f"{stage.name}/train/{k}": v for k, v in values.items()},
                                self._global_step, stage=stage.name, epoch=epoch + 1, split="train")
                bar.set_postfix(loss=f"{values['loss']:.4f}")
                running, count = {}, 0
            if dist.any_rank(self.stop.requested is not None):
                self._save_last(ctx, Position(stage_index, epoch, done, self._global_step))
                dist.barrier()  # no rank exits (and makes torchrun stop the others) before the save
                bar.close()
                raise Preempted(f"stopped by {self.stop.requested or 'a signal on another rank'} after "
                                f"step {self._global_step} (stage {stage.name}, epoch {epoch + 1}); "
                                f"last.pt saved: continue with {resume_command(self.run_dir)}")
            if every_n and done % every_n == 0 and done < steps_per_epoch:
                self._save_last(ctx, Position(stage_index, epoch, done, self._global_step))
        bar.close()
        steps = steps_per_epoch - skip
        seconds = max(time.perf_counter() - epoch_started, 1e-9)
        if steps == 0:
            return None, 0.0
        loss = dist.mean_over_ranks({"loss": torch.as_tensor(epoch_loss) / steps})["loss"]
        return float(loss), epoch_samples * self.world_size / seconds

    def _next_batch(self, batches: Iterator) -> dict[str, torch.Tensor]:
        waited = time.perf_counter()
        batch = to_device(next(batches), self.device)
        self.meter.data_wait(time.perf_counter() - waited)
        self.meter.add(batch["image"].shape[0])
        if self.cfg.channels_last:
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        return batch

    def _accumulate(self, ctx: dict, batches: Iterator, accumulate: int) -> dict[str, torch.Tensor]:
        """Forward and backward over `accumulate` micro-batches; -> their mean outputs (on device)."""
        stage, scaler, module = ctx["stage"], ctx["scaler"], ctx["module"]
        amp = lambda: autocast(self.device, self.precision)  # noqa: E731
        if ctx["cached"]:
            micro = [self._next_batch(batches) for _ in range(accumulate)]
            return cached_contrastive_backward(self.model, stage.task, micro, amp, scaler.scale)
        totals: dict[str, torch.Tensor] = {}
        for i in range(accumulate):
            batch = self._next_batch(batches)
            # Under DDP only the last micro-batch all-reduces; the others add to local grads.
            last = i == accumulate - 1
            sync = contextlib.nullcontext() if last or not isinstance(module, DistributedDataParallel) \
                else module.no_sync()
            with sync:
                with amp():
                    out = module(batch)
                # Mean over micro-batches: N micro-batches of B give the gradient of one batch
                # of N*B for a per-sample mean loss.
                scaler.scale(out["loss"] / accumulate).backward()
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / accumulate
        return totals

    def _optimizer_step(self, ctx: dict) -> None:
        optimizer, scaler, stage = ctx["optimizer"], ctx["scaler"], ctx["stage"]
        scaler.unscale_(optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.cfg.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if bool(torch.isfinite(norm)):
            scaler.step(optimizer)
            ctx["nonfinite"] = 0
        else:
            ctx["nonfinite"] += 1
            if self.is_main:
                log.warning("non-finite gradient at step %d of stage %s: step skipped (%d in a row)",
                            self._global_step + 1, stage.name, ctx["nonfinite"])
            if ctx["nonfinite"] >= self.cfg.max_nonfinite_steps:
                raise MmtrainError(
                    f"{ctx['nonfinite']} non-finite gradients in a row up to step {self._global_step + 1} "
                    f"of stage {stage.name}: lower optimizer.lr, set trainer.grad_clip, or use "
                    f"precision=32 or bf16-mixed instead of fp16-mixed")
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        ctx["scheduler"].step()

    def _set_train_mode(self, stage: Stage) -> None:
        self.model.train()
        # Frozen parts also keep their BatchNorm statistics and skip dropout.
        for name in stage.freeze:
            self.model.get_submodule(name).eval()

    # ------------------------------------------------------------------ checkpoints

    def _update_best(self, ctx: dict, metrics: dict[str, float], epoch: int) -> bool:
        """Rank this epoch's checkpoint by the monitor; -> whether it is the new best."""
        best, stage = ctx["best"], ctx["stage"]
        ctx["metrics"] = metrics
        if stage.monitor not in metrics:
            raise ConfigError(f"stages.{stage.name}.monitor={stage.monitor!r} is not a metric of "
                              f"{type(stage.task).__name__} (it reports: {', '.join(metrics)})")
        value = metrics[stage.monitor]
        saver: CheckpointSaver = ctx["saver"]
        name = f"best-epoch{epoch:03d}.pt"
        kept, dropped = saver.rank(best.get("top", []), value, best["mode"], name)
        if name not in [n for _, n in kept]:
            return False
        best["top"] = kept
        improved = kept[0][1] == name
        if improved:
            best.update(value=value, epoch=epoch, metrics=dict(metrics))
        if self.is_main:
            saver.save_best(self._payload(ctx, None), kept, dropped, name)
        return improved

    def _early_stop(self, ctx: dict, value: float) -> bool:
        """Lightning's EarlyStopping on the stage's monitor: an improvement must beat the last
        improving value by more than min_delta; `patience` validations without one stop the
        stage. Its state lives in `best`, which last.pt holds, so a resume counts on exactly."""
        stage, best = ctx["stage"], ctx["best"]
        if stage.patience is None:
            return False
        reference = best.get("reference")
        sign = 1.0 if stage.monitor_mode == "max" else -1.0
        if reference is None or sign * (value - reference) > stage.min_delta:
            best.update(reference=value, wait=0)
            return False
        best["wait"] = best.get("wait", 0) + 1
        return best["wait"] >= stage.patience

    def _save_last(self, ctx: dict, pos: Position) -> None:
        if self.is_main:
            ctx["saver"].save_last(self._payload(ctx, pos), pos.global_step)

    def _payload(self, ctx: dict, pos: Position | None) -> dict[str, Any]:
        stage: Stage = ctx["stage"]
        payload = {
            "format": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "config": self.config,
            "tokenizer": self.data.tokenizer.to_json(),
            "data_info": self.data.info.to_payload(),
            "stage": stage.name,
            "metrics": ctx["metrics"],
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
        return payload
