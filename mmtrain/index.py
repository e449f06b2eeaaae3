"""The embedding index on disk that `mmtrain embed` writes and `mmtrain search` reads.

An index is a folder: `index.json` (what was embedded, with which checkpoint, and the list
of finished shards) and shards `shard-NNNNN.npy` (float32 rows, L2-normalized) with
`shard-NNNNN.json` (the file names, relative to the image folder, or the texts). A shard
is written whole and only then listed in `index.json`, both atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmtrain.atomic import write_atomically, write_json
from mmtrain.errors import ConfigError, DataError

INDEX_FORMAT = 1


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
