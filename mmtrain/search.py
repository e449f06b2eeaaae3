"""`mmtrain search index=INDEX text="..." | image=PATH k=10`: the nearest entries of an index.

The query is embedded with the checkpoint that built the index (checked by its sha256) into
the same space as the entries, so any pairing works: text -> images, image -> images,
text -> texts, image -> texts. Entries are ranked by cosine similarity; `sheet=FILE.png`
draws the top k of an image index as a contact sheet.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig

from mmtrain.config import config_dir, register_schemas
from mmtrain.errors import CheckpointError, ConfigError, DataError

Hit = dict[str, Any]


def main() -> None:
    register_schemas()
    hydra.main(config_path=config_dir(), config_name="search", version_base="1.3")(run)()


def top_k(index: Any, query: np.ndarray, k: int) -> list[Hit]:
    """The k entries most similar to `query` (D), best first, merged shard by shard."""
    best_names: list[str] = []
    best_scores = np.empty(0, dtype=np.float32)
    for names, embeddings in index.shards():
        if embeddings.shape[0] == 0:
            continue
        scores = np.concatenate([best_scores, embeddings @ query])
        pool = best_names + names
        keep = np.argsort(-scores, kind="stable")[:k]
        best_names, best_scores = [pool[i] for i in keep], scores[keep]
    return [{"rank": r + 1, "score": float(s), "entry": n}
            for r, (n, s) in enumerate(zip(best_names, best_scores))]


def contact_sheet(hits: list[Hit], root: Path, out: Path, thumb: int = 160) -> None:
    """The hits' images in a grid, each labelled with its rank, score and file name."""
    from PIL import Image, ImageDraw, ImageOps

    from mmtrain.atomic import write_atomically

    cols = min(5, len(hits))
    rows = (len(hits) + cols - 1) // cols
    label = 30
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, hit in enumerate(hits):
        x, y = (n % cols) * thumb, (n // cols) * (thumb + label)
        try:
            with Image.open(root / hit["entry"]) as picture:
                # Scaled to fit either way: a 32 px training image would be a dot otherwise.
                picture = ImageOps.contain(picture.convert("RGB"), (thumb - 4, thumb - 4))
                sheet.paste(picture, (x + (thumb - picture.width) // 2, y + (thumb - picture.height) // 2))
        except OSError:
            draw.text((x + 6, y + thumb // 2), "(unreadable)", fill="red")
        name = hit["entry"] if len(hit["entry"]) <= 24 else "..." + hit["entry"][-21:]
        draw.text((x + 4, y + thumb), f"#{hit['rank']}  {hit['score']:.3f}", fill="black")
        draw.text((x + 4, y + thumb + 14), name, fill="black")
    write_atomically(out, lambda f: sheet.save(f, format="PNG"))


def search(cfg: DictConfig) -> tuple[Any, list[Hit]]:
    from mmtrain.index import fingerprint, open_index
    from mmtrain.inference import embed_texts, find_images, image_batches, image_embedding, load_for_inference

    if not cfg.index:
        raise ConfigError("usage: mmtrain search index=INDEX text=\"...\" (or image=PATH) [k=10]")
    if (cfg.text is None) == (cfg.image is None):
        raise ConfigError("give one query: text=\"...\" or image=PATH")
    if cfg.k < 1:
        raise ConfigError(f"k={cfg.k} must be >= 1")
    if cfg.out and Path(cfg.out).suffix.lower() not in (".json", ".csv"):
        raise ConfigError(f"out={cfg.out}: name a .json or .csv file")
    if cfg.sheet and Path(cfg.sheet).suffix.lower() != ".png":
        raise ConfigError(f"sheet={cfg.sheet}: name a .png file")
    index = open_index(cfg.index)
    if cfg.sheet and index.kind != "image":
        raise ConfigError("sheet= draws images: this is a text index")
    ckpt = Path(cfg.ckpt or index.meta["checkpoint"])
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt} (the checkpoint that built {cfg.index}) is not there: pass ckpt=PATH")
    if fingerprint(ckpt) != index.meta["checkpoint_sha256"]:
        raise CheckpointError(f"{ckpt} is not the checkpoint that built {cfg.index}: its embeddings would "
                              f"not be comparable; pass the right ckpt= or rebuild the index")
    loaded = load_for_inference(ckpt, device=cfg.device, allow_targets=list(cfg.allow_targets),
                                trust_config=cfg.trust_config)
    if cfg.text is not None:
        if not str(cfg.text).strip():
            raise ConfigError("text= is empty: give the sentence to search for")
        query, cut = embed_texts(loaded, [str(cfg.text)], truncate=cfg.truncate)
        if cut[0]:
            print("note: the query was longer than the model accepts and was cut (truncate=true)", file=sys.stderr)
    else:
        paths = find_images(cfg.image)
        if len(paths) != 1:
            raise ConfigError(f"image={cfg.image} names {len(paths)} files: search takes one query image")
        batch = next(image_batches(paths, loaded.info, 1))
        if batch.errors:
            raise DataError(batch.errors[0][1])
        query = image_embedding(loaded, batch.images)
    return index, top_k(index, query[0].numpy(), cfg.k)


def run(cfg: DictConfig) -> None:
    from mmtrain.inference import write_rows

    index, hits = search(cfg)
    if not hits:
        raise DataError(f"index={cfg.index} is empty: nothing to search")
    what = "file" if index.kind == "image" else "text"
    print(f"{'rank':>4}  {'score':>7}  {what}")
    for hit in hits:
        print(f"{hit['rank']:>4}  {hit['score']:>7.4f}  {hit['entry']}")
    if cfg.out:
        write_rows(Path(cfg.out), f"{index.kind}_search", hits, str(index.meta["checkpoint"]))
        print(f"written: {cfg.out}")
    if cfg.sheet:
        contact_sheet(hits, Path(index.meta["source"]), Path(cfg.sheet))
        print(f"contact sheet: {cfg.sheet}")
