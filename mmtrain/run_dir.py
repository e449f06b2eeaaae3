"""One run dir, one writer: the lock, what a start may find there, and where a resume starts.

The rules, in the order `mmtrain train` applies them, before it writes anything:

1. `writer_lock`: an exclusive flock on `<run dir>/.lock`; a second writer is refused
   (the OS drops the lock when a process dies, so a killed run never blocks its resume).
2. `resumed_config`: a resume starts from the config its run was made with
   (`.hydra/config.yaml`, else the one stored in the checkpoint), with only the overrides
   given now on top; a config group other than the run's own is refused.
3. `prepare_run_dir`: a run dir holding another run's checkpoints is refused.
4. `load_resume`: a checkpoint trained with another model, task, data, seed or batch is refused.

Only then does the caller write `.hydra/` (`write_hydra_files`): a refused start leaves
every byte of an existing run dir as it was. Resuming into a new run dir copies the
source's checkpoints through a staging folder that is renamed into place in one step
(`adopt_checkpoints`), so a kill mid-copy leaves nothing a retry trips over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from mmtrain.atomic import write_atomically, write_text
from mmtrain.errors import CheckpointError, ConfigError

LOCK_FILE = ".lock"
# Resuming into a new run dir copies the source's checkpoints here first (no *.pt under
# checkpoints/ until the copy is whole, so a killed copy never makes the dir look used).
STAGING = ".checkpoints.adopting.tmp"


def inside(path: Path, folder: Path) -> bool:
    return folder.resolve() in path.resolve().parents


# ------------------------------------------------------------------ the lock


class WriterLock:
    """Held by the one process that writes a run dir (rank 0 under torchrun)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                self.created = True
            except FileExistsError:
                fd = os.open(self.path, os.O_RDWR)
                self.created = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
            if held:  # raised outside the except: the message stays one line, without errno
                holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(f"{self.path.parent} is being written by another mmtrain process "
                                  f"(pid {holder}): wait for it to end, or choose another "
                                  f"hydra.run.dir (nothing was written)")
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else a refused start removed the file we opened: lock the new one
                self.fd = fd
                return
            os.close(fd)

    def accept(self) -> None:
        """The start passed every check: the lock file now names this process."""
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        self.created = False

    def release(self) -> None:
        if self.fd is None:
            return
        if self.created:  # refused before writing anything: leave the dir as it was
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None


@contextlib.contextmanager
def writer_lock(run_dir: Path, enabled: bool = True) -> Iterator[WriterLock | None]:
    """The run dir's lock, to `acquire()` within the block and released when it ends;
    `enabled=False` (torchrun ranks other than 0, whose rank 0 holds it for the whole
    launch) gives None."""
    if not enabled:
        yield None
        return
    lock = WriterLock(run_dir)
    try:
        yield lock
    finally:
        lock.release()


# ------------------------------------------------------------------ where a run starts


def find_resume(resume: Any, run_dir: Path, stage_names: list[str]) -> Path | None:
    """trainer.resume: false | true (this run dir's newest last.pt, if any) | a run dir | a .pt file."""
    if resume is False or resume is None or resume == "false":
        return None
    if resume is True or resume == "true":
        base, required = run_dir, False
    else:
        base, required = Path(str(resume)), True
        if base.is_file():
            return base
    for name in reversed(_stage_names(base) or stage_names):
        candidate = base / "checkpoints" / name / "last.pt"
        if candidate.is_file():
            return candidate
    if required:
        raise CheckpointError(f"trainer.resume={resume}: no checkpoints/<stage>/last.pt found there")
    return None


def prepare_run_dir(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint to resume from, if any; refuses a run dir holding another run's checkpoints."""
    resume_path = find_resume(cfg.trainer.resume, run_dir, [str(n) for n in cfg.stages])
    continuing = resume_path is not None and inside(resume_path, run_dir)
    if not continuing and any((run_dir / "checkpoints").glob("*/*.pt")):
        raise ConfigError(f"{run_dir} already holds checkpoints: pass trainer.resume=true to continue "
                          f"that run, or choose another hydra.run.dir (nothing was overwritten)")
    return resume_path


def load_resume(cfg: DictConfig, resume_path: Path | None) -> dict | None:
    """The checkpoint to resume, refused unless what decides the weights and the order of
    the batches matches; where the data lives and how it is cached may change."""
    from mmtrain.engine.checkpoint import config_mismatch, load_checkpoint

    if resume_path is None:
        return None
    resume = load_checkpoint(resume_path)
    if "position" not in resume:
        raise CheckpointError(f"{resume_path} is a best.pt (weights only): resume from a last.pt")
    # An optimizer of another kind cannot take over the saved state (SGD has no Adam moments).
    sections = ("model", "data", "seed", "optimizer._target_", "trainer.batch_size",
                "trainer.accumulate_grad_batches") + tuple(f"stages.{n}.task" for n in cfg.stages)
    saved = resume["config"]
    if "interpolation" in cfg.data and "interpolation" not in (saved.get("data") or {}):
        # Saved before data.interpolation existed: its images were resized bilinearly.
        saved = {**saved, "data": {**saved["data"], "interpolation": "bilinear"}}
    differ = config_mismatch(saved, OmegaConf.to_container(cfg, resolve=True), sections,
                             ignore=("data.root", "data.download", "data.cache", "data.cache_images",
                                     "data.cache_dir"))
    if differ:
        raise CheckpointError(f"{resume_path} was trained with another config "
                              f"({len(differ)} differences: {'; '.join(differ[:3])}): resume with "
                              f"the same settings, or start a new run dir")
    return resume


def holds_no_run(run_dir: Path) -> bool:
    """Nothing of a run here yet (a dir Hydra just made, or one left by a refused start)."""
    return not any((run_dir / name).exists() for name in (".hydra", "status.json", "checkpoints"))


def source_run(checkpoint: Path) -> Path | None:
    """The run dir a checkpoints/<stage>/<file>.pt belongs to (None for a lone file)."""
    folder = checkpoint.parent.parent
    return folder.parent if folder.name == "checkpoints" else None


def _stage_names(run: Path) -> list[str]:
    saved = run / ".hydra" / "config.yaml"
    if not saved.is_file():
        return []
    return [str(n) for n in (OmegaConf.load(saved).get("stages") or {})]


@dataclass
class Start:
    """What a launch runs: the config, and the overrides its run dir records."""

    cfg: DictConfig
    overrides: list[str]
    choices: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    """Logged once the start is accepted (a refused start writes not even a log line)."""


def resumed_config(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict[str, Any],
                   schema: Any) -> Start:
    """The config a launch runs with. A fresh start: `cfg` as composed. A resume: the config
    the run was made with, plus only `overrides` (what was typed now) on top, so the
    command printed on a stop (`trainer.resume=true hydra.run.dir=...`) works as printed.

    A resume may not pick another config group than its run did (the checkpoint's keys
    would not fit); value overrides are checked against the checkpoint by the caller.
    """
    path = find_resume(cfg.trainer.resume, run_dir, [str(n) for n in cfg.stages])
    if path is None:
        return Start(cfg, list(overrides), dict(choices))
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    run = source_run(path)
    hydra_dir = run / ".hydra" if run is not None else None
    if hydra_dir is not None and (hydra_dir / "config.yaml").is_file():
        saved = OmegaConf.load(hydra_dir / "config.yaml")
        saved_overrides = [str(o) for o in OmegaConf.load(hydra_dir / "overrides.yaml")] \
            if (hydra_dir / "overrides.yaml").is_file() else []
        saved_choices = _saved_choices(hydra_dir / "hydra.yaml")
    else:  # made through the Python API, or a lone file: the checkpoint's own config
        from mmtrain.engine.checkpoint import load_checkpoint

        stored = dict(load_checkpoint(path)["config"])
        stored.pop("architecture", None)  # what rebuilds pretrained encoders: not a config key
        saved, saved_overrides, saved_choices = OmegaConf.create(stored), [], None
    # The saved config is read from outside this launch (a run dir or checkpoint may come from
    # anyone): it may build mmtrain's own components, and those the user's own config names now.
    from mmtrain.trust import check_config_targets, packaged_targets, walk_targets

    own = sorted({str(t) for _, t in walk_targets(OmegaConf.to_container(cfg)) if t not in packaged_targets()})
    check_config_targets(saved, source=f"trainer.resume={cfg.trainer.resume} ({run or path})", allow=own)
    parsed = OverridesParser.create().parse_overrides(overrides=list(overrides))
    groups = set(choices) | set(saved_choices or {})
    values, kept = [], []
    for override in parsed:
        key = override.key_or_group
        if key == "trainer.resume":
            continue
        if key in groups:
            own = (saved_choices or {}).get(key)
            if saved_choices is None or str(own) != str(override.value()):
                raise ConfigError(
                    f"trainer.resume: {override.input_line} is not the config group this run was made "
                    f"with ({key}={own if saved_choices is not None else 'unknown'}): a resume keeps its "
                    f"run's config; drop it, or start a new run dir without trainer.resume")
            continue
        values.append(override)
        kept.append(override.input_line)
    merged = OmegaConf.merge(schema, saved)
    OmegaConf.set_struct(merged, True)
    try:
        ConfigLoaderImpl._apply_overrides_to_config(values, merged)
    except Exception as e:  # Hydra's own message names the key
        raise ConfigError(f"trainer.resume: {str(e).splitlines()[0]}") from None
    merged.trainer.resume = cfg.trainer.resume
    new_keys = {o.key_or_group for o in values}
    recorded = [o for o in saved_overrides if _key(o) not in new_keys | {"trainer.resume"}] + kept
    note = f"resuming {run or path} with its own config" + (f", and {', '.join(kept)}" if kept else "")
    return Start(merged, recorded, dict(saved_choices or choices), note)


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _saved_choices(hydra_yaml: Path) -> dict[str, Any] | None:
    if not hydra_yaml.is_file():
        return None
    choices = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices")
    return None if choices is None else {str(k): v for k, v in OmegaConf.to_container(choices).items()}


def write_hydra_files(run_dir: Path, start: Start, hydra_cfg: DictConfig) -> None:
    """What Hydra would have written into `.hydra/`, written once the start is accepted
    (conf/train.yaml sets hydra.output_subdir=null so Hydra writes nothing itself)."""
    folder = run_dir / ".hydra"
    hydra_node = OmegaConf.to_container(hydra_cfg, resolve=False)
    hydra_node.setdefault("runtime", {})["choices"] = start.choices
    write_text(folder / "config.yaml", OmegaConf.to_yaml(start.cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml({"hydra": hydra_node}))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(start.overrides))


# ------------------------------------------------------------------ leftovers and adoption


def remove_leftovers(run_dir: Path) -> None:
    """Temp files and a staging folder a killed writer of this run dir left behind (never
    read: they are not *.pt, *.json or *.yaml). `eval/` belongs to `mmtrain eval`, which
    may be writing there now."""
    for pattern in (".*.tmp", ".hydra/.*.tmp", "checkpoints/*/.*.tmp", "artifacts/.*.tmp"):
        for tmp in run_dir.glob(pattern):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def adopt_checkpoints(path: Path, resume: dict[str, Any], run_dir: Path, main_rank: bool) -> bool:
    """Resuming into a new run dir: bring the source run's checkpoints along, so the best.pt
    files its state refers to exist here too (and the source run stays untouched). -> whether
    they do: a lone file's best-so-far files are not here, so its stage ranks afresh.

    The copy goes to a staging folder renamed to checkpoints/ in one step: killed before
    the rename, the run dir holds no checkpoint and the same command starts over."""
    source = path.parent.parent
    if source.name != "checkpoints" or (source / str(resume["stage"])).resolve() != path.parent.resolve():
        return False
    if not main_rank:
        return True
    staging = run_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    for file in sorted(source.glob("*/*.pt")):
        _copy_durably(file, staging / file.parent.name / file.name)
    target = run_dir / "checkpoints"
    if target.exists():  # no *.pt there (prepare_run_dir checked): only empty folders or temp files
        shutil.rmtree(target)
    os.rename(staging, target)
    _fsync_dir(run_dir)
    return True


def _copy_durably(src: Path, dst: Path) -> None:
    def copy(f: Any) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f)

    write_atomically(dst, copy)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
