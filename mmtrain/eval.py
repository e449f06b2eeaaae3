"""`mmtrain eval ckpt=PATH | run=DIR`: a checkpoint's task metrics on a split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mmtrain.atomic import write_json
from mmtrain.config import PRECISIONS, register_schemas
from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.train import build_tasks, config_dir



def main() -> None:
    register_schemas()
    hydra.main(config_path=config_dir(), config_name="eval", version_base="1.3")(run)()


def resolve_checkpoint(ckpt: str | None, run_dir: str | None) -> Path:
    """ckpt=PATH as given; run=DIR -> the best.pt of the run's last stage that has one."""
    if ckpt:
        return Path(ckpt)
    if not run_dir:
        raise ConfigError("say what to evaluate: ckpt=path/to/best.pt or run=outputs/<name>/<time>")
    root = Path(run_dir)
    config = root / ".hydra" / "config.yaml"
    if not root.is_dir():
        raise CheckpointError(f"run dir not found: {root}")
    if config.is_file():
        names = [str(n) for n in OmegaConf.load(config).stages]
    else:  # a run made through the Python API: a later stage always wrote its best.pt later
        bests = sorted((root / "checkpoints").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
        names = [p.parent.name for p in bests]
    for name in reversed(names):
        best = root / "checkpoints" / str(name) / "best.pt"
        if best.is_file():
            return best
    raise CheckpointError(f"{root} has no checkpoints/<stage>/best.pt: did its training finish a stage?")


def evaluate_checkpoint(path: Path, split: str = "test", *, device: str = "auto",
                        precision: str | None = None, batch_size: int | None = None,
                        num_workers: int = 0,
                        data_overrides: dict | None = None, ablate: bool = False,
                        limit_eval_batches: int | None = None,
                        artifacts_dir: Path | None = None) -> dict[str, Any]:
    """Rebuild data and model from the checkpoint alone and run its stage's task metrics
    (and write the task's artifacts, e.g. a confusion matrix, to `artifacts_dir`)."""
    from mmtrain import data as data_lib
    from mmtrain.data.loader import make_loader
    from mmtrain.data.tokenizer import TextTokenizer
    from mmtrain.engine.checkpoint import load_checkpoint, load_model_state
    from mmtrain.engine.precision import resolve_device, resolve_precision
    from mmtrain.engine.trainer import evaluate
    from mmtrain.models.model import build_model

    ckpt = load_checkpoint(path)
    cfg = OmegaConf.create(ckpt["config"])
    data_overrides = {k: v for k, v in (data_overrides or {}).items() if v is not None}
    if data_overrides:
        cfg.data = OmegaConf.merge(cfg.data, data_overrides)
    dev = resolve_device(device)
    # Unless told otherwise, evaluate exactly as training did, so the figures match its own.
    trained = cfg.trainer
    precision = resolve_precision(precision or trained.get("precision", "32"), dev)
    batch_size = batch_size or trained.get("eval_batch_size") or 2 * trained.get("batch_size", 128)
    data = data_lib.build(cfg.data, tokenizer=TextTokenizer.from_json(ckpt["tokenizer"]))
    model = build_model(cfg.model, data.info, architecture=ckpt["config"].get("architecture"))
    stages = {s.name: s for s in build_tasks(cfg, model, data.info)}
    if ckpt["stage"] not in stages:
        raise CheckpointError(f"{path} was saved in stage {ckpt['stage']!r}, which its config lacks")
    load_model_state(model, ckpt["model"], path)
    model.to(dev)
    task = stages[ckpt["stage"]].task
    loader = make_loader(data.split(split), batch_size, train=False, num_workers=num_workers, device=dev)
    result: dict[str, Any] = {"checkpoint": str(path), "stage": ckpt["stage"], "split": split}
    result["metrics"] = evaluate(model, task, loader, dev, precision, limit=limit_eval_batches)
    if artifacts_dir is not None and hasattr(task, "write_artifacts"):
        result["artifacts"] = [str(p) for p in task.write_artifacts(artifacts_dir)]
    if ablate:
        # A task's target is not an input to blank (captioning's text is what it predicts).
        for blank in getattr(task, "input_modalities", ("image", "text")):
            result[f"metrics_without_{blank}"] = evaluate(model, task, loader, dev, precision,
                                                          blank=(blank,), limit=limit_eval_batches)
    return result


def default_output(path: Path, split: str) -> Path:
    """<run>/eval/<stage>_<file>_<split>.json for a checkpoint inside a run dir, else beside it."""
    if path.parent.parent.name == "checkpoints":
        return path.parent.parent.parent / "eval" / f"{path.parent.name}_{path.stem}_{split}.json"
    return path.with_name(f"{path.stem}_eval_{split}.json")


def run(cfg: DictConfig) -> None:
    if cfg.precision is not None and cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    path = resolve_checkpoint(cfg.ckpt, cfg.run)
    out = Path(cfg.out) if cfg.out else default_output(path, cfg.split)
    result = evaluate_checkpoint(path, cfg.split, device=cfg.device, precision=cfg.precision,
                                 batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                 data_overrides=OmegaConf.to_container(cfg.data),
                                 ablate=cfg.ablate, limit_eval_batches=cfg.limit_eval_batches,
                                 artifacts_dir=out.with_suffix(""))
    write_json(out, result)
    columns = {"both": result["metrics"]}
    for blank in ("image", "text"):
        if f"metrics_without_{blank}" in result:
            columns[f"without {blank}"] = result[f"metrics_without_{blank}"]
    print(f"{path} ({result['stage']} stage, {cfg.split} split)")
    print(f"{'metric':<16}" + "".join(f"{c:>16}" for c in columns))
    for name in result["metrics"]:
        print(f"{name:<16}" + "".join(f"{col[name]:>16.4f}" for col in columns.values()))
    print(f"written: {out}")
