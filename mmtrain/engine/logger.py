"""Where metrics go: log.jsonl and metrics.csv always, TensorBoard, Weights & Biases, MLflow.

`MetricLogger` fans every call out to the backends the `logger` config group enables:

- log.jsonl (what `mmtrain report` reads) and metrics.csv (one row per value: step, stage,
  epoch, split, metric, value; append-only, so a resumed run simply continues it);
- TensorBoard (tb/): the scalars, the composed config as text, the test metrics, and at
  the end the key and swept hyperparameters with the final metrics through the HParams
  plugin, so `tensorboard --logdir multirun/` compares a sweep; artifacts as images/text;
- W&B and MLflow (optional extras): the same, offline-capable (`logger.wandb.mode=offline`,
  an MLflow `file:` tracking URI). Their packages are imported only when enabled.

A disabled logger (ranks other than 0) does nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any


def _markdown_code(text: str) -> str:
    # TensorBoard's text plugin renders Markdown: an indented block keeps YAML's layout.
    return "\n".join("    " + line for line in text.splitlines())


def _image(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


class _TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tb"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def config(self, yaml_text: str, hparams: dict[str, Any]) -> None:
        self.writer.add_text("config", _markdown_code(yaml_text), 0)

    def final(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        # As Lightning does: the HParams summaries in the run's own event file (add_hparams
        # would open a subfolder per call), and each metric as a scalar the plugin can find.
        exp, ssi, sei = hparams_summary(hparams, metrics)
        writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)
        self.scalars(metrics, step)

    def artifact(self, path: Path, step: int) -> None:
        if path.suffix == ".png":
            self.writer.add_image(f"artifacts/{path.stem}", _image(path), step, dataformats="HWC")
        elif path.suffix in (".json", ".txt"):
            self.writer.add_text(f"artifacts/{path.stem}", _markdown_code(path.read_text(encoding="utf-8")), step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, run_dir: Path, cfg: Any, name: str, config: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        # One W&B run per run dir: a resumed run continues the same W&B run.
        run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, name=name, group=cfg.group,
                              tags=list(cfg.tags or []), mode=cfg.mode, dir=str(run_dir), id=run_id,
                              resume="allow", config=config, reinit="create_new")

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def config(self, yaml_text: str, hparams: dict[str, Any]) -> None:
        self.run.config.update({"hparams": hparams}, allow_val_change=True)

    def final(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.run.summary.update(metrics)

    def artifact(self, path: Path, step: int) -> None:
        if path.suffix == ".png":
            self.run.log({f"artifacts/{path.stem}": self.wandb.Image(str(path))}, step=step)
        else:
            self.run.save(str(path), base_path=str(path.parent), policy="now")

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, run_dir: Path, cfg: Any, name: str) -> None:
        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps the file store (the offline one, no server) behind an opt-in.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.Metric, self.Param = Metric, Param
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.experiment)
        # A resumed run continues the MLflow run its run dir recorded.
        id_file = run_dir / ".mlflow_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if run_id is None:
            run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            id_file.write_text(run_id)
        self.run_id = run_id

    def scalars(self, values: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.Metric(k, float(v), now, step)
                                                    for k, v in values.items()])

    def config(self, yaml_text: str, hparams: dict[str, Any]) -> None:
        self.client.log_text(self.run_id, yaml_text, "config.yaml")
        params = [self.Param(k, str(v)[:500]) for k, v in hparams.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def final(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        self.scalars(metrics, step)

    def artifact(self, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), "artifacts")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class MetricLogger:
    """Writes scalars to log.jsonl, metrics.csv and the backends `cfg` (the `logger` config) enables."""

    def __init__(self, run_dir: Path, cfg: Any = None, enabled: bool = True, name: str = "run",
                 config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.backends: list[Any] = []
        self.jsonl = None
        self.csv_file = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(run_dir / "log.jsonl", "a", encoding="utf-8")
        csv_path = run_dir / "metrics.csv"
        new = not csv_path.is_file() or csv_path.stat().st_size == 0
        self.csv_file = open(csv_path, "a", encoding="utf-8", newline="")
        self.csv = csv.writer(self.csv_file)
        if new:
            self.csv.writerow(["step", "stage", "epoch", "split", "metric", "value"])
        if cfg is None:  # log.jsonl and metrics.csv only
            return
        if cfg.tensorboard:
            self.backends.append(_TensorBoard(run_dir))
        if cfg.wandb.enabled:
            self.backends.append(_Wandb(run_dir, cfg.wandb, name, config or {}))
        if cfg.mlflow.enabled:
            self.backends.append(_MLflow(run_dir, cfg.mlflow, name))

    def log(self, values: dict[str, float], step: int, **context: Any) -> None:
        """`values` by tag (e.g. 'pretrain/train/loss'), at the global optimizer step."""
        if not self.enabled:
            return
        for backend in self.backends:
            backend.scalars(values, step)
        self.jsonl.write(json.dumps({"step": step, **context, **values}) + "\n")
        self.jsonl.flush()
        for tag, v in values.items():
            self.csv.writerow([step, context.get("stage", ""), context.get("epoch", ""),
                               context.get("split", ""), tag, v])
        self.csv_file.flush()

    def log_config(self, yaml_text: str, hparams: dict[str, Any]) -> None:
        """The composed config (as text) and the hyperparameters that identify the run."""
        if self.enabled:
            for backend in self.backends:
                backend.config(yaml_text, hparams)

    def log_final(self, hparams: dict[str, Any], metrics: dict[str, float], step: int,
                  artifacts: list[Path] = ()) -> None:
        """At the end: hyperparameters with the final metrics (TensorBoard's HParams view), and
        the artifacts (confusion matrix as an image, example captions as text)."""
        if not self.enabled:
            return
        for backend in self.backends:
            backend.final(hparams, metrics, step)
            for path in artifacts:
                backend.artifact(Path(path), step)

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends = []
        for f in (self.jsonl, self.csv_file):
            if f is not None:
                f.close()
        self.jsonl = self.csv_file = None


def run_name(run_dir: Path) -> str:
    """How the run is called in W&B / MLflow: its run dir relative to where it was started."""
    try:
        return str(run_dir.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return run_dir.name


def task_overrides() -> list[str]:
    """The command line's overrides (a sweep's swept values among them); none outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def _scalar(value: Any) -> bool | int | float | str:
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def hyperparameters(cfg: Any, overrides: list[str]) -> dict[str, bool | int | float | str]:
    """The key hyperparameters of a run, plus every override it was started with (so each
    swept key is a column of TensorBoard's HParams table). Groups show the class they chose."""
    hp: dict[str, Any] = {}
    for part in ("image_encoder", "text_encoder", "fusion"):
        hp[f"model/{part}"] = str(cfg.model[part]._target_).rpartition(".")[2]
    hp["optimizer"] = str(cfg.optimizer._target_).rpartition(".")[2]
    for key in ("lr", "weight_decay"):
        if key in cfg.optimizer:
            hp[f"optimizer.{key}"] = cfg.optimizer[key]
    hp["trainer.batch_size"] = cfg.trainer.batch_size
    hp["seed"] = cfg.seed
    for name, stage in cfg.stages.items():
        hp[f"stages.{name}.epochs"] = stage.epochs
    for item in overrides:
        key, _, value = item.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or not value:
            continue
        try:
            hp[key] = json.loads(value) if value not in ("true", "false") else value == "true"
        except ValueError:
            hp[key] = value
    return {k: _scalar(v) for k, v in hp.items() if v is not None}


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """What a sweep compares: test metrics of the last best.pt and each stage's best monitor value."""
    out = {f"final/test/{k}": float(v) for k, v in (summary.get("test") or {}).items()}
    for stage, res in summary.get("stages", {}).items():
        best = res.get("best") or {}
        if best.get("value") is not None:
            out[f"final/{stage}/best_{best['metric']}"] = float(best["value"])
    return out
