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

import re
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


# Config groups whose component the composed config holds elsewhere than at the group's path.
GROUP_SLOTS = {"task": "stages.*.task"}
TORCH_SLOTS = frozenset({"optimizer", "scheduler"})
# Keys that change how Hydra builds a node: `_partial_: true` hands back a half-built
# component where eval expects a built one, `_args_` adds arguments no config gives.
HYDRA_KEYS = ("_partial_", "_args_", "_recursive_", "_convert_")
# A resolved config has a few hundred entries; a file can make its pickle memo or its YAML
# anchors share one list many times over, which OmegaConf would copy out into billions.
MAX_ENTRIES = 100_000


def walk_targets(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value of `_target_`) for every node anywhere below `node`: in nested
    dicts, lists, `_args_`, partials and non-recursive nodes alike."""
    for sub, found in _target_nodes(node, key):
        yield sub, found["_target_"]


def _target_nodes(node: Any, key: str = "") -> Iterator[tuple[str, Mapping]]:
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield key or "<top>", node
        for k, v in node.items():
            yield from _target_nodes(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _target_nodes(v, f"{key}[{i}]")


@lru_cache(maxsize=1)
def packaged_slots() -> dict[str, frozenset[str]]:
    """Every `_target_` in mmtrain's own conf/ tree -> the keys it is built at in a composed
    config (`*`: any one stage name)."""
    return {target: frozenset(slot for slot, _ in uses) for target, uses in _packaged_uses().items()}


@lru_cache(maxsize=1)
def _packaged_uses() -> dict[str, frozenset[tuple[str, str]]]:
    """target -> {(slot, Hydra key it is given there: `_partial_`...)}; "" for none."""
    found: dict[str, set[tuple[str, str]]] = {}
    root = Path(config_dir())
    for path in root.rglob("*.yaml"):
        group = path.parent.relative_to(root).as_posix()
        if group == "." or "@package _global_" in path.read_text(encoding="utf-8"):
            base = ""
        else:
            base = GROUP_SLOTS.get(group, group.replace("/", "."))
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        for key, node in _target_nodes(raw):
            slot = base if key == "<top>" else f"{base}.{key}" if base else key
            flags = {k for k in node if k in HYDRA_KEYS} or {""}
            found.setdefault(str(node["_target_"]), set()).update((slot, flag) for flag in flags)
    return {target: frozenset(uses) for target, uses in found.items()}


def packaged_targets() -> frozenset[str]:
    """Every `_target_` in mmtrain's own conf/ tree."""
    return frozenset(packaged_slots())


def _slots_of(target: str) -> frozenset[str]:
    return packaged_slots().get(target) or (TORCH_SLOTS if _torch_family(target) else frozenset())


def _given_there(target: str, key: str, flag: str) -> bool:
    if target not in _packaged_uses():  # a torch optimizer or scheduler: built partial
        return flag == "_partial_" and _at_home(key, TORCH_SLOTS)
    return any(f == flag and _at_home(key, frozenset({slot})) for slot, f in _packaged_uses()[target])


def _at_home(key: str, slots: frozenset[str]) -> bool:
    return any(re.fullmatch(re.escape(slot).replace(r"\*", r"[^.\[\]]+"), key) for slot in slots)


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


def check_size(node: Any, source: str) -> None:
    """Refuse a plain container read from a file whose entries, counted as OmegaConf would
    copy them (shared ones once per place), pass MAX_ENTRIES: stops counting there."""
    stack, seen = [node], 0
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        seen += 1
        if seen > MAX_ENTRIES:
            raise ConfigError(f"{source}: its config has more than {MAX_ENTRIES} entries: refusing "
                              f"to read it (a genuine one has a few hundred)")


def check_no_interpolation(node: Any, source: str) -> None:
    """Refuse an interpolation anywhere in a config that was saved resolved (a checkpoint's):
    it never holds one, and resolving one runs resolvers (oc.env, oc.decode) and can expand
    a few bytes into gigabytes (`${a}${a}` nested)."""
    check_size(node, source)
    for key, name, value in _entries(node):
        text = next((t for t in (name, value) if isinstance(t, str) and "${" in t), None)
        if text is not None:
            raise ConfigError(f"{source}: {key} holds an interpolation ({text[:80]!r}), which a "
                              f"checkpoint's resolved config never does: refusing it")


def _resolved(cfg: Mapping | DictConfig, source: str) -> Any:
    if not isinstance(cfg, DictConfig):
        check_size(cfg, source)
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
    for key, node in _target_nodes(resolved):
        target = node["_target_"]
        if not is_trusted_target(target, allow):
            raise ConfigError(f"{source}: {key}._target_={target!r} is not an mmtrain component: "
                              f"refusing to build it ({hint})")
        slots = _slots_of(target)
        # Built anywhere but at its own key (a dataset builder as a task, or nested inside
        # another component), an mmtrain component escapes the guards that key has (eval
        # never downloads data nor reads pretrained weights, for instance).
        if slots and not _at_home(key, slots) and not _allowed_by_user(target, allow):
            raise ConfigError(f"{source}: {key}._target_={target!r} is built only at "
                              f"{' or '.join(sorted(slots))}, not at {key}: refusing to build it ({hint})")
        flag = next((k for k in HYDRA_KEYS if k in node and not _allowed_by_user(target, allow)
                     and not _given_there(target, key, k)), None)
        if flag is not None:
            raise ConfigError(f"{source}: {key}.{flag} is not set on {target!r} by any mmtrain "
                              f"config: refusing it ({hint})")
    for key, name, value in _entries(resolved):
        # Left in a resolved config, it would be resolved again when the config is built.
        text = next((t for t in (name, value) if isinstance(t, str) and "${" in t), None)
        if text is not None:
            raise ConfigError(f"{source}: {key} holds an interpolation ({text!r}) after resolving: "
                              f"refusing it ({hint})")
        if name == "trust_remote_code" and value not in (False, None):  # "yes" is truthy too
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
