"""`mmtrain data download|synth`: fetch the official archives, or write small fake ones.

    mmtrain data download mnist_imdb [--root DIR]
    mmtrain data download coco [--year 2017|2014] [--root DIR] [--mirror URL]
    mmtrain data synth mnist_imdb|coco --out DIR
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmtrain.errors import DataError

DATASETS = ("mnist_imdb", "coco")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmtrain data",
                                description="Download the real datasets or write small fake ones.")
    sub = p.add_subparsers(dest="action", required=True)
    dl = sub.add_parser("download", help="fetch, verify (MD5) and extract the official archives")
    dl.add_argument("dataset", choices=DATASETS)
    dl.add_argument("--root", default=os.environ.get("MMTRAIN_DATA", "data"),
                    help="data root (default: $MMTRAIN_DATA or ./data)")
    dl.add_argument("--year", type=int, default=2017, help="COCO release: 2017 or 2014")
    dl.add_argument("--mirror", default=None, help="fetch every file from MIRROR/<file name> "
                    "(default: $MMTRAIN_DATA_MIRROR, else the publishers' URLs)")
    dl.add_argument("--delete-archives", action="store_true", help="remove each archive once extracted")
    dl.add_argument("--no-progress", action="store_true")
    sy = sub.add_parser("synth", help="write a small fake dataset in the official layout (tests, demos)")
    sy.add_argument("dataset", choices=DATASETS)
    sy.add_argument("--out", required=True, help="folder to write; use it as data.root")
    sy.add_argument("--year", type=int, default=2017)
    sy.add_argument("--n-train", type=int, default=None, help="training images (and reviews)")
    sy.add_argument("--n-test", type=int, default=None, help="test (COCO: val) images (and reviews)")
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--force", action="store_true",
                    help="write into a folder that is not empty (fake files replace real ones)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.action == "download":
        from mmtrain.data.download import download

        archives = download(args.dataset, args.root, year=args.year, mirror=args.mirror,
                            progress=not args.no_progress, keep_archives=not args.delete_archives)
        print(f"{args.dataset}: {len(archives)} archives verified and extracted under {Path(args.root)}")
        return
    from mmtrain.data import fixtures

    for flag, value in (("--n-train", args.n_train), ("--n-test", args.n_test)):
        if value is not None and value < 1:
            raise DataError(f"{flag} {value}: give at least 1 (nothing was written)")
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        # A real data root would get fake files mixed in, and its own overwritten.
        raise DataError(f"{out} is not empty: write the fake {args.dataset} set to a new folder "
                        f"(or pass --force to write into this one)")
    if args.dataset == "mnist_imdb":
        fixtures.write_mnist(out, args.n_train or 2000, args.n_test or 500, seed=args.seed)
        fixtures.write_imdb(out, args.n_train or 400, args.n_test or 400, seed=args.seed)
    else:
        fixtures.write_coco(out, args.n_train or 200, args.n_test or 60, year=args.year, seed=args.seed)
    print(f"wrote a fake {args.dataset} dataset under {out}: train with data.root={out}")
