"""The sweep summary: `mmtrain report` run on the sweep dir when a multirun ends.

Configured in conf/train.yaml as a Hydra callback. Hydra 1.3's sweepers (the basic one,
and Optuna's past its max_failure_rate) raise when a batch of jobs holding a failed one
ends, and `on_multirun_end` is then never called. So once any job of the sweep has
failed, every job end also refreshes the summary: the sweep dir holds one that lists the
failure whatever the sweeper does next.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mmtrain.errors import MmtrainError
from mmtrain.report import write_report
from mmtrain.runs import read_json

log = logging.getLogger("mmtrain")


class SweepSummary(Callback):
    """Writes summary.md, summary.csv and plots/ into the sweep dir (`metric`: as `--metric`)."""

    def __init__(self, metric: str | None = None) -> None:
        self.metric = metric

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        if job_return.status == JobStatus.FAILED or _any_failed(sweep_dir):
            self._write(sweep_dir, show=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(Path(config.hydra.sweep.dir), show=True)

    def _write(self, sweep_dir: Path, show: bool) -> None:
        try:
            _, markdown = write_report([sweep_dir], sweep_dir, self.metric)
        except MmtrainError as e:  # e.g. the sweep's first job failed before writing its run dir
            log.warning("sweep summary not written: %s", e)
            return
        if not show:
            log.info("sweep summary updated: %s (a job failed: the sweep will exit non-zero)",
                     sweep_dir / "summary.md")
        else:
            print(f"\n{markdown}\nsweep summary: {sweep_dir / 'summary.md'} (plots in "
                  f"{sweep_dir / 'plots'})", flush=True)


def _any_failed(sweep_dir: Path) -> bool:
    return any((read_json(p) or {}).get("status") == "failed" for p in sweep_dir.rglob("status.json"))
