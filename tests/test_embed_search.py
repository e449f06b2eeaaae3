"""`mmtrain embed` and `mmtrain search` on the COCO fixture's JPEGs with a tiny trained CLIP model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.inference_helpers import coco_val_captions, mmtrain_in_process
from tests.test_predict import one_error_line


def embed(ckpt: Path, cwd: Path, *args: str) -> tuple[int, str, str]:
    return mmtrain_in_process(["embed", f"ckpt={ckpt}", "progress=false", "num_workers=0", *args], cwd)


def vectors(index: Path) -> dict[str, np.ndarray]:
    meta = json.loads((index / "index.json").read_text())
    out = {}
    for shard in meta["shards"]:
        names = json.loads((index / f"{shard}.json").read_text())
        out.update(zip(names, np.load(index / f"{shard}.npy")))
    return out


def test_search_finds_each_unseen_image_by_its_own_caption_more_often_than_chance(coco_clip, tmp_path):
    ckpt, root = coco_clip
    code, out, err = embed(ckpt, tmp_path, f"images={root / 'val2017'}", "out=index")
    assert code == 0, err
    assert out.strip() == "20 image embeddings in index"
    emb = vectors(tmp_path / "index")
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in emb.values())
    first = 0
    for path, caption in coco_val_captions(root).items():
        code, out, err = mmtrain_in_process(["search", f"index={tmp_path / 'index'}", f"text={caption}", "k=3"],
                                            tmp_path)
        assert code == 0, err
        ranked = [line.split()[-1] for line in out.splitlines()[1:]]
        assert len(ranked) == 3
        first += ranked[0] == path.name
    assert first >= 4, first                                           # chance: 1 of 20


def test_image_query_finds_itself_and_the_contact_sheet_shows_the_top_k(coco_clip, tmp_path):
    from PIL import Image

    ckpt, root = coco_clip
    assert embed(ckpt, tmp_path, f"images={root / 'val2017'}", "out=index")[0] == 0
    query = sorted((root / "val2017").glob("*.jpg"))[5]
    code, out, err = mmtrain_in_process(["search", "index=index", f"image={query}", "k=7", "sheet=top.png",
                                         "out=hits.json"], tmp_path)
    assert code == 0, err
    hits = json.loads((tmp_path / "hits.json").read_text())["rows"]
    assert hits[0]["entry"] == query.name and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert [h["rank"] for h in hits] == list(range(1, 8))
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    assert Image.open(tmp_path / "top.png").size == (5 * 160, 2 * 190)


def test_text_index_answers_text_queries(coco_clip, tmp_path):
    ckpt, root = coco_clip
    captions = list(dict.fromkeys(coco_val_captions(root).values()))
    (tmp_path / "captions.txt").write_text("\n".join(captions + captions[:3]) + "\n")
    code, out, err = embed(ckpt, tmp_path, "texts=captions.txt", "out=texts")
    assert code == 0, err
    assert out.startswith(f"{len(captions)} text embeddings")          # duplicates embedded once
    code, out, err = mmtrain_in_process(["search", "index=texts", f"text={captions[2]}", "k=1"], tmp_path)
    assert code == 0, err
    assert out.splitlines()[1].split(None, 2)[2] == captions[2]


def test_an_interrupted_embed_resumes_to_the_same_index_and_reads_any_pillow_format(coco_clip, tmp_path):
    from PIL import Image

    ckpt, root = coco_clip
    photos = tmp_path / "photos"
    shutil.copytree(root / "val2017", photos)
    jpegs = sorted(photos.glob("*.jpg"))
    for i, (ext, fmt) in enumerate([(".png", "PNG"), (".webp", "WEBP"), (".bmp", "BMP"), (".tif", "TIFF")]):
        Image.open(jpegs[i]).save(photos / f"x{i}{ext}", fmt)
    (photos / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    code, _, err = embed(ckpt, tmp_path, f"images={photos}", "out=index", "shard_size=4", "batch_size=4")
    line = one_error_line(code, err)
    assert "zz_broken.jpg" in line and "skip_unreadable=true" in line and "run again to resume" in line
    partial = json.loads((tmp_path / "index/index.json").read_text())["count"]
    assert 20 <= partial < 25                                          # whole shards kept
    (photos / "zz_broken.jpg").unlink()
    code, out, err = embed(ckpt, tmp_path, f"images={photos}", "out=index", "shard_size=4", "batch_size=4")
    assert code == 0 and f"{partial} of 24 images are already" in err, err
    code, _, err = embed(ckpt, tmp_path, f"images={photos}", "out=fresh")
    assert code == 0, err
    resumed, fresh = vectors(tmp_path / "index"), vectors(tmp_path / "fresh")
    assert sorted(resumed) == sorted(fresh) and len(fresh) == 24 and {"x1.webp", "x3.tif"} <= set(fresh)
    assert all(np.allclose(resumed[k], fresh[k], atol=1e-6) for k in fresh)
    (photos / "zz_broken.jpg").write_bytes(b"not an image")
    code, out, err = embed(ckpt, tmp_path, f"images={photos}", "out=index", "skip_unreadable=true")
    assert code == 0 and "1 unreadable files left out" in out, (out, err)


def test_bad_inputs_get_one_line_and_exit_2(coco_clip, synthetic_classifier, tmp_path):
    ckpt, root = coco_clip
    other = synthetic_classifier
    assert embed(ckpt, tmp_path, f"images={root / 'val2017'}", "out=index")[0] == 0
    changed = tmp_path / "changed.pt"
    payload = torch.load(ckpt, weights_only=True)
    payload["metrics"] = {"edited": 1.0}
    torch.save(payload, changed)
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full/notes.txt").write_text("mine")
    (tmp_path / "bad.json").mkdir()
    (tmp_path / "bad.json/index.json").write_text("{not json")
    embeds = {
        "needs a contrastive one": [f"ckpt={other}", f"images={root / 'val2017'}", "out=x"],
        "no such folder": [f"ckpt={ckpt}", "images=nowhere", "out=x"],
        "holds no image files": [f"ckpt={ckpt}", f"images={tmp_path / 'empty'}", "out=x"],
        "non-empty folder without an index.json": [f"ckpt={ckpt}", f"images={root / 'val2017'}", "out=full"],
        "holds an index of another checkpoint": [f"ckpt={changed}", f"images={root / 'val2017'}", "out=index"],
        "give images=DIR": [f"ckpt={ckpt}", "out=x"],
    }
    for message, args in embeds.items():
        code, _, err = mmtrain_in_process(["embed", "progress=false", *args], tmp_path)
        assert message in one_error_line(code, err), message
    searches = {
        "no index.json there": ["index=nowhere", "text=a"],
        "is not an mmtrain embedding index": ["index=bad.json", "text=a"],
        "is not the checkpoint that built": ["index=index", "text=a", f"ckpt={changed}"],
        "give one query": ["index=index"],
        "search takes one query image": ["index=index", f"image={root / 'val2017'}"],
        "cannot decode image": ["index=index", f"image={tmp_path / 'full/notes.txt'}"],
        "name a .png file": ["index=index", "text=a", "sheet=top.jpg"],
        "it was not cut": ["index=index", f"text={'red ' * 40}"],
    }
    for message, args in searches.items():
        code, _, err = mmtrain_in_process(["search", *args], tmp_path)
        assert message in one_error_line(code, err), message
