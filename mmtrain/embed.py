"""`mmtrain embed ckpt=PATH images=DIR | texts=FILE out=INDEX`: a searchable embedding index.

An index is a folder: `index.json` (what was embedded, with which checkpoint, and the list
of finished shards) and shards `shard-NNNNN.npy` (float32 rows, L2-normalized) with
`shard-NNNNN.json` (the file names, relative to the image folder, or the texts). A shard
is written whole and only then listed in `index.json`, both atomically, so an interrupted
run loses at most one shard of work; running the same command again skips everything
already listed (and embeds files added since).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from mmtrain.config import config_dir, register_schemas
from mmtrain.errors import ConfigError, DataError
from mmtrain.index import INDEX_FORMAT, Index, fingerprint, start_index

log = logging.getLogger("mmtrain")


def main() -> None:
    register_schemas()
    hydra.main(config_path=config_dir(), config_name="embed", version_base="1.3")(run)()


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
