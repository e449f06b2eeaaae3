"""Which `_target_`s a config read from outside may name, decided before anything is built.

A checkpoint's config, or a run dir's `.hydra/config.yaml`, is a file someone else may
have written. Hydra instantiates whatever callable a `_target_` names with whatever
arguments the file gives (`builtins.open` with mode w, `shutil.copyfile`, `numpy.load`
with allow_pickle...), and its own blocklist misses most of them. So such a config may
only name what mmtrain's packaged configs name, plus torch's optimizers and learning-rate
schedulers; a user widens that on purpose with `trust_config=true` or with module prefixes
(`allow_targets=[mypkg.]`). Targets are compared as strings: nothing is imported to decide.

The config is resolved first, so a target that an interpolation (`${oc.decode:...}`)
would produce is seen too, and `trusted_config` hands back that resolved copy, the one
that was checked, so what gets built cannot differ from what was read.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from mmtrain.config import config_dir
from mmtrain.errors import ConfigError

# torch modules whose classes of one base may be named: an optimizer or a schedule only
# ever wraps the parameters or the optimizer it is given.
TORCH_FAMILIES = {
    "torch.optim": ("torch.optim", "Optimizer"),
    "torch.optim.lr_scheduler": ("torch.optim.lr_scheduler", "LRScheduler"),
}


def walk_targets(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value of `_target_`) for every node anywhere below `node`: in nested
    dicts, lists, `_args_`, partials and non-recursive nodes alike."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield key or "<top>", node["_target_"]
        for k, v in node.items():
            yield from walk_targets(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from walk_targets(v, f"{key}[{i}]")


@lru_cache(maxsize=1)
def packaged_targets() -> frozenset[str]:
    """Every `_target_` in mmtrain's own conf/ tree."""
    found = set()
    for path in Path(config_dir()).rglob("*.yaml"):
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        found.update(str(t) for _, t in walk_targets(raw))
    return frozenset(found)


def _torch_family(target: str) -> bool:
    module_name, _, name = target.rpartition(".")
    if module_name not in TORCH_FAMILIES or name.startswith("_"):
        return False
    import importlib

    module = importlib.import_module(TORCH_FAMILIES[module_name][0])  # torch's own module only
    base = getattr(module, TORCH_FAMILIES[module_name][1])
    obj = getattr(module, name, None)
    return isinstance(obj, type) and issubclass(obj, base)


def _allowed_by_user(target: str, allow: Sequence[str]) -> bool:
    for prefix in allow:
        prefix = str(prefix).strip()
        if not prefix.rstrip("."):
            continue
        stem = prefix.rstrip(".")
        if target == stem or target.startswith(stem + "."):
            return True
    return False


def is_trusted_target(target: Any, allow: Sequence[str] = ()) -> bool:
    return isinstance(target, str) and (
        target in packaged_targets() or _torch_family(target) or _allowed_by_user(target, allow))


def _resolved(cfg: Mapping | DictConfig, source: str) -> Any:
    try:
        node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
        return OmegaConf.to_container(node, resolve=True)
    except Exception as e:  # a file from elsewhere may hold anything OmegaConf refuses
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{source}: its config cannot be read ({first})") from None


def _entries(node: Any, key: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, own name, value) of every dict entry and list item below `node`."""
    if isinstance(node, Mapping):
        items = [(f"{key}.{k}" if key else str(k), k, v) for k, v in node.items()]
    elif isinstance(node, (list, tuple)):
        items = [(f"{key}[{i}]", i, v) for i, v in enumerate(node)]
    else:
        return
    for sub, name, value in items:
        yield sub, name, value
        yield from _entries(value, sub)


def _check(resolved: Any, source: str, allow: Sequence[str]) -> None:
    hint = ("pass trust_config=true, or allow_targets=[<module prefix>.], only if you trust "
            "whoever wrote this file")
    for key, target in walk_targets(resolved):
        if not is_trusted_target(target, allow):
            raise ConfigError(f"{source}: {key}._target_={target!r} is not an mmtrain component: "
                              f"refusing to build it ({hint})")
    for key, name, value in _entries(resolved):
        # Left in a resolved config, it would be resolved again when the config is built.
        text = next((t for t in (name, value) if isinstance(t, str) and "${" in t), None)
        if text is not None:
            raise ConfigError(f"{source}: {key} holds an interpolation ({text!r}) after resolving: "
                              f"refusing it ({hint})")
        if name == "trust_remote_code" and value is True:
            raise ConfigError(f"{source}: {key}=true would run code that comes with a model: "
                              f"refusing it ({hint})")


def check_config_targets(cfg: Mapping | DictConfig, *, source: str, allow: Sequence[str] = (),
                         trust: bool = False) -> None:
    """Refuse (ConfigError, one line naming `source`, the key and the target) a config read
    from outside that would build anything but mmtrain's own components and torch's
    optimizers and schedulers, unless `trust` or a prefix in `allow` says otherwise."""
    if trust:
        return
    _check(_resolved(cfg, source), source, allow)


def trusted_config(cfg: Mapping | DictConfig, *, source: str, allow: Sequence[str] = (),
                   trust: bool = False) -> DictConfig:
    """`cfg` checked as by `check_config_targets`, returned resolved: the very values checked."""
    resolved = _resolved(cfg, source)
    if not trust:
        _check(resolved, source, allow)
    return OmegaConf.create(resolved)
