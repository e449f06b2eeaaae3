"""How much slower is a step under mmtrain's Trainer than under a minimal hand-written loop?

Both train the same model (the default synthetic recipe's fine-tuning stage: CNN + GRU +
concat fusion + classification head) on the same data, batch size, optimizer, schedule
and gradient clipping, in this one process, alternating in rounds (in turn reversed) so
that drift of the machine (other processes, CPU clocks) hits all loops alike. A step is
timed from one batch fetch to the next, data loading included, in every loop (on a GPU
after a synchronize, so queued kernels are counted). With PyTorch Lightning installed,
the same module under Lightning's Trainer is a third column.

    python scripts/bench_overhead.py [--rounds 12] [--steps 8] [--device cpu] [--threads N]
                                     [--clock wall|cpu] [overrides ...]

Prints each loop's median step time and its ratio to the minimal loop (the median over
rounds of the ratio within a round). Target: mmtrain within 3 %, a ratio <= 1.03.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import hydra.utils
import torch
from omegaconf import OmegaConf

from mmtrain import data as data_lib
from mmtrain.build import build_tasks
from mmtrain.config import compose_config
from mmtrain.data.loader import make_loader, to_device
from mmtrain.engine.logger import MetricLogger
from mmtrain.engine.optimizer import build_optimizer
from mmtrain.engine.precision import resolve_device
from mmtrain.engine.trainer import Trainer, TrainerSettings
from mmtrain.models.model import StageModule, build_model

WARMUP = 2
"""Steps dropped at the start of each round: allocator and autograd warm-up."""


CLOCK = time.perf_counter
"""Wall clock by default; --clock cpu (process CPU time) ignores time lost to other processes."""


class TimedLoader:
    """Wraps a DataLoader and records the time of every batch fetch (the loop's heartbeat)."""

    def __init__(self, loader: Any, marks: list[float]) -> None:
        self.loader, self.marks = loader, marks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            self.marks.append(CLOCK())
            yield batch


def step_times(marks: list[float]) -> list[float]:
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    return gaps[WARMUP:]


def setup(overrides: list[str]) -> tuple[Any, Any]:
    cfg = compose_config("train", overrides)
    torch.manual_seed(cfg.seed)
    return cfg, data_lib.build(cfg.data)


def build(cfg: Any, data: Any) -> tuple[Any, Any]:
    """A fresh model (same seed every round) and the recipe's last stage, one epoch long."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.info)
    stage = build_tasks(cfg, model, data.info)[-1]
    stage.epochs = 1
    return model, stage


def mmtrain_round(cfg: Any, data: Any, device: torch.device, steps: int) -> list[float]:
    model, stage = build(cfg, data)
    marks: list[float] = []
    with tempfile.TemporaryDirectory() as run_dir:
        logger = MetricLogger(Path(run_dir))
        trainer = Trainer(model, data, Path(run_dir), settings=TrainerSettings.from_config(cfg.trainer, device),
                          optimizer=functools.partial(build_optimizer, cfg.optimizer, device=device),
                          scheduler=hydra.utils.instantiate(cfg.scheduler), device=device, seed=cfg.seed,
                          config=OmegaConf.to_container(cfg, resolve=True), logger=logger)
        trainer.train_loader = TimedLoader(trainer.train_loader, marks)
        trainer.fit([stage])
        logger.close()
    return step_times(marks[: steps + 1])


def minimal_round(cfg: Any, data: Any, device: torch.device, steps: int) -> list[float]:
    """The loop anyone would write: forward, backward, clip, step, schedule. Nothing else."""
    model, stage = build(cfg, data)
    model.to(device).train()
    module = StageModule(model, stage.task)
    optimizer = build_optimizer(cfg.optimizer, model)
    scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer, total_steps=steps)
    loader = make_loader(data.train, cfg.trainer.batch_size, train=True, seed=cfg.seed, device=device)
    marks: list[float] = []
    for i, batch in enumerate(TimedLoader(loader, marks)):
        if i == steps:
            break
        loss = module(to_device(batch, device))["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return step_times(marks)


def lightning_round(cfg: Any, data: Any, device: torch.device, steps: int) -> list[float]:
    import lightning as L

    model, stage = build(cfg, data)
    marks: list[float] = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.stage_module = StageModule(model, stage.task)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return self.stage_module(batch)["loss"]

        def configure_optimizers(self) -> Any:
            optimizer = build_optimizer(cfg.optimizer, model)
            scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer, total_steps=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    loader = make_loader(data.train, cfg.trainer.batch_size, train=True, seed=cfg.seed, device=device)
    trainer = L.Trainer(accelerator=device.type, devices=1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=cfg.trainer.grad_clip,
                        num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(Module(), train_dataloaders=TimedLoader(loader, marks))
    return step_times(marks[: steps + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loop per round")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: process CPU time, steadier on a machine shared with other work "
                             "(CPU device only)")
    parser.add_argument("--no-lightning", action="store_true", help="skip Lightning even if installed")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    steps = args.steps + WARMUP
    cfg, data = setup([f"trainer.limit_train_batches={steps}", "trainer.limit_eval_batches=1",
                       "trainer.progress=false", f"trainer.log_every_n_steps={steps}",
                       f"trainer.device={args.device}", *args.overrides])
    device = resolve_device(cfg.trainer.device)
    if device.type == "cuda":
        clock = CLOCK
        CLOCK = lambda: (torch.cuda.synchronize(), clock())[1]  # noqa: E731
    loops: dict[str, Callable] = {"minimal": minimal_round, "mmtrain": mmtrain_round}
    if not args.no_lightning:
        try:
            import lightning  # noqa: F401

            loops["lightning"] = lightning_round
        except ImportError:
            print("(lightning not installed: two columns)")
    times: dict[str, list[float]] = {name: [] for name in loops}
    ratios: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.rounds):
        # Reverse the order every other round: no loop always runs right after another.
        medians = {}
        for name in list(loops)[:: -1 if r % 2 else 1]:
            steps_s = loops[name](cfg, data, device, steps)
            times[name] += steps_s
            medians[name] = statistics.median(steps_s)
        for name in loops:
            ratios[name].append(medians[name] / medians["minimal"])
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{n} {m * 1e3:.2f} ms" for n, m in medians.items()), flush=True)

    # The ratio is taken within each round (loops seconds apart, under the same load), then
    # the median over rounds: on a shared machine the load drifts more between rounds than
    # the loops differ.
    print(f"\n{device} | {args.clock} clock | torch {torch.__version__} | {torch.get_num_threads()} threads | batch "
          f"{cfg.trainer.batch_size} | {args.rounds} rounds x {args.steps} steps per loop")
    print(f"{'loop':<10} {'median step':>12} {'ratio to minimal':>17}")
    for name in loops:
        print(f"{name:<10} {statistics.median(times[name]) * 1e3:>9.2f} ms "
              f"{statistics.median(ratios[name]):>17.3f}")

if __name__ == "__main__":
    main()
