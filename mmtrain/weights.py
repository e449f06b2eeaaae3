"""Weights checked against the module they go into before loading: what is missing, what is
unexpected and what has another shape, said in one line instead of torch's wall of keys.

Shared by checkpoints (engine) and pretrained weight files (models), so both refuse alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmtrain.errors import CheckpointError


def misfit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """How `state` differs from `own` (a module's state dict, or a part of one): what is
    missing, unexpected and of another shape, a count and the first example each; [] if it fits."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
    return parts


def check_state(module: nn.Module, state: Any, problem: str) -> None:
    """Raise `problem: <what does not fit>` unless `state` holds exactly `module`'s tensors,
    each of its shape; `module` may live on the meta device (nothing is loaded)."""
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{problem}: its model weights are not a mapping of names to tensors: refusing them")
    parts = misfit(module.state_dict(), state)
    if parts:
        raise CheckpointError(f"{problem}: {'; '.join(parts)}")


def load_state(module: nn.Module, state: Any, problem: str) -> None:
    """`module.load_state_dict(state)` once `check_state` has found that it fits."""
    check_state(module, state, problem)
    module.load_state_dict(state)
