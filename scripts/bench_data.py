"""Data pipeline throughput: samples/s of each loader alone and with the default model, and
the share of step time the training loop spends waiting for data.

    python scripts/bench_data.py                       # on generated fixtures (official layouts)
    python scripts/bench_data.py --root DIR            # on real data under DIR
    python scripts/bench_data.py --num-workers 2 --image-size 64
    python scripts/bench_data.py --photo-size 640x480   # fixture JPEGs at COCO's typical size

Each pipeline is the one `mmtrain train +experiment=...` builds: MNIST+IMDB pairs
(in memory), COCO with images decoded in the loader, and COCO from the pre-resized
uint8 cache (data.cache_images=true). First, the cost of decoding one COCO-sized JPEG
(`--photo-size`) to 64 and 224 px with `mmtrain.data.coco.load_image`, by CPU clock.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mmtrain import data as data_lib
from mmtrain.build import build_tasks
from mmtrain.config import compose_config
from mmtrain.data import fixtures
from mmtrain.data.loader import make_loader
from mmtrain.models.model import build_model


def write_photo(path: Path, width: int, height: int, seed: int) -> None:
    """A smooth photo-like JPEG (bicubic-upsampled noise) of COCO's typical size and quality."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noisy = np.asarray(base).astype(np.int16) + rng.integers(-4, 5, (height, width, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def decode_ms(paths: list[Path], size: int, rounds: int = 3) -> float:
    """CPU milliseconds per image of load_image (best of `rounds` passes, after a warm-up)."""
    from mmtrain.data.coco import load_image

    load_image(str(paths[0]), size)
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for p in paths:
            load_image(str(p), size)
        best = min(best, (time.process_time() - start) / len(paths))
    return 1000 * best


def loader_alone(loader, batches: int) -> float:
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    n, start = 0, time.perf_counter()
    for _ in range(batches):
        n += next(it)["text"].shape[0]
    return n / (time.perf_counter() - start)


def with_model(cfg, bundle, loader, batches: int) -> tuple[float, float]:
    model = build_model(cfg.model, bundle.info)
    stage = build_tasks(cfg, model, bundle.info)[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    it = iter(loader)
    next(it)
    waited, n, start = 0.0, 0, time.perf_counter()
    for _ in range(batches):
        t0 = time.perf_counter()
        batch = next(it)
        waited += time.perf_counter() - t0
        loss = stage.task.training_step(model, batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += batch["text"].shape[0]
    total = time.perf_counter() - start
    return n / total, waited / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=None, help="data root with real files (default: fixtures)")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64, help="COCO image side")
    p.add_argument("--photo-size", default="640x480", help="WxH of the fixture COCO JPEGs (fixtures only)")
    args = p.parse_args()
    width, height = (int(v) for v in args.photo_size.split("x"))
    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory()
        args.root = Path(tmp.name)
        need = args.batch_size * (args.batches + 2)
        fixtures.write_mnist(args.root, need + need // 9 + 10, 100)
        fixtures.write_imdb(args.root, 1000, 200)
        fixtures.write_coco(args.root, need + 10, 20, karpathy=False)
        for i, path in enumerate(sorted(args.root.glob("*2017/*.jpg"))):
            write_photo(path, width, height, i)
    photos = sorted(args.root.glob("train2017/*.jpg"))[:30]
    print(f"decoding one {photos[0].name} to 64 px / 224 px: "
          f"{decode_ms(photos, 64):.2f} / {decode_ms(photos, 224):.2f} ms (CPU clock)")
    common = [f"data.root={args.root}", f"trainer.batch_size={args.batch_size}",
              f"trainer.num_workers={args.num_workers}"]
    coco = ["+experiment=coco_clip", f"data.image_size={args.image_size}", "data.n_val=10"]
    pipelines = {
        "mnist_imdb (in memory)": ["+experiment=mnist_imdb"],
        "coco (decode in loader)": coco,
        "coco (uint8 image cache)": coco + ["data.cache_images=true"],
    }
    print(f"torch threads {torch.get_num_threads()}, workers {args.num_workers}, batch {args.batch_size}, "
          f"{args.batches} batches, COCO images {args.image_size}px")
    print(f"{'pipeline':<26} {'loader alone':>14} {'with model':>12} {'waiting on data':>16}")
    for name, overrides in pipelines.items():
        cfg = compose_config("train", overrides + common)
        bundle = data_lib.build(cfg.data)
        loader = make_loader(bundle.train, args.batch_size, train=True, num_workers=args.num_workers)
        alone = loader_alone(loader, args.batches)
        loader = make_loader(bundle.train, args.batch_size, train=True, num_workers=args.num_workers)
        rate, wait = with_model(cfg, bundle, loader, args.batches)
        print(f"{name:<26} {alone:>10.0f} /s {rate:>9.0f} /s {100 * wait:>15.1f}%")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
