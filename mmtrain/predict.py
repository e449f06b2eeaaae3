"""`mmtrain predict ckpt=PATH image=... [text=... | text_file=...]`: a checkpoint on your own inputs.

What comes out depends on the checkpoint's task: the top-k classes per (image, text) pair
(classification), a caption per image (captioning), the image-text similarity matrix
(contrastive), or zero-shot classes from `labels=[...]` and a prompt `template`
(contrastive). Results print as a table and, with `out=FILE.json|.csv`, are written as rows.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import hydra
from omegaconf import DictConfig

from mmtrain.config import config_dir, register_schemas
from mmtrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from mmtrain.inference import Loaded

Row = dict[str, Any]


def main() -> None:
    register_schemas()
    hydra.main(config_path=config_dir(), config_name="predict", version_base="1.3")(run)()


def display_name(path: Path) -> str:
    """A path relative to the working directory when it is inside it, else as it is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def pair_up(n_images: int, n_texts: int, pairing: str) -> list[tuple[int, int]]:
    """(image, text) positions to classify: zip pairs i with i (one image or one text goes with
    all of the other side); all pairs every image with every text."""
    if pairing == "all":
        return [(i, j) for i in range(n_images) for j in range(n_texts)]
    if pairing != "zip":
        raise ConfigError(f"pairing={pairing!r}: choose zip or all")
    if n_images == n_texts:
        return [(i, i) for i in range(n_images)]
    if n_images == 1 or n_texts == 1:
        return [(i, j) for i in range(n_images) for j in range(n_texts)]
    raise ConfigError(f"{n_images} images and {n_texts} texts cannot be zipped: give as many texts as "
                      f"images, one of either, or pairing=all for every combination")


def _decoded(batch: Any) -> None:
    if batch.errors:
        raise DataError(batch.errors[0][1])


def classify(loaded: Loaded, paths: Sequence[Path], texts: list[str], cfg: DictConfig) -> list[Row]:
    import torch

    from mmtrain.inference import encode_texts, image_batches

    ids, lengths, cut = encode_texts(loaded.tokenizer, texts, cfg.truncate)
    pairs = pair_up(len(paths), len(texts), cfg.pairing)
    by_image: dict[int, list[int]] = {}
    for i, j in pairs:
        by_image.setdefault(i, []).append(j)
    names = loaded.task.class_names
    k = min(cfg.top_k, len(names))
    rows: dict[tuple[int, int], list[Row]] = {}
    for batch in image_batches(paths, loaded.info, cfg.batch_size, cfg.num_workers):
        _decoded(batch)
        work = [(b, i, j) for b, i in enumerate(batch.index) for j in by_image.get(i, [])]
        for s in range(0, len(work), cfg.batch_size):
            chunk = work[s : s + cfg.batch_size]
            img = batch.images[[b for b, _, _ in chunk]]
            txt = torch.tensor([j for _, _, j in chunk])
            inputs = {"image": img, "text": ids[txt, : int(lengths[txt].max())],
                      "text_lengths": lengths[txt]}
            inputs = {key: v.to(loaded.device) for key, v in inputs.items()}
            with torch.no_grad():
                probs = loaded.task.logits(loaded.model, inputs).float().softmax(-1).cpu()
            top = probs.topk(k, dim=-1)
            for (_, i, j), p, c in zip(chunk, top.values.tolist(), top.indices.tolist()):
                rows[(i, j)] = [{"image": display_name(paths[i]), "text": texts[j], "text_cut": cut[j],
                                 "rank": r + 1, "label": names[ci], "probability": pi}
                                for r, (pi, ci) in enumerate(zip(p, c))]
    return [row for pair in pairs for row in rows[pair]]


def zero_shot(loaded: Loaded, paths: Sequence[Path], cfg: DictConfig) -> list[Row]:
    from mmtrain.inference import class_embeddings, image_batches, image_embedding

    labels = [str(label) for label in cfg.labels]
    classes, cut = class_embeddings(loaded, labels, [cfg.template], cfg.batch_size, cfg.truncate)
    scale = float(loaded.task.logit_scale(loaded.model))
    k = min(cfg.top_k, len(labels))
    rows = []
    for batch in image_batches(paths, loaded.info, cfg.batch_size, cfg.num_workers):
        _decoded(batch)
        probs = (scale * image_embedding(loaded, batch.images) @ classes.t()).softmax(-1)
        top = probs.topk(k, dim=-1)
        for i, p, c in zip(batch.index, top.values.tolist(), top.indices.tolist()):
            rows += [{"image": display_name(paths[i]), "rank": r + 1, "label": labels[ci],
                      "probability": pi, "text_cut": cut[ci]} for r, (pi, ci) in enumerate(zip(p, c))]
    return rows


def similarity(loaded: Loaded, paths: Sequence[Path], texts: list[str], cfg: DictConfig) -> list[Row]:
    from mmtrain.inference import embed_texts, image_batches, image_embedding

    text_emb, cut = embed_texts(loaded, texts, cfg.batch_size, cfg.truncate)
    rows = []
    for batch in image_batches(paths, loaded.info, cfg.batch_size, cfg.num_workers):
        _decoded(batch)
        sims = (image_embedding(loaded, batch.images) @ text_emb.t()).tolist()
        for i, row in zip(batch.index, sims):
            rows += [{"image": display_name(paths[i]), "text": t, "text_cut": c, "similarity": s}
                     for t, c, s in zip(texts, cut, row)]
    return rows


def caption(loaded: Loaded, paths: Sequence[Path], cfg: DictConfig) -> list[Row]:
    import torch

    from mmtrain.inference import image_batches

    beam = cfg.beam_size or loaded.task.beam_size
    if beam < 1:
        raise ConfigError(f"beam_size={beam} must be >= 1 (1 = greedy)")
    rows = []
    for batch in image_batches(paths, loaded.info, cfg.batch_size, cfg.num_workers):
        _decoded(batch)
        with torch.no_grad():
            out = loaded.task.generate(loaded.model, batch.images.to(loaded.device), beam_size=beam)
        rows += [{"image": display_name(paths[i]), "caption": loaded.task.decode(ids)}
                 for i, ids in zip(batch.index, out)]
    return rows


def predict(cfg: DictConfig) -> tuple[str, list[Row]]:
    """-> (what the rows are: classes, zero_shot, similarity or captions, the rows)."""
    from mmtrain.inference import find_images, load_for_inference, read_texts

    if not cfg.ckpt:
        raise ConfigError("say which checkpoint: ckpt=outputs/<name>/<time>/checkpoints/<stage>/best.pt")
    if not cfg.image:
        raise ConfigError("say which images: image=photo.jpg, image=folder/ or image='shots/*.png'")
    if cfg.top_k < 1:
        raise ConfigError(f"top_k={cfg.top_k} must be >= 1")
    texts = read_texts(cfg.text, cfg.text_file)
    if cfg.out and Path(cfg.out).suffix.lower() not in (".json", ".csv"):
        raise ConfigError(f"out={cfg.out}: name a .json or .csv file")
    paths = find_images(cfg.image)
    loaded = load_for_inference(cfg.ckpt, device=cfg.device, allow_targets=list(cfg.allow_targets),
                                trust_config=cfg.trust_config)
    loaded.require("predict", "classification", "contrastive", "captioning")
    if cfg.labels is not None:
        loaded.require("predict labels=[...] (zero-shot)", "contrastive")
        if texts:
            raise ConfigError("zero-shot (labels=...) builds its texts from the template: drop text=/text_file=")
        return "zero_shot", zero_shot(loaded, paths, cfg)
    if loaded.kind == "captioning":
        if texts:
            raise ConfigError("a captioning checkpoint writes the text itself: drop text=/text_file=")
        return "captions", caption(loaded, paths, cfg)
    if not texts:
        need = "the model reads both" if loaded.kind == "classification" else \
            "or labels=[...] for zero-shot classes"
        raise ConfigError(f"a {loaded.kind} checkpoint needs text=\"...\" or text_file=PATH ({need})")
    if loaded.kind == "classification":
        return "classes", classify(loaded, paths, texts, cfg)
    return "similarity", similarity(loaded, paths, texts, cfg)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(kind: str, rows: list[Row]) -> str:
    """Rows as a terminal table: one line per input (top classes side by side), or a matrix."""
    if kind == "captions":
        width = max(len(r["image"]) for r in rows)
        return "\n".join([f"{'image':<{width}}  caption"] + [f"{r['image']:<{width}}  {r['caption']}" for r in rows])
    if kind == "similarity":
        texts = list(dict.fromkeys(r["text"] for r in rows))
        width = min(40, max(len(r["image"]) for r in rows))
        lines = [f"{'image':<{width}}" + "".join(f"  {_short(t, 14):>14}" for t in texts)]
        sims: dict[str, list[float]] = {}
        for r in rows:
            sims.setdefault(r["image"], []).append(r["similarity"])
        lines += [f"{_short(img, width):<{width}}" + "".join(f"  {s:>14.4f}" for s in row)
                  for img, row in sims.items()]
        return "\n".join(lines)
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r["image"], r.get("text", "")), []).append(r)
    width = min(40, max(len(img) for img, _ in groups))
    with_text = kind == "classes"
    header = f"{'image':<{width}}" + (f"  {'text':<30}" if with_text else "") + "  top classes (probability)"
    lines = [header]
    for (img, text), top in groups.items():
        classes = "  ".join(f"{r['label']} {r['probability']:.3f}" for r in top)
        lines.append(f"{_short(img, width):<{width}}" + (f"  {_short(text, 30):<30}" if with_text else "")
                     + f"  {classes}")
    return "\n".join(lines)


def run(cfg: DictConfig) -> None:
    kind, rows = predict(cfg)
    print(format_table(kind, rows))
    cut = {r.get("text", r.get("label")) for r in rows if r.get("text_cut")}
    if cut:
        print(f"note: {len(cut)} text(s) longer than the model accepts were cut to their first tokens "
              f"(truncate=true)", file=sys.stderr)
    if cfg.out:
        from mmtrain.inference import write_rows

        write_rows(Path(cfg.out), kind, rows, str(cfg.ckpt))
        print(f"written: {cfg.out}")
