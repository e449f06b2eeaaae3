"""Fetch the publishers' archives: resumable, verified against recorded checksums, extracted safely.

Every file is checked against the MD5 its publisher (or torchvision) records; a mismatch
removes the file and stops. Set MMTRAIN_DATA_MIRROR (or pass `mirror=`) to fetch every
file from `<mirror>/<file name>` instead of the publisher: a local mirror, or the tests'
server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mmtrain.errors import DataError

MIRROR_ENV = "MMTRAIN_DATA_MIRROR"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Resource:
    url: str
    md5: str
    extract_to: str
    """Folder under the data root the archive is extracted into ('' = the root itself)."""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _mnist() -> list[Resource]:
    # The URLs and MD5s torchvision's MNIST class records (its first mirror).
    from torchvision.datasets import MNIST

    return [Resource(MNIST.mirrors[0] + name, md5, "MNIST/raw") for name, md5 in MNIST.resources]


IMDB = Resource("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                "7c2ac02c03563afcf9b574c7e56c153a", "")

# MD5s of the archives at images.cocodataset.org, as published with the COCO download
# scripts. train2014.zip's value is the one LAVIS and gluon-cv check against; one other
# package records a different value, so a mismatch on that file alone is worth a report.
COCO = {
    2017: [
        Resource("http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                 "f4bbac642086de4f52a3fdda2de5fa2c", ""),
        Resource("http://images.cocodataset.org/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", ""),
        Resource("http://images.cocodataset.org/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", ""),
    ],
    2014: [
        Resource("http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
                 "0a379cfc70b0e71301e0f377548639bd", ""),
        Resource("http://images.cocodataset.org/zips/val2014.zip", "a3d79f5ed8d289b7a7554ce06a5782b3", ""),
        Resource("http://images.cocodataset.org/zips/train2014.zip", "0da8c0bd3d6becc4dcb32757491aca88", ""),
    ],
}


def resources(dataset: str, year: int = 2017) -> list[Resource]:
    if dataset == "mnist_imdb":
        return [*_mnist(), IMDB]
    if dataset == "coco":
        if year not in COCO:
            raise DataError(f"COCO year {year} is not available: choose {' or '.join(map(str, COCO))}")
        return COCO[year]
    raise DataError(f"unknown dataset {dataset!r}: choose mnist_imdb or coco")


def download_command(dataset: str, root: str | os.PathLike, year: int | None = None) -> str:
    """The exact command a user runs to fetch `dataset` into `root`."""
    extra = f" --year {year}" if year is not None and year != 2017 else ""
    return f"mmtrain data download {dataset}{extra} --root {root}"


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, md5: str, progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming `dest.part` with an HTTP Range request; verify the MD5."""
    if dest.is_file() and md5_of(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    failure = None
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status != 206:  # the server ignored Range: start over
                have = 0
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            with open(part, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False,
            ) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        if not (e.code == 416 and have):  # 416 on a resume: the partial file is already complete
            failure = f"HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError) as e:
        failure = str(getattr(e, "reason", e))
    if failure is not None:
        # Raised outside the except block so the CLI's one-line message carries no chained cause.
        kept = f"; {part} is kept and the download resumes from it" if part.is_file() else ""
        raise DataError(f"downloading {url} failed: {failure} (rerun the command{kept})")
    actual = md5_of(part)
    if actual != md5:
        part.unlink()
        raise DataError(f"{dest.name} from {url} has MD5 {actual}, expected {md5}: the file was removed; "
                        f"rerun the command to download it again (or check the mirror)")
    os.replace(part, dest)
    return dest


def _inside(root: Path, name: str) -> bool:
    target = (root / name).resolve()
    return target == root or root in target.parents


def extract(archive: Path, dest: Path) -> None:
    """Unpack a .tar.gz / .zip / .gz into `dest`; refuse any member that would land outside it."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    name = archive.name
    try:
        if name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tar:
                # The "data" filter refuses absolute paths, '..', links out of dest and devices.
                tar.extractall(dest, filter="data")
        elif name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    unsafe = os.path.isabs(member) or member.startswith(("/", "\\"))
                    if unsafe or not _inside(root, member):
                        raise DataError(f"{archive} holds '{member}', a path outside {dest}: "
                                        f"refusing to extract it (the archive is unsafe or corrupt)")
                for info in zf.infolist():
                    try:
                        zf.extract(info, dest)
                    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
                        # NotImplementedError: a compression method zipfile cannot read.
                        raise DataError(f"{archive}: member {info.filename} is malformed ({e}): "
                                        f"delete the archive and download it again") from None
        elif name.endswith(".gz"):
            out = dest / name[: -len(".gz")]
            tmp = out.with_name(out.name + ".tmp")
            try:
                with gzip.open(archive, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise DataError(f"do not know how to extract {archive}")
    except tarfile.FilterError as e:
        raise DataError(f"{archive}: {e}: refusing to extract it (the archive is unsafe or corrupt)") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{archive} is not a readable archive ({e}): delete it and download again") from None


def download(dataset: str, root: str | os.PathLike, year: int = 2017, mirror: str | None = None,
             progress: bool = True, keep_archives: bool = True) -> list[Path]:
    """Fetch, verify and extract every file of `dataset` under `root`; returns the archives."""
    root = Path(root)
    mirror = mirror or os.environ.get(MIRROR_ENV)
    archives = []
    for res in resources(dataset, year):
        url = f"{mirror.rstrip('/')}/{res.filename}" if mirror else res.url
        archive = fetch(url, root / "downloads" / res.filename, res.md5, progress=progress)
        extract(archive, root / res.extract_to)
        archives.append(archive)
        if not keep_archives:
            archive.unlink()
    return archives
