"""`mmtrain embed` throughput on the CPU: images/s from JPEG files to a finished index.

    python scripts/bench_embed.py                         # 512 photos of 640 x 480, workers 0 and 2
    python scripts/bench_embed.py --images 2000 --workers 0,1,2,4 --threads 2

The model is the default one (`mmtrain train` with no overrides: cnn + gru at 32 px) with a
contrastive head, trained for one short epoch only to get a real checkpoint file (its
weights do not change the speed). The photos are JPEGs of the given size, so the figure
includes decoding (Pillow's draft mode) and resizing, as for a folder of camera images.
Each setting runs the whole command (checkpoint load, decode, model, shard writes) into a
fresh index; the best of `--repeats` runs is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmtrain import cli  # noqa: E402


def default_checkpoint(tmp: Path) -> Path:
    from mmtrain.config import compose_config
    from mmtrain.train import train

    cfg = compose_config("train", [
        "stages=contrastive", "stages.pretrain.epochs=1", "data.n_train=256", "data.n_val=64",
        "data.n_test=64", "test=false", "trainer.progress=false", "logger.tensorboard=false"])
    with contextlib.redirect_stdout(io.StringIO()):
        train(cfg, tmp / "run")
    return tmp / "run/checkpoints/pretrain/best.pt"


def write_photos(folder: Path, n: int, width: int, height: int) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        picture = Image.fromarray(pixels)
        draw = ImageDraw.Draw(picture)
        for _ in range(3):
            x, y = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
            colour = tuple(int(c) for c in rng.integers(80, 256, size=3))
            draw.ellipse([x, y, x + int(rng.integers(30, 100)), y + int(rng.integers(30, 100))], fill=colour)
        picture.save(folder / f"{i:05d}.jpg", quality=90)


def embed_seconds(ckpt: Path, photos: Path, out: Path, workers: int, batch_size: int) -> float:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(["embed", f"ckpt={ckpt}", f"images={photos}", f"out={out}", f"num_workers={workers}",
                  f"batch_size={batch_size}", "progress=false", "device=cpu"])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--workers", default="0,2", help="comma-separated loader worker counts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ckpt = default_checkpoint(tmp)
        write_photos(tmp / "photos", args.images, width, height)
        print(f"{args.images} JPEGs of {width} x {height}, default model (cnn + gru, 32 px), batch "
              f"{args.batch_size}, {args.threads} torch thread(s)")
        for workers in (int(w) for w in args.workers.split(",")):
            best = min(embed_seconds(ckpt, tmp / "photos", tmp / f"index-{workers}-{r}", workers, args.batch_size)
                       for r in range(args.repeats))
            print(f"num_workers={workers}: {args.images / best:8.1f} images/s ({best:.2f} s)")


if __name__ == "__main__":
    main()
