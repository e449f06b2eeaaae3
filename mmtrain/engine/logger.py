"""Where metrics go: TensorBoard (tb/) and a JSON-lines log (log.jsonl) that reports read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricLogger:
    """Writes scalars to TensorBoard and log.jsonl; a disabled logger (non-zero ranks) does nothing."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        self.jsonl = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "log.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tb"))

    def log(self, values: dict[str, float], step: int, **context: Any) -> None:
        """`values` by tag (e.g. 'pretrain/train/loss'), at the global optimizer step."""
        if not self.enabled:
            return
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.add_scalar(tag, v, step)
        self.jsonl.write(json.dumps({"step": step, **context, **values}) + "\n")
        self.jsonl.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()
