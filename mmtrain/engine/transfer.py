"""`init_from`: start a new recipe from the modules of an earlier run that fit this model.

Unlike `trainer.resume` the config may differ: each top-level module (image_encoder,
text_encoder, fusion, heads.<task>) is loaded when the checkpoint holds exactly its tensors,
with the same shapes, and skipped otherwise, with the reason. The checkpoint is read with
weights_only and nothing in its config is instantiated: only its tensors and its tokenizer
(plain JSON) are used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmtrain.errors import CheckpointError, ConfigError
from mmtrain.weights import misfit


def find_init_checkpoint(path: str) -> Path:
    """A checkpoint file as given; a run dir -> its newest best.pt (else newest last.pt)."""
    where = Path(path).expanduser()
    if where.is_file():
        return where
    if where.is_dir():
        for kind in ("best", "last"):
            found = sorted((where / "checkpoints").glob(f"*/{kind}.pt"), key=lambda p: p.stat().st_mtime)
            if found:
                return found[-1]
        raise CheckpointError(f"init_from={path}: the folder has no checkpoints/<stage>/best.pt or last.pt")
    raise CheckpointError(f"init_from={path}: no such checkpoint file or run dir")


def module_names(model: nn.Module) -> list[str]:
    """The units init_from loads: the encoders, the fusion and each task's head."""
    names = [n for n in ("image_encoder", "text_encoder", "fusion") if hasattr(model, n)]
    heads = getattr(model, "heads", {})
    return names + [f"heads.{h}" for h in heads]


def load_modules(model: nn.Module, state: dict[str, torch.Tensor], modules: list[str] | None,
                 source: str | Path) -> tuple[list[str], dict[str, str]]:
    """Copy the fitting modules of `state` into `model` -> (loaded names, {skipped name: why}).

    `modules=None` loads whatever fits (and refuses a checkpoint where nothing does); named
    modules must all fit.
    """
    valid = module_names(model)
    for name in modules or ():
        if name not in valid:
            raise ConfigError(f"init_modules names '{name}': the model has {', '.join(valid)}")
    own = model.state_dict()
    update: dict[str, torch.Tensor] = {}
    loaded, skipped = [], {}
    for name in modules or valid:
        prefix = name + "."
        mine = {k: v for k, v in own.items() if k.startswith(prefix)}
        theirs = {k: v for k, v in state.items() if k.startswith(prefix)}
        reason = "; ".join(misfit(mine, theirs)) if theirs else "not in the checkpoint"
        if not reason:
            update.update(theirs)
            loaded.append(name)
        else:
            skipped[name] = reason
    if modules and skipped:
        name, reason = next(iter(skipped.items()))
        raise CheckpointError(f"init_from={source}: its {name} does not fit this model ({reason})")
    if not loaded:
        raise CheckpointError(f"init_from={source}: no module of it fits this model "
                              f"({'; '.join(f'{n}: {r}' for n, r in skipped.items())})")
    model.load_state_dict({**own, **update})
    return loaded, skipped
