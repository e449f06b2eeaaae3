"""`mmtrain train`: config -> data -> model -> tasks -> trainer -> run dir."""

from __future__ import annotations

import functools
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from mmtrain import run_dir as run_dir_lib
from mmtrain.atomic import write_json
from mmtrain.build import build_run, follow_pretrained_preprocessing, seed_everything
from mmtrain.config import TrainConfig, check_train_config, config_dir, instantiate, register_schemas
from mmtrain.errors import ConfigError

log = logging.getLogger("mmtrain")


def main() -> None:
    register_schemas()
    app = hydra.main(config_path=config_dir(), config_name="train", version_base="1.3")(run)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        app()  # a single process: torch waits until the config is known to be good
        return
    from mmtrain import distributed

    # Under torchrun: join the ranks before Hydra picks the run dir, so they pick one.
    distributed.init_from_env()
    try:
        app()
    finally:
        distributed.shutdown()


def run(cfg: DictConfig) -> float | None:
    """One Hydra job. Locks the run dir, checks the start, then writes `.hydra/` and
    status.json; leaves status.json truthful whatever happens next (sweep reports read it)."""
    from mmtrain import distributed
    from mmtrain.engine.preemption import Preempted, StopSignal, Stopped

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    main_rank = distributed.rank() == 0
    if not main_rank:
        logging.getLogger("mmtrain").setLevel(logging.WARNING)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        if hydra_cfg.job.num == 0:  # a new sweep in this process (a notebook's second one)
            StopSignal.received = None
        elif StopSignal.received:
            raise Preempted(f"not started: {StopSignal.received} stopped an earlier job of this sweep "
                            f"(nothing was written to {run_dir})")
    try:
        with StopSignal() as stop, run_dir_lib.writer_lock(run_dir, enabled=main_rank) as lock:
            try:
                start, begun = _checked_start(cfg, run_dir, hydra_cfg, lock)
            except Exception as e:
                _record_refusal(e, cfg, run_dir, hydra_cfg, lock)
                raise
            if lock is not None:
                lock.accept()
            summary = _run_accepted(start, begun, run_dir, hydra_cfg, stop, main_rank)
    except Stopped as e:  # only before the start was accepted: later ones become Preempted
        raise Preempted(f"stopped by {e.signame} before the run started: nothing was written "
                        f"to {run_dir}; run the same command again") from None
    return summary.get("objective")


def _record_refusal(error: Exception, cfg: DictConfig, run_dir: Path, hydra_cfg: Any,
                    lock: run_dir_lib.WriterLock | None) -> None:
    """A start refused in a run dir that held no run (a sweep job with a bad value): say so
    there, as "failed", so that sweep summaries list it. A dir holding a run stays as it was."""
    if lock is None or lock.fd is None or not run_dir_lib.holds_no_run(run_dir):
        return
    lock.accept()
    run_dir_lib.write_hydra_files(run_dir, run_dir_lib.Start(cfg, list(hydra_cfg.overrides.task),
                                                             dict(hydra_cfg.runtime.choices)), hydra_cfg)
    now = time.time()
    write_json(run_dir / "status.json", {"status": "failed", "started": now, "ended": now,
                                         "error": f"{type(error).__name__}: {error}"})


def _run_accepted(start: run_dir_lib.Start, begun: tuple[Path | None, dict | None], run_dir: Path,
                  hydra_cfg: Any, stop: Any, main_rank: bool) -> dict[str, Any]:
    from mmtrain.engine.preemption import Preempted, Stopped

    status = run_dir / "status.json"
    started = time.time()
    resume_path = begun[0]
    # A run continued in its own dir counts its earlier sessions' time too (reports show it).
    earlier = _earlier_seconds(status) if resume_path is not None and run_dir_lib.inside(resume_path, run_dir) else 0.0
    try:
        if main_rank:
            run_dir_lib.remove_leftovers(run_dir)
            run_dir_lib.write_hydra_files(run_dir, start, hydra_cfg)
            write_json(status, {"status": "running", "started": started, "seconds": earlier})
        if start.note:
            log.info(start.note)
        summary = train(start.cfg, run_dir, stop=stop, begun=begun)
        stop.hold()  # done: a signal from now on changes nothing
        if main_rank:
            ended = time.time()
            write_json(status, {"status": "completed", "started": started, "ended": ended,
                                "seconds": earlier + ended - started})
        return summary
    except BaseException as e:
        stop.hold()  # a second signal must not cut the status write short
        error = _stopped(e, run_dir, start.cfg) if isinstance(e, Stopped) else e
        state = "interrupted" if isinstance(error, (KeyboardInterrupt, Preempted)) else "failed"
        if main_rank:
            ended = time.time()
            write_json(status, {"status": state, "started": started, "ended": ended,
                                 "seconds": earlier + ended - started,
                                 "error": f"{type(error).__name__}: {error}"})
            (run_dir / "error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        if error is e:
            raise
        raise error from None


def _stopped(stopped: Any, run_dir: Path, cfg: DictConfig) -> Exception:
    """A signal outside the training loop (start-up, final test): what there is to resume."""
    from mmtrain.engine.preemption import Preempted, resume_command

    if run_dir_lib.find_resume(True, run_dir, [str(n) for n in cfg.stages]) is not None:
        return Preempted(f"stopped by {stopped.signame} outside the training steps; last.pt is there: "
                         f"continue with {resume_command(run_dir)}")
    return Preempted(f"stopped by {stopped.signame} before anything was trained: run the same command "
                     f"again (with trainer.resume=true it also starts from scratch)")


def _checked_start(cfg: DictConfig, run_dir: Path, hydra_cfg: Any, lock: run_dir_lib.WriterLock | None
                   ) -> tuple[run_dir_lib.Start, tuple[Path | None, dict | None]]:
    """Lock the run dir, then every refusal of a start, before anything is written. Under
    torchrun rank 0 (`lock` given) decides and every rank gets its decision."""
    from mmtrain import distributed
    from mmtrain.engine.checkpoint import load_checkpoint

    main_rank = lock is not None
    decision: Any = None
    if main_rank:
        try:
            lock.acquire()
            start = run_dir_lib.resumed_config(cfg, run_dir, list(hydra_cfg.overrides.task),
                                               dict(hydra_cfg.runtime.choices),
                                               schema=OmegaConf.structured(TrainConfig))
            begun = begin(start.cfg, run_dir)
            decision = (OmegaConf.to_container(start.cfg), start.overrides, start.choices, begun[0])
        except Exception as e:
            if not distributed.is_distributed():
                raise
            distributed.broadcast_object(f"{type(e).__name__}: {e}")
            raise
    decision = distributed.broadcast_object(decision)
    if main_rank:
        return start, begun
    if isinstance(decision, str):
        raise ConfigError(f"rank 0 refused the start: {decision}")
    container, overrides, choices, resume_path = decision
    resume = load_checkpoint(resume_path) if resume_path is not None else None
    return run_dir_lib.Start(OmegaConf.create(container), overrides, choices), (resume_path, resume)


def begin(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, dict | None]:
    """Check the config and what the run dir holds; -> (checkpoint to resume, its contents)."""
    check_train_config(cfg)
    follow_pretrained_preprocessing(cfg)  # before the resume check: the checkpoint has the followed data
    resume_path = run_dir_lib.prepare_run_dir(cfg, run_dir)
    return resume_path, run_dir_lib.load_resume(cfg, resume_path)


def _earlier_seconds(status: Path) -> float:
    """The time the run's earlier sessions took, from the status.json they left."""
    from mmtrain.runs import read_json

    state = read_json(status) or {}
    if state.get("ended") and state.get("started"):
        return float(state.get("seconds") or float(state["ended"]) - float(state["started"]))
    return float(state.get("seconds") or 0.0)


def train(cfg: DictConfig, run_dir: Path, *, stop: Any = None,
          begun: tuple[Path | None, dict | None] | None = None) -> dict[str, Any]:
    """Train `cfg` into `run_dir` (the Python API; `mmtrain train` calls it from `run`, with
    the start already checked as `begun` and the StopSignal it holds as `stop`)."""
    from mmtrain import distributed
    from mmtrain.engine.logger import MetricLogger, final_metrics, hyperparameters, run_name, task_overrides
    from mmtrain.engine.precision import resolve_device
    from mmtrain.engine.threads import set_num_threads
    from mmtrain.engine.optimizer import build_optimizer
    from mmtrain.engine.trainer import Trainer, TrainerSettings

    resume_path, resume = begun if begun is not None else begin(cfg, run_dir)
    # Before anything is adopted or read: a GPU without bf16 refuses bf16-mixed here.
    device = resolve_device(cfg.trainer.device)
    settings = TrainerSettings.from_config(cfg.trainer, device)
    if cfg.print_config and distributed.rank() == 0:  # once the start is accepted: a refusal logs nothing
        log.info("composed config:\n%s", OmegaConf.to_yaml(cfg, resolve=True).rstrip())
    if resume_path is None and cfg.trainer.resume in (True, "true"):
        log.info("trainer.resume=true but %s has no checkpoint yet: starting from scratch", run_dir)
    container = OmegaConf.to_container(cfg, resolve=True)
    best_files = True  # the best checkpoints a resumed run ranked are in run_dir
    if resume is not None and not run_dir_lib.inside(resume_path, run_dir):
        best_files = run_dir_lib.adopt_checkpoints(resume_path, resume, run_dir, distributed.rank() == 0)
    distributed.barrier()  # every rank has looked before rank 0 writes a checkpoint

    seed_everything(cfg.seed, cfg.trainer.deterministic)
    threads = set_num_threads(cfg.trainer.num_threads)
    built = build_run(cfg, resume, resume_path)
    data, model, stages = built.data, built.model, built.stages
    # Checkpoints carry what rebuilds the pretrained encoders offline (eval, resume).
    container["architecture"] = model.architecture()
    main_rank = distributed.rank() == 0
    logger = MetricLogger(run_dir, cfg.logger, enabled=main_rank, name=run_name(run_dir), config=container)
    hparams = hyperparameters(cfg, task_overrides())
    logger.log_config(OmegaConf.to_yaml(cfg, resolve=True), hparams)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("run dir: %s | device: %s | precision: %s | %.2fM parameters | %d/%d/%d train/val/test"
             " | %d process(es) x batch %d x %d accumulated | %d CPU threads", run_dir, device,
             settings.precision, n_params / 1e6, len(data.train),
             len(data.val), len(data.test), distributed.world_size(), cfg.trainer.batch_size,
             cfg.trainer.accumulate_grad_batches, threads)
    if resume is not None:
        log.info("resuming from %s at %s", resume_path, resume["position"])

    try:
        trainer = Trainer(model, data, run_dir, settings=settings,
                          optimizer=functools.partial(build_optimizer, cfg.optimizer, device=device),
                          scheduler=instantiate(cfg.scheduler), device=device, seed=cfg.seed,
                          config=container, logger=logger, stop=stop)
        results = trainer.fit(stages, resume=resume, best_files=best_files)
        summary = _test_and_summarize(cfg, run_dir, trainer, stages, results, main_rank, built.transferred)
        logger.log_final(hparams, final_metrics(summary), trainer.global_step,
                         [Path(p) for p in summary.get("artifacts", [])])
    finally:
        logger.close()
    return summary


def _test_and_summarize(cfg: DictConfig, run_dir: Path, trainer: Any, stages: list, results: dict,
                        main_rank: bool, transferred: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0 tests the last stage's best.pt, writes metrics.json and prints the table."""
    from mmtrain.data.loader import make_loader
    from mmtrain import distributed
    from mmtrain.engine import epoch_log
    from mmtrain.engine.checkpoint import load_checkpoint, load_model_state
    from mmtrain.engine.trainer import evaluate

    model, data, device = trainer.model, trainer.data, trainer.device
    final = stages[-1]
    summary: dict[str, Any] = {"stages": results, "run_dir": str(run_dir)}
    if transferred is not None:
        summary["init_from"] = transferred
    if not main_rank:  # rank 0 tests, writes metrics.json and prints
        return summary
    best_path = trainer.checkpoint_path(final.name, "best")
    summary["objective"] = results[final.name]["best"]["value"]
    if cfg.test:
        load_model_state(model, load_checkpoint(best_path)["model"], best_path)
        loader = make_loader(data.test, trainer.eval_batch_size, train=False,
                             num_workers=cfg.trainer.num_workers, device=device)
        with distributed.local_only():  # rank 0 alone: a task's collectives must not wait on others
            test = evaluate(model, final.task, loader, device, trainer.precision,
                            limit=cfg.trainer.limit_eval_batches)
        summary["test"] = test.metrics
        summary["test_checkpoint"] = str(best_path)
        if test.artifacts:
            summary["artifacts"] = [str(p) for p in test.write_artifacts(run_dir / "artifacts")]
    write_json(run_dir / "metrics.json", summary)
    log.info(epoch_log.run_end(summary, time.perf_counter() - trainer.started))
    print_summary(summary)
    return summary


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, float]]:
    """(where the figure comes from, metric, value): every figure names its split and checkpoint."""
    rows = []
    stages = summary["stages"]
    for stage, res in stages.items():
        best, last = res["best"], res.get("last_epoch")
        same = best.get("epoch") == last and best.get("metrics")
        label = f"{stage}/val (last epoch {last}{', best' if same else ''})" if last is not None \
            else f"{stage}/val (last epoch)"
        rows += [(label, k, v) for k, v in res["val"].items()]
        if not same and best.get("value") is not None:
            shown = best.get("metrics") or {best["metric"]: best["value"]}
            rows += [(f"{stage}/val (best, epoch {best['epoch']})", k, v) for k, v in shown.items()]
    if "test" in summary:
        final = stages[list(stages)[-1]]["best"]
        where = "/".join(Path(summary["test_checkpoint"]).parts[-2:])
        label = f"test ({where}, epoch {final['epoch']})" if final.get("epoch") is not None \
            else f"test ({where})"
        rows += [(label, k, v) for k, v in summary["test"].items()]
    return rows


def print_summary(summary: dict[str, Any]) -> None:
    rows = summary_rows(summary)
    scope_w = max((len(r[0]) for r in rows), default=5)
    name_w = max((len(r[1]) for r in rows), default=6)
    lines = [f"{'split (checkpoint)':<{scope_w}}  {'metric':<{name_w}}  value", "-" * (scope_w + name_w + 12)]
    lines += [f"{scope:<{scope_w}}  {name:<{name_w}}  {value:.4f}" for scope, name, value in rows]
    lines.append(f"run dir: {summary['run_dir']}")
    print("\n".join(lines), flush=True)
