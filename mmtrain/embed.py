"""`mmtrain embed ckpt=PATH images=DIR | texts=FILE out=INDEX`: a searchable embedding index.

An index is a folder: `index.json` (what was embedded, with which checkpoint, and the list
of finished shards) and shards `shard-NNNNN.npy` (float32 rows, L2-normalized) with
`shard-NNNNN.json` (the file names, relative to the image folder, or the texts). A shard
is written whole and only then listed in `index.json`, both atomically, so an interrupted
run loses at most one shard of work; running the same command again skips everything
already listed (and embeds files added since).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import hydra
import numpy as np
from omegaconf import DictConfig

from mmtrain.atomic import write_atomically, write_json
from mmtrain.config import config_dir, register_schemas
from mmtrain.errors import ConfigError, DataError

log = logging.getLogger("mmtrain")

INDEX_FORMAT = 1


def main() -> None:
    register_schemas()
    hydra.main(config_path=config_dir(), config_name="embed", version_base="1.3")(run)()


def fingerprint(path: Path) -> str:
    """sha256 of the checkpoint file: an index is only searched with the weights that built it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Index:
    folder: Path
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    def names(self) -> Iterator[str]:
        for shard in self.meta["shards"]:
            yield from json.loads((self.folder / f"{shard}.json").read_text(encoding="utf-8"))

    def shards(self) -> Iterator[tuple[list[str], np.ndarray]]:
        """(names, embeddings n x D) shard by shard: a large index never sits whole in memory."""
        for shard in self.meta["shards"]:
            names = json.loads((self.folder / f"{shard}.json").read_text(encoding="utf-8"))
            yield names, np.load(self.folder / f"{shard}.npy", allow_pickle=False)

    def add_shard(self, names: list[str], embeddings: np.ndarray) -> None:
        shard = f"shard-{len(self.meta['shards']):05d}"
        write_atomically(self.folder / f"{shard}.npy", lambda f: np.save(f, embeddings, allow_pickle=False))
        write_json(self.folder / f"{shard}.json", names)
        self.meta["shards"].append(shard)
        self.meta["count"] += len(names)
        write_json(self.folder / "index.json", self.meta)


def open_index(folder: str | Path) -> Index:
    """An existing index, its metadata checked: it is a file from outside like any other."""
    folder = Path(folder).expanduser()
    path = folder / "index.json"
    if not path.is_file():
        raise DataError(f"index={folder}: no index.json there; build one with `mmtrain embed ckpt=... "
                        f"images=DIR out={folder}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        ok = (meta.get("format") == INDEX_FORMAT and meta.get("kind") in ("image", "text")
              and all(isinstance(s, str) and s.startswith("shard-") and "/" not in s for s in meta["shards"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise DataError(f"{path} is not an mmtrain embedding index (format {INDEX_FORMAT}): rebuild it "
                        f"with `mmtrain embed`")
    return Index(folder, meta)


def start_index(folder: Path, meta: dict[str, Any]) -> Index:
    """A new index, or the existing one at `folder` to resume if it was built the same way."""
    if (folder / "index.json").is_file():
        index = open_index(folder)
        same = {k: index.meta.get(k) for k in ("kind", "source", "checkpoint_sha256")}
        want = {k: meta[k] for k in same}
        if same != want:
            differ = next(k for k in same if same[k] != want[k])
            raise ConfigError(f"out={folder} holds an index of another {differ.replace('_sha256', '')} "
                              f"({same[differ]}): choose another out= or delete it")
        return index
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"out={folder} is a non-empty folder without an index.json: choose another out=")
    return Index(folder, {**meta, "shards": [], "count": 0, "skipped": []})


def _embed_images(loaded: Any, index: Index, root: Path, cfg: DictConfig) -> None:
    from tqdm.auto import tqdm

    from mmtrain.inference import find_images, image_batches, image_embedding

    files = find_images(str(root), what="images")
    done = set(index.names()) | set(index.meta["skipped"])
    todo = [p for p in files if p.relative_to(root).as_posix() not in done]
    if len(todo) < len(files):
        print(f"resuming: {len(files) - len(todo)} of {len(files)} images are already in {index.folder}",
              file=sys.stderr)
    names: list[str] = []
    rows: list[np.ndarray] = []
    bar = tqdm(total=len(todo), unit="img", desc="embedding", disable=not cfg.progress, file=sys.stderr)
    for batch in image_batches(todo, loaded.info, cfg.batch_size, cfg.num_workers):
        for i, message in batch.errors:
            if not cfg.skip_unreadable:
                if names:
                    index.add_shard(names, np.concatenate(rows))
                raise DataError(f"{message}; or pass skip_unreadable=true to leave such files out "
                                f"(the {index.meta['count']} embedded so far are kept: run again to resume)")
            index.meta["skipped"].append(todo[i].relative_to(root).as_posix())
        if batch.index:
            rows.append(image_embedding(loaded, batch.images).numpy())
            names += [todo[i].relative_to(root).as_posix() for i in batch.index]
        bar.update(len(batch.index) + len(batch.errors))
        if len(names) >= cfg.shard_size:
            index.add_shard(names, np.concatenate(rows))
            names, rows = [], []
    bar.close()
    if names or not index.meta["shards"]:
        index.add_shard(names, np.concatenate(rows) if rows else np.zeros((0, index.meta["dim"]), np.float32))


def _embed_texts(loaded: Any, index: Index, text_file: str, cfg: DictConfig) -> None:
    from mmtrain.inference import embed_texts, read_texts

    done = set(index.names())
    todo = [t for t in dict.fromkeys(read_texts(None, text_file)) if t not in done]
    for s in range(0, len(todo), cfg.shard_size):
        chunk = todo[s : s + cfg.shard_size]
        embeddings, cut = embed_texts(loaded, chunk, cfg.batch_size, cfg.truncate)
        index.add_shard(chunk, embeddings.numpy())
        if any(cut):
            log.warning("%d texts longer than the model accepts were cut (truncate=true)", sum(cut))
    if not index.meta["shards"]:
        index.add_shard([], np.zeros((0, index.meta["dim"]), np.float32))


def run(cfg: DictConfig) -> None:
    from mmtrain.inference import load_for_inference

    if not cfg.ckpt or not cfg.out:
        raise ConfigError("usage: mmtrain embed ckpt=PATH images=DIR out=INDEX (or texts=FILE for a text index)")
    if (cfg.images is None) == (cfg.texts is None):
        raise ConfigError("give images=DIR (an image index) or texts=FILE (a text index, one per line)")
    if cfg.shard_size < 1:
        raise ConfigError(f"shard_size={cfg.shard_size} must be >= 1")
    kind = "image" if cfg.images is not None else "text"
    source = Path(cfg.images if kind == "image" else cfg.texts).expanduser()
    if kind == "image" and not source.is_dir():
        raise DataError(f"images={cfg.images}: no such folder")
    loaded = load_for_inference(cfg.ckpt, device=cfg.device, allow_targets=list(cfg.allow_targets),
                                trust_config=cfg.trust_config)
    loaded.require("embed", "contrastive")
    meta = {"format": INDEX_FORMAT, "kind": kind, "source": str(source.resolve()),
            "checkpoint": str(Path(cfg.ckpt).resolve()), "checkpoint_sha256": fingerprint(Path(cfg.ckpt)),
            "dim": int(loaded.task.embed_dim)}
    index = start_index(Path(cfg.out).expanduser(), meta)
    if kind == "image":
        _embed_images(loaded, index, source, cfg)
    else:
        _embed_texts(loaded, index, str(source), cfg)
    skipped = len(index.meta.get("skipped", []))
    note = f", {skipped} unreadable files left out (listed in index.json)" if skipped else ""
    print(f"{index.meta['count']} {kind} embeddings in {index.folder}{note}")
