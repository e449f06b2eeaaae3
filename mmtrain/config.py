"""The structured-config schema Hydra validates every run against, and start-up checks.

The dataclasses type the parts the trainer reads directly; components built with
`_target_` (data, encoders, fusions, tasks, optimizer, scheduler) are typed `Any`
here and checked against their target's signature by `check_targets`, so a typo
anywhere fails at start with the key, the class and the keys it accepts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import hydra.utils
from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from mmtrain.errors import ConfigError, MmtrainError

PRECISIONS = ("auto", "32", "bf16-mixed", "fp16-mixed")
CONTRASTIVE_ACCUMULATION = ("plain", "cache")


@dataclass
class CheckpointConfig:
    every_n_steps: int = 0
    """Also save `last.pt` every N optimizer steps inside an epoch (0: only at epoch ends)."""
    keep_last: int = 0
    """Step-numbered copies (step-0000120.pt) of the newest `last.pt` saves kept besides it."""
    keep_best: int = 1
    """The top k checkpoints by the stage's monitor metric (best-epoch003.pt...); best.pt is the top one."""


@dataclass
class TrainerConfig:
    device: str = "auto"
    """auto (cuda if available), cpu, cuda or cuda:N."""
    precision: str = "auto"
    """auto (bf16-mixed on a GPU with bf16, else 32), 32, bf16-mixed or fp16-mixed (adds a GradScaler)."""
    batch_size: int = 128
    """Per process: the optimizer sees batch_size x processes x accumulate_grad_batches samples."""
    eval_batch_size: Optional[int] = None
    """Defaults to 2 x batch_size: evaluation keeps no activations for backward."""
    num_workers: int = 0
    """DataLoader workers; 0 loads in the main process (fine for in-memory sets)."""
    grad_clip: Optional[float] = 1.0
    """Clip the global gradient norm to this value; null disables clipping."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step; under DDP only the last one all-reduces."""
    contrastive_accumulation: str = "plain"
    """plain: each micro-batch's contrastive loss sees its own negatives; cache: negatives span
    the whole accumulated batch (GradCache, one extra forward), see ContrastiveTask.cached_backward."""
    max_nonfinite_steps: int = 20
    """Steps with a non-finite gradient are skipped; this many in a row stop the run."""
    log_every_n_steps: int = 10
    num_threads: Optional[int] = None
    """CPU threads for torch ops; null: OMP_NUM_THREADS if set, else the cores this process may
    use (its CPU affinity) divided among torchrun's processes on the machine."""
    max_epochs: Optional[int] = None
    """Cap every stage at this many epochs (+debug=fast sets 1); null: each stage's own."""
    limit_train_batches: Optional[int] = None
    """Stop each epoch after this many batches (smoke tests, benchmarks)."""
    limit_eval_batches: Optional[int] = None
    """Validation (and the final test) on this many batches only: smoke tests, +debug=fast."""
    resume: Any = False
    """false, true (the run dir's newest last.pt) or a checkpoint path."""
    deterministic: bool = False
    """Deterministic kernels; with precision=32 on the CPU a resumed run is bit-identical."""
    compile: bool = False
    """torch.compile the model (before DDP wrapping); checkpoints load without compile."""
    compile_backend: str = "inductor"
    """A torch.compile backend; aot_eager needs no C compiler (CPU tests)."""
    channels_last: bool = False
    """NHWC memory format for the image encoder and images: faster convs on tensor cores."""
    progress: bool = True
    """tqdm progress bars (rank 0 only)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


@dataclass
class StageConfig:
    task: Any = MISSING
    """The objective: a `_target_` node from the `task` config group."""
    epochs: int = 1
    freeze: List[str] = field(default_factory=list)
    """Modules whose weights stay fixed: image_encoder, text_encoder, fusion, heads.<name>."""
    lr: Optional[float] = None
    """This stage's learning rate; null keeps the optimizer config's."""
    lr_scale: Dict[str, float] = field(default_factory=dict)
    """Per-module learning-rate factors, e.g. {image_encoder: 0.1} for a gentle fine-tune."""
    layer_decay: Optional[float] = None
    """Layer-wise lr decay over the timm/hf towers (e.g. 0.75): each layer below a tower's top
    trains at this factor times the lr of the layer above; multiplies with lr_scale."""
    monitor: Optional[str] = None
    """Validation metric that picks best.pt; null uses the task's own."""
    monitor_mode: Optional[str] = None
    """max or min: whether a larger monitor value is better; null infers it (min for a
    *loss metric, else the task's own)."""
    patience: Optional[int] = None
    """Early stopping: end the stage after this many epochs without the monitor improving by
    more than `min_delta`; null trains every epoch."""
    min_delta: float = 0.0
    """The smallest change of the monitor that counts as an improvement for `patience`."""


@dataclass
class ModelConfig:
    image_encoder: Any = MISSING
    text_encoder: Any = MISSING
    fusion: Any = MISSING


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "mmtrain"
    entity: Optional[str] = None
    group: Optional[str] = None
    """Runs of one sweep share a group in the W&B UI, e.g. logger.wandb.group=fusions."""
    tags: List[str] = field(default_factory=list)
    mode: Optional[str] = None
    """online, offline (sync later with `wandb sync`) or disabled; null: $WANDB_MODE, else online."""


@dataclass
class MlflowConfig:
    enabled: bool = False
    tracking_uri: Optional[str] = None
    """A server (http://...), sqlite:///mlflow.db, or a local file store (file:/path/mlruns, no
    server needed); null: $MLFLOW_TRACKING_URI, else ./mlruns where the run was started."""
    experiment: str = "mmtrain"


@dataclass
class LoggerConfig:
    """log.jsonl and metrics.csv are always written; these add the other backends."""

    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)


@dataclass
class TrainConfig:
    data: Any = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    seed: int = 0
    name: str = "synthetic"
    """Experiment name: the run dir is outputs/<name>/<timestamp>."""
    test: bool = True
    """Evaluate the final model on the test split when training ends."""
    print_config: bool = True
    """Log the composed config (YAML) at start, to the console and train.log."""
    init_from: Optional[str] = None
    """Start from an earlier run's weights: an mmtrain checkpoint file or run dir (its newest
    best.pt). Unlike trainer.resume the config may differ: the modules that fit are loaded."""
    init_modules: Optional[List[str]] = None
    """With init_from: the modules to load (e.g. [image_encoder]); null loads every one that fits."""


@dataclass
class EvalConfig:
    ckpt: Optional[str] = None
    """A checkpoint file; or give `run` and the newest stage's best.pt is used."""
    run: Optional[str] = None
    split: str = "test"
    device: str = "auto"
    precision: Optional[str] = None
    """Default: the precision the checkpoint was trained with, so the figures match training's."""
    batch_size: Optional[int] = None
    """Default: the batch size training evaluated with."""
    num_workers: int = 0
    limit_eval_batches: Optional[int] = None
    data: Dict[str, Any] = field(default_factory=lambda: {"root": None})
    """Overrides merged into the checkpoint's data config: data.root=DIR for a dataset that
    moved; any other key with a leading + (e.g. +data.image_size=64). Null values are ignored."""
    out: Optional[str] = None
    """Where metrics are written; default: next to the checkpoint's run dir."""
    ablate: bool = False
    """Also report every metric with the image blanked and with the text blanked."""
    zero_shot: bool = False
    """Contrastive checkpoints: also classify the split's images zero-shot from the data's class
    names put in prompt templates (OpenAI CLIP's protocol): zero_shot_top1 / zero_shot_top5."""
    zero_shot_label: Optional[str] = None
    """Which of the data's labels to classify; null: the image's own (mnist_imdb: digit), else label."""
    templates: Optional[List[str]] = None
    """Prompt templates ({} = the class name); null: the data's own for that label, else
    ["a photo of a {}."]."""
    trust_config: bool = False
    """Build whatever `_target_` the checkpoint's config names. Off: only mmtrain's own
    components and torch's optimizers and schedulers (a config can name any callable)."""
    allow_targets: List[str] = field(default_factory=list)
    """Module prefixes whose `_target_`s a checkpoint's config may also name, e.g. [mypkg.]."""


def config_dir() -> str:
    """The packaged configs of an installed wheel, else the repo's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise ConfigError(f"mmtrain's configs are missing (looked in {here / 'conf'}): reinstall the package")


def compose_config(config_name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A primary config (train, eval, ...) with overrides, composed as the CLI composes it but
    outside a Hydra app: for the Python API, `mmtrain baseline`, the scripts and the tests."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@dataclass
class CheckpointInputConfig:
    """What every command that reads a checkpoint for inference (predict, embed, search,
    export) takes besides its own options."""

    trust_config: bool = False
    """As for `mmtrain eval`: build whatever `_target_` the checkpoint's config names."""
    allow_targets: List[str] = field(default_factory=list)
    """As for `mmtrain eval`: module prefixes a checkpoint's config may also name."""


@dataclass
class PredictConfig(CheckpointInputConfig):
    ckpt: Optional[str] = None
    image: Optional[str] = None
    """A file, a folder (searched recursively) or a glob pattern."""
    text: Optional[str] = None
    text_file: Optional[str] = None
    """One text per line."""
    labels: Optional[List[str]] = None
    """Zero-shot classification with a contrastive checkpoint: the class names."""
    template: str = "a photo of a {}"
    top_k: int = 5
    beam_size: Optional[int] = None
    """Captioning: default the checkpoint's; 1 = greedy."""
    pairing: str = "zip"
    """zip: image i with text i (a single image or text goes with every one); all: every pair."""
    truncate: bool = False
    """Cut texts longer than the model accepts instead of refusing them."""
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    out: Optional[str] = None
    """A .json or .csv file for the results."""


@dataclass
class EmbedConfig(CheckpointInputConfig):
    ckpt: Optional[str] = None
    images: Optional[str] = None
    """A folder, searched recursively for every file Pillow reads."""
    texts: Optional[str] = None
    """Instead of images: a text file, one entry per line (a text index)."""
    out: Optional[str] = None
    """The index folder; an existing one built the same way is resumed."""
    batch_size: int = 64
    num_workers: int = 2
    shard_size: int = 4096
    """Embeddings per shard: an interrupted run loses at most one shard of work."""
    skip_unreadable: bool = False
    truncate: bool = False
    progress: bool = True
    device: str = "auto"


@dataclass
class SearchConfig(CheckpointInputConfig):
    index: Optional[str] = None
    text: Optional[str] = None
    image: Optional[str] = None
    k: int = 10
    sheet: Optional[str] = None
    """A .png contact sheet of the top k (image indexes)."""
    out: Optional[str] = None
    ckpt: Optional[str] = None
    """Default: the checkpoint that built the index (it must be the same file)."""
    truncate: bool = False
    device: str = "auto"


@dataclass
class ExportConfig(CheckpointInputConfig):
    ckpt: Optional[str] = None
    format: str = "onnx"
    """onnx | torchscript"""
    out: Optional[str] = None
    """A new (or empty) folder for the graphs, tokenizer.json and preprocess.json."""
    image: Optional[str] = None
    """Images (file, folder or glob; up to 16 used) for the parity check; default: random pixels."""
    text_file: Optional[str] = None
    """Texts (one per line) for the parity check; default: sentences of vocabulary words.
    Export and its check run on the CPU, in fp32."""


def run_stamp() -> str:
    """The default run-dir name: the launch time to the microsecond, so two launches in the
    same second get two dirs (and a clash anyway is refused by the run dir's lock)."""
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalConfig)
    cs.store(name="predict_schema", node=PredictConfig)
    cs.store(name="embed_schema", node=EmbedConfig)
    cs.store(name="search_schema", node=SearchConfig)
    cs.store(name="export_schema", node=ExportConfig)
    # Cached per config, like Hydra's `now`: a sweep's jobs share the sweep dir's stamp.
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)


def _walk_targets(node: Any, path: str):
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node.keys():
            child = node._get_node(key)
            yield from _walk_targets(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig) and not node._is_none():  # an optional list left at null
        for i, child in enumerate(node):
            yield from _walk_targets(child, f"{path}[{i}]")


def _import_target(path: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot import _target_ '{path}': {e}") from None


def check_targets(cfg: DictConfig, skip: tuple[str, ...] = ()) -> None:
    """Fail at start on a key that a `_target_` does not accept (a typo), naming the valid ones."""
    for path, node in _walk_targets(cfg, ""):
        if path.startswith(skip) or path.startswith("hydra"):
            continue
        target = _import_target(str(node._target_))
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):
            continue
        params = sig.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        for key in node.keys():
            if str(key).startswith("_"):
                continue
            if key not in params:
                names = [n for n in params if n not in ("self",)]
                guess = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
                hint = f" did you mean {path}.{guess[0]}?" if guess else ""
                raise ConfigError(
                    f"{path}.{key}: '{node._target_}' has no option '{key}' (it accepts: "
                    f"{', '.join(names) or 'nothing'}){hint}"
                )


def check_missing(cfg: DictConfig) -> None:
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(
            f"missing value for {', '.join(missing)}: set it on the command line, e.g. {missing[0]}=..."
        )


def check_train_config(cfg: DictConfig) -> None:
    """Every start-up check that needs no data and no model."""
    check_missing(cfg)
    if cfg.trainer.precision not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={cfg.trainer.precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    if not cfg.stages:
        raise ConfigError("no stages to run: the experiment must define at least one under `stages`")
    for name, stage in cfg.stages.items():
        if stage.epochs < 0:
            raise ConfigError(f"stages.{name}.epochs={stage.epochs} must be >= 0")
        if stage.patience is not None and stage.patience < 1:
            raise ConfigError(f"stages.{name}.patience={stage.patience} must be >= 1 (null: no early stop)")
        if stage.min_delta < 0:
            raise ConfigError(f"stages.{name}.min_delta={stage.min_delta} must be >= 0")
    if cfg.trainer.batch_size < 1 or (cfg.trainer.eval_batch_size or 1) < 1:
        raise ConfigError("trainer.batch_size and trainer.eval_batch_size must be >= 1")
    if cfg.trainer.accumulate_grad_batches < 1:
        raise ConfigError("trainer.accumulate_grad_batches must be >= 1")
    if cfg.trainer.contrastive_accumulation not in CONTRASTIVE_ACCUMULATION:
        raise ConfigError(f"trainer.contrastive_accumulation={cfg.trainer.contrastive_accumulation!r} "
                          f"is not one of {', '.join(CONTRASTIVE_ACCUMULATION)}")
    for key in ("num_threads", "max_epochs", "limit_train_batches", "limit_eval_batches"):
        if cfg.trainer[key] is not None and cfg.trainer[key] < 1:
            raise ConfigError(f"trainer.{key}={cfg.trainer[key]} must be >= 1 (null: no limit / the default)")
    if cfg.logger.wandb.mode not in (None, "online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode={cfg.logger.wandb.mode!r}: choose online, offline or disabled")
    if cfg.trainer.max_nonfinite_steps < 1:
        raise ConfigError("trainer.max_nonfinite_steps must be >= 1")
    check_values(cfg)
    if cfg.init_modules is not None and not cfg.init_from:
        raise ConfigError("init_modules names modules to load, but init_from (a checkpoint or run dir) "
                          "is not set")
    check_targets(cfg)


_LR = (lambda v: 0 <= v < math.inf, "a learning rate is >= 0 and finite")
# key -> (what a valid number satisfies, the rule in words)
_VALUE_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "seed": (lambda v: v == int(v) and 0 <= v < 2**32, "a seed is an integer in [0, 2**32)"),
    "trainer.grad_clip": (lambda v: 0 < v < math.inf,
                          "the largest gradient norm kept is > 0 and finite (null: no clipping)"),
    "optimizer.lr": _LR,
    "optimizer.weight_decay": (lambda v: 0 <= v < math.inf, "weight decay is >= 0 and finite"),
}


def _check_value(key: str, value: Any, rule: tuple[Callable[[float], bool], str]) -> None:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and rule[0](value)):  # NaN fails every comparison, so it lands here too
        raise ConfigError(f"{key}={value!r}: {rule[1]}")


def check_values(cfg: DictConfig) -> None:
    """Numbers torch would take and train wrongly with (a negative clip norm trains uphill)
    or refuse only after the data and model are built: refused at start, naming the key."""
    for key, rule in _VALUE_RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            _check_value(key, value, rule)
    for name, stage in cfg.stages.items():
        if stage.lr is not None:
            _check_value(f"stages.{name}.lr", stage.lr, _LR)
        for key, value in _numbers_named(stage.task, f"stages.{name}.task", "label_smoothing"):
            _check_value(key, value, (lambda v: 0 <= v < 1, "label smoothing is in [0, 1)"))


def _numbers_named(node: Any, path: str, name: str):
    """(dotted key, value) of every `name` key below `node` (a multitask's heads included)."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            sub = f"{path}.{key}"
            if key == name:
                yield sub, node[key]
            yield from _numbers_named(child, sub, name)
    elif isinstance(node, ListConfig):
        for i, child in enumerate(node):
            yield from _numbers_named(child, f"{path}[{i}]", name)


def instantiate(cfg: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but an mmtrain error raised inside the target reaches the user
    as itself (one line naming the fix) rather than wrapped in Hydra's InstantiationException."""
    try:
        return hydra.utils.instantiate(cfg, **kwargs)
    except InstantiationException as e:
        if not isinstance(e.__cause__, MmtrainError):
            raise
        error = e.__cause__
    raise error  # outside the except block, so it carries no wrapper as its context
