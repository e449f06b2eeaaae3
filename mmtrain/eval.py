"""`mmtrain eval ckpt=PATH | run=DIR`: a checkpoint's task metrics on a split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf

from mmtrain.atomic import write_json
from mmtrain.build import build_trained
from mmtrain.config import PRECISIONS, config_dir, register_schemas
from mmtrain.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from mmtrain.data import DataBundle
    from mmtrain.models.model import MultimodalModel
    from mmtrain.tasks import Task

log = logging.getLogger("mmtrain")


def main() -> None:
    register_schemas()
    hydra.main(config_path=config_dir(), config_name="eval", version_base="1.3")(run)()


def _stage_names(config: Path) -> list[str]:
    import yaml

    from mmtrain.trust import check_size

    problem = ""
    try:
        # Plain YAML first: OmegaConf would copy out an anchor bomb before any check could run.
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
        check_size(raw, str(config))
        names = [str(n) for n in OmegaConf.create(raw).stages]
    except ConfigError:
        raise
    except Exception as e:  # YAML or OmegaConf errors, a list where a mapping belongs...
        problem = type(e).__name__
    if problem:  # raised here, so the one-line message carries no parser trace as its context
        raise CheckpointError(f"{config} is malformed ({problem}): pass the checkpoint itself with ckpt=")
    for name in names:
        # It becomes a path under checkpoints/: '..' or '/' would pick (and write the result
        # beside) a checkpoint outside this run.
        if name in (".", "..") or Path(name).name != name or "\\" in name:
            raise CheckpointError(f"{config}: stage name {name!r} is not a plain name: refusing it")
    return names


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
        names = _stage_names(config)
    else:  # a run made through the Python API: a later stage always wrote its best.pt later
        bests = sorted((root / "checkpoints").glob("*/best.pt"), key=lambda p: p.stat().st_mtime)
        names = [p.parent.name for p in bests]
    for name in reversed(names):
        best = root / "checkpoints" / str(name) / "best.pt"
        if best.is_file():
            return best
    if not (root / "checkpoints").is_dir():
        runs = _runs_below(root)
        if runs:
            shown = ", ".join(str(r) for r in runs[:10]) + (f" and {len(runs) - 10} more" if len(runs) > 10 else "")
            raise CheckpointError(f"{root} is not a run dir but holds {len(runs)} run(s): pass one as "
                                  f"run=DIR: {shown}")
    raise CheckpointError(f"{root} has no checkpoints/<stage>/best.pt: did its training finish a stage?")


def _runs_below(root: Path) -> list[Path]:
    """Run dirs (with checkpoints) inside a parent folder such as outputs/<name> or a sweep."""
    return sorted({p.parent.parent.parent for p in root.glob("**/checkpoints/*/best.pt")})


@dataclass
class Rebuilt:
    """What a checkpoint was trained with, rebuilt from the file alone."""

    checkpoint: dict[str, Any]
    config: DictConfig
    data: DataBundle
    model: MultimodalModel
    task: Task
    """The task of the stage that saved the checkpoint."""


def _check_eval_settings(trainer: DictConfig, path: Path) -> None:
    """The saved settings eval reuses, checked as training checked them at its start: from
    a file, a wrong type would crash in the loader or in a log line."""
    for key in ("batch_size", "eval_batch_size"):
        value = trainer.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise CheckpointError(f"{path}: its trainer.{key}={value!r} is not a positive integer: "
                                  f"refusing it")
    if trainer.get("precision", "32") not in PRECISIONS:
        raise CheckpointError(f"{path}: its trainer.precision={trainer.get('precision')!r} is not one of "
                              f"{', '.join(PRECISIONS)}: refusing it")


def rebuild(path: Path, *, data_overrides: dict | None = None, allow: Sequence[str] = (),
            trust: bool = False) -> Rebuilt:
    """Data, model (with the checkpoint's weights) and task from a checkpoint whose config
    names only mmtrain's own components (see mmtrain.trust; `allow`/`trust` widen that).
    Where the data is read from may be overridden; whether it is downloaded, and where
    caches go, is the user's call alone (`data_overrides`), never the file's."""
    from mmtrain import data as data_lib
    from mmtrain.engine.checkpoint import checkpoint_tokenizer, load_checkpoint_config

    ckpt, cfg = load_checkpoint_config(path, allow=allow, trust=trust)
    _check_eval_settings(cfg.trainer, path)
    for key, value in (("download", False), ("cache_dir", None)):
        if key in cfg.data:  # where to write is the user's call alone, never the file's
            cfg.data[key] = value
    overrides = {k: v for k, v in (data_overrides or {}).items() if v is not None}
    if overrides:
        cfg.data = OmegaConf.merge(cfg.data, overrides)
    data = data_lib.build(cfg.data, tokenizer=checkpoint_tokenizer(ckpt, path))
    model, task = build_trained(cfg, data.info, ckpt, path)
    return Rebuilt(ckpt, cfg, data, model, task)


def evaluate_checkpoint(path: Path, split: str = "test", *, device: str = "auto",
                        precision: str | None = None, batch_size: int | None = None,
                        num_workers: int = 0,
                        data_overrides: dict | None = None, ablate: bool = False,
                        limit_eval_batches: int | None = None,
                        artifacts_dir: Path | None = None, allow_targets: Sequence[str] = (),
                        trust_config: bool = False, zero_shot: bool = False,
                        zero_shot_label: str | None = None,
                        templates: Sequence[str] | None = None) -> dict[str, Any]:
    """Rebuild data and model from the checkpoint alone and run its stage's task metrics
    (and write the task's artifacts, e.g. a confusion matrix, to `artifacts_dir`); with
    `zero_shot`, a contrastive checkpoint's zero-shot accuracy too (mmtrain.zero_shot)."""
    built = rebuild(path, data_overrides=data_overrides, allow=allow_targets, trust=trust_config)
    return evaluate_rebuilt(built, path, split, device=device, precision=precision,
                            batch_size=batch_size, num_workers=num_workers, ablate=ablate,
                            limit_eval_batches=limit_eval_batches, artifacts_dir=artifacts_dir,
                            zero_shot=zero_shot, zero_shot_label=zero_shot_label, templates=templates)


def evaluate_rebuilt(built: Rebuilt, path: Path, split: str = "test", *, device: str = "auto",
                     precision: str | None = None, batch_size: int | None = None,
                     num_workers: int = 0, ablate: bool = False,
                     limit_eval_batches: int | None = None,
                     artifacts_dir: Path | None = None, zero_shot: bool = False,
                     zero_shot_label: str | None = None,
                     templates: Sequence[str] | None = None) -> dict[str, Any]:
    from mmtrain.data.loader import make_loader
    from mmtrain.engine.precision import resolve_device, resolve_precision
    from mmtrain.engine.trainer import evaluate

    dev = resolve_device(device)
    # Unless told otherwise, evaluate exactly as training did, so the figures match its own.
    trained = built.config.trainer
    precision = resolve_precision(precision or trained.get("precision", "32"), dev)
    batch_size = batch_size or trained.get("eval_batch_size") or 2 * trained.get("batch_size", 128)
    log.info("evaluating %s (%s stage) on the %s split | device: %s | precision: %s | batch %d",
             path, built.checkpoint["stage"], split, dev, precision, batch_size)
    model, task = built.model.to(dev), built.task
    loader = make_loader(built.data.split(split), batch_size, train=False, num_workers=num_workers,
                         device=dev)
    result: dict[str, Any] = {"checkpoint": str(path), "stage": built.checkpoint["stage"], "split": split}
    zero_shot_metrics = {}
    if zero_shot:  # first: a checkpoint or data it cannot use is refused before any other work
        from mmtrain.inference import Loaded
        from mmtrain.zero_shot import zero_shot_accuracy

        loaded = Loaded(path, model.eval(), task, str(built.checkpoint["stage"]), built.data.info,
                        built.data.tokenizer, built.config, dev)
        zero_shot_metrics = zero_shot_accuracy(
            loaded, built.data.split(split), label=zero_shot_label, templates=templates,
            batch_size=batch_size, num_workers=num_workers, limit=limit_eval_batches)
    evaluation = evaluate(model, task, loader, dev, precision, limit=limit_eval_batches)
    result["metrics"] = {**evaluation.metrics, **zero_shot_metrics}
    if artifacts_dir is not None and evaluation.artifacts:
        result["artifacts"] = [str(p) for p in evaluation.write_artifacts(artifacts_dir)]
    if ablate:
        # A task's target is not an input to blank (captioning's text is what it predicts).
        for blank in task.input_modalities:
            result[f"metrics_without_{blank}"] = evaluate(model, task, loader, dev, precision,
                                                          blank=(blank,), limit=limit_eval_batches).metrics
    return result


def default_output(path: Path, split: str) -> Path:
    """<run>/eval/<stage>_<file>_<split>.json for a checkpoint inside a run dir, else beside it."""
    if path.parent.parent.name == "checkpoints":
        return path.parent.parent.parent / "eval" / f"{path.parent.name}_{path.stem}_{split}.json"
    return path.with_name(f"{path.stem}_eval_{split}.json")


def refuse_links(out: Path, own_folder: bool) -> None:
    """A run dir from elsewhere may hold links where eval writes: a log appended through one
    lands in whatever file it points at (a shell's rc file, say), artifacts in any folder.
    `own_folder`: `out.parent` came with the run dir too (the default <run>/eval)."""
    artifacts = out.with_suffix("")
    paths = ([out.parent] if own_folder else []) + [out, out.with_suffix(".log"), artifacts]
    if artifacts.is_dir() and not artifacts.is_symlink():
        paths += sorted(artifacts.iterdir())
    for path in paths:
        if path.is_symlink():
            raise CheckpointError(f"{path} is a symbolic link: refusing to write through it "
                                  f"(remove it, or pass out=)")


def run(cfg: DictConfig) -> None:
    if cfg.precision is not None and cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    path = resolve_checkpoint(cfg.ckpt, cfg.run)
    out = Path(cfg.out) if cfg.out else default_output(path, cfg.split)
    refuse_links(out, own_folder=not cfg.out)
    built = rebuild(path, data_overrides=OmegaConf.to_container(cfg.data),
                    allow=list(cfg.allow_targets), trust=cfg.trust_config)
    # Only an accepted checkpoint gets a log: a refused one leaves nothing behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out.with_suffix(".log"), encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        result = evaluate_rebuilt(built, path, cfg.split, device=cfg.device, precision=cfg.precision,
                                  batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                  ablate=cfg.ablate, limit_eval_batches=cfg.limit_eval_batches,
                                  artifacts_dir=out.with_suffix(""), zero_shot=cfg.zero_shot,
                                  zero_shot_label=cfg.zero_shot_label,
                                  templates=list(cfg.templates) if cfg.templates is not None else None)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    write_json(out, result)
    columns = {"both": result["metrics"]}
    for blank in ("image", "text"):
        if f"metrics_without_{blank}" in result:
            columns[f"without {blank}"] = result[f"metrics_without_{blank}"]
    print(f"{path} ({result['stage']} stage, {cfg.split} split)")
    print(f"{'metric':<16}" + "".join(f"{c:>16}" for c in columns))
    for name in result["metrics"]:
        print(f"{name:<16}" + "".join(f"{col[name]:>16.4f}" if name in col else f"{'-':>16}"
                                      for col in columns.values()))
    print(f"written: {out}")
