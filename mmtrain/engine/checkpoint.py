"""Checkpoints: plain tensors and containers, written atomically, loaded with weights_only.

A checkpoint file is enough both for `mmtrain eval` (weights, resolved config, tokenizer)
and for an exact resume (optimizer, scheduler, scaler, RNG states, position in the run).
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Sequence

import numpy as np
import torch

from omegaconf import DictConfig

from mmtrain.atomic import write_atomically
from mmtrain.errors import CheckpointError
from mmtrain.trust import check_no_interpolation, trusted_config
from mmtrain.weights import check_state, load_state

FORMAT_VERSION = 1


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` atomically and durably."""
    write_atomically(path, lambda f: torch.save(obj, f))


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy `src` to `dst` with the same guarantee as `atomic_save`."""
    def copy(f: BinaryIO) -> None:
        with open(src, "rb") as source:
            shutil.copyfileobj(source, f)

    write_atomically(dst, copy)


def remove_partial_writes(folder: Path) -> None:
    """Delete temp files a killed run left mid-write (never read: they are not *.pt)."""
    for tmp in folder.glob("*/.*.tmp"):
        tmp.unlink(missing_ok=True)


class CheckpointSaver:
    """last.pt plus `keep_last` step-numbered copies, and best.pt plus the top `keep_best`
    by the monitor metric (timm's scheme: a sorted list, each file written tmp-then-replace).

    `top` is [[value, name], ...] best first; the trainer keeps it in last.pt so a resumed
    run keeps pruning the same files.
    """

    def __init__(self, folder: Path, keep_last: int = 0, keep_best: int = 1) -> None:
        self.folder = folder
        self.keep_last = keep_last
        self.keep_best = max(1, keep_best)

    def save_last(self, payload: dict[str, Any], global_step: int) -> None:
        last = self.folder / "last.pt"
        atomic_save(payload, last)
        if self.keep_last > 0:
            atomic_copy(last, self.folder / f"step-{global_step:07d}.pt")
            for old in sorted(self.folder.glob("step-*.pt"))[: -self.keep_last]:
                old.unlink(missing_ok=True)

    def rank(self, top: list, value: float, mode: str, name: str) -> tuple[list, list]:
        """`top` with [value, name] inserted, split into (kept, dropped); best first."""
        ranked = sorted(top + [[value, name]], key=lambda e: -e[0] if mode == "max" else e[0])
        return ranked[: self.keep_best], ranked[self.keep_best:]

    def save_best(self, payload: dict[str, Any], kept: list, dropped: list, name: str) -> None:
        """Write the checkpoint `name` that `rank` kept; best.pt is always the top one."""
        if self.keep_best == 1:
            atomic_save(payload, self.folder / "best.pt")
            return
        atomic_save(payload, self.folder / name)
        if kept[0][1] == name:
            atomic_copy(self.folder / name, self.folder / "best.pt")
        for _, old in dropped:
            (self.folder / old).unlink(missing_ok=True)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check a checkpoint; any problem is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():  # a pickle that would call code
            raise CheckpointError(f"{path}: not a weights-only checkpoint: refusing to unpickle it") from None
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt or not an mmtrain "
                              f"checkpoint ({_first_line(e)})") from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt or not an mmtrain "
                              f"checkpoint ({_first_line(e)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_VERSION or "model" not in ckpt:
        raise CheckpointError(f"{path} is not an mmtrain checkpoint (format {FORMAT_VERSION})")
    return ckpt


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def load_checkpoint_config(path: str | os.PathLike, *, allow: Sequence[str] = (),
                           trust: bool = False) -> tuple[dict[str, Any], DictConfig]:
    """A checkpoint and its config, for rebuilding what it was trained with: every
    `_target_` in that config checked (mmtrain.trust) before anything is built from it."""
    ckpt = load_checkpoint(path)
    for key, kind in (("config", dict), ("stage", str)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{path} has no {key}: it cannot be rebuilt for evaluation")
    for section in ("data", "model", "stages", "trainer"):
        if not isinstance(ckpt["config"].get(section), dict):
            raise CheckpointError(f"{path}: its config has no '{section}' section: it cannot be rebuilt")
    check_no_interpolation(ckpt["config"], str(path))  # even if trusted: it may be a bomb
    check_data_sizes(ckpt["config"]["data"], path)
    return ckpt, trusted_config(ckpt["config"], source=str(path), allow=allow, trust=trust)


def check_data_sizes(data: dict[str, Any], path: Any) -> None:
    """Refuse a data config that would make eval decode or generate more than any genuine run:
    `image_size` multiplies every image, the synthetic `n_*` the whole dataset."""
    from mmtrain.data import MAX_IMAGE_SIZE, MAX_SYNTHETIC_SAMPLES

    for key, low, high in (("image_size", 1, MAX_IMAGE_SIZE), ("n_train", 0, MAX_SYNTHETIC_SAMPLES),
                           ("n_val", 0, MAX_SYNTHETIC_SAMPLES), ("n_test", 0, MAX_SYNTHETIC_SAMPLES)):
        value = data.get(key)
        if value is not None and not (type(value) is int and low <= value <= high):
            raise CheckpointError(f"{path}: its config's data.{key}={value!r} is not an integer in {low}..{high}: "
                                  f"it is corrupt or made to exhaust memory")


def checkpoint_tokenizer(ckpt: dict[str, Any], path: Any) -> Any:
    """The TextTokenizer a checkpoint was trained with; a missing or unreadable one is a
    CheckpointError naming the file."""
    from mmtrain.data.tokenizer import MAX_LENGTH, TextTokenizer

    if not isinstance(ckpt.get("tokenizer"), str):
        raise CheckpointError(f"{path} holds no tokenizer: it was not written by mmtrain's trainer, "
                              f"so its text ids cannot be reproduced")
    try:
        tokenizer = TextTokenizer.from_json(ckpt["tokenizer"])
    except Exception as e:  # the tokenizers library raises its own types for bad JSON
        raise CheckpointError(f"{path}: its tokenizer cannot be read ({_first_line(e)})") from None
    # Each would otherwise surface as a crash deep in the data or the embedding lookup.
    top = max(tokenizer.tokenizer.get_vocab().values(), default=-1)
    problem = ("its max_length is below 1" if tokenizer.max_length < 1 else
               f"its max_length {tokenizer.max_length} is above {MAX_LENGTH}" if tokenizer.max_length > MAX_LENGTH else
               "it has no [PAD] token" if tokenizer.pad_id is None else
               f"it maps a token to id {top}, past its vocabulary of {tokenizer.vocab_size}"
               if top >= tokenizer.vocab_size else "")
    if problem:
        raise CheckpointError(f"{path}: its tokenizer is not one mmtrain wrote: {problem}")
    return tokenizer


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Any) -> None:
    """load_state_dict, with a mismatch explained in one line instead of a wall of keys."""
    load_state(model, state, f"checkpoint {path} does not fit this model/config")


def check_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Any) -> None:
    """What load_model_state refuses, without loading (so `model` may live on the meta device)."""
    check_state(model, state, f"checkpoint {path} does not fit this model/config")


def config_mismatch(saved: dict[str, Any], current: dict[str, Any],
                    sections: tuple[str, ...] = ("model",), ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys under the (dotted) `sections` whose values differ, as 'key: saved -> current' lines."""
    out: list[str] = []
    for section in sections:
        a, b = _flatten(_get(saved, section), section), _flatten(_get(current, section), section)
        for key in sorted(set(a) | set(b)):
            if key in ignore:
                continue
            if a.get(key, "<absent>") != b.get(key, "<absent>"):
                out.append(f"{key}: {a.get(key, '<absent>')!r} in the checkpoint, "
                           f"{b.get(key, '<absent>')!r} now")
    return out


def _get(config: dict[str, Any], dotted: str) -> Any:
    for key in dotted.split("."):
        config = config.get(key, {}) if isinstance(config, dict) else {}
    return config


def _flatten(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
        return out
    return {prefix: node}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only refuses: keep it as a tensor.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
