"""Did-you-mean for the overrides a person mistypes: unknown keys, groups and options.

Hydra answers `optimzer.lr=1e-3` with "To append to your config use +optimzer.lr=1e-3",
which leads into a second error: the schema has no such key. Here an unknown key gets the
closest key the composed config has instead, and the `+` form is kept only where it would
work: a key a component's class accepts but its YAML does not set. Runs only on the error
path; composes the config once more, imports no torch unless a `_target_` must be read.
"""

from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Any, Iterable

_OVERRIDE = re.compile(r"Could not override '([^']+)'\. To append to your config use \+\S+\s*")
_OPTION = re.compile(r"Could not find '([^']+)/([^'/]+)'.*?Available options in '[^']+': ([\w, -]+)")


def closest(word: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return found[0] if found else None


def config_groups(conf: Path) -> list[str]:
    """Every config group under `conf` (folders holding .yaml files), e.g. model/fusion."""
    return sorted(str(p.parent.relative_to(conf)) for p in conf.rglob("*.yaml") if p.parent != conf)


def _keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a composed config, with its node, nested ones included."""
    from omegaconf import DictConfig

    out: dict[str, Any] = {}
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}.{key}" if prefix else str(key)
            child = node._get_node(key)
            out[path] = child
            out.update(_keys(child, path))
    return out


def _target_accepts(node: Any, name: str) -> bool:
    """Whether the class a `_target_` node builds takes `name` (the `+key=value` case)."""
    from mmtrain.config import _import_target

    try:
        params = inspect.signature(_import_target(str(node._target_))).parameters
    except Exception:  # an unimportable target has its own error at start
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def unknown_key(key: str, config_name: str, args: list[str]) -> str | None:
    """The message for an override of a key the config lacks, or None to keep Hydra's."""
    from mmtrain.config import compose_config, config_dir

    others = [a for a in args if not a.split("=", 1)[0].lstrip("+~") == key and "=" in a
              and not a.startswith("-")]
    try:
        cfg = compose_config(config_name, others)
    except Exception:  # another override is broken too: Hydra's message stands
        return None
    keys = _keys(cfg)
    groups = config_groups(Path(config_dir())) if config_name == "train" else []
    if "/" in key:
        guess = closest(key, groups)
        return f"no config group '{key}'" + (f": did you mean {guess}?" if guess else
                                                 f" (groups: {', '.join(groups)})")
    parent, _, leaf = key.rpartition(".")
    node = keys.get(parent) if parent else None
    if node is not None and "_target_" in getattr(node, "keys", lambda: [])() and _target_accepts(node, leaf):
        return None  # the class takes it: Hydra's `+key=value` hint is right
    guess = closest(key, [k for k in keys if not k.startswith("hydra")] + groups)
    where = f"'{parent}'" if node is not None else f"the {config_name} config"
    hint = f": did you mean {guess}?" if guess else ""
    return f"'{key}' is not a key of {where}{hint} (`mmtrain {config_name} --cfg job` prints them all)"


def improve(message: str, config_name: str, args: list[str]) -> str:
    """`message` with a did-you-mean for an unknown key, group or option, when one is close."""
    match = _OVERRIDE.search(message)
    if match:
        better = unknown_key(match.group(1), config_name, args)
        return better if better else message
    match = _OPTION.search(message)
    if match:
        options = [o.strip() for o in match.group(3).split(",")]
        guess = closest(match.group(2), options)
        if guess:
            return f"{match.group(1)}={match.group(2)}: no such option, did you mean {match.group(1)}={guess}? " \
                   f"({message})"
    return message
