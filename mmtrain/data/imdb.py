"""IMDB reviews (Maas et al. 2011) from the official aclImdb tree or the two-column CSV.

- `aclimdb`: `aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`, as aclImdb_v1.tar.gz unpacks.
- `csv`: one file with a `review,sentiment` header and `positive`/`negative` labels (the
  widely shared 50k-row form). It has no official split: even rows are train, odd rows
  test, which keeps both halves balanced whatever the row order.

Reviews carry `<br />` line breaks, which become spaces; text must be UTF-8 (non-ASCII
characters are kept, and the tokenizer's NFKC normalization folds their variants).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Callable

import torch

from mmtrain.data.cache import file_identity
from mmtrain.errors import DataError

SENTIMENTS = ("negative", "positive")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean(text: str) -> str:
    return " ".join(_BREAK.sub(" ", text).split())


def read_review(path: Path) -> str:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"review {path} is not UTF-8 text ({e.reason} at byte {e.start}): "
                        f"re-extract aclImdb_v1.tar.gz or convert the file to UTF-8") from None
    text = clean(text)
    if not text:
        raise DataError(f"review {path} is empty: re-extract aclImdb_v1.tar.gz or remove the file")
    return text


def _review_id(path: Path) -> tuple[int, str]:
    head = path.stem.split("_")[0]
    return (int(head) if head.isdigit() else -1, path.name)


def _acl_files(root: Path, split: str) -> list[tuple[Path, int]]:
    files = []
    for label, folder in enumerate(("neg", "pos")):
        d = root / "aclImdb" / split / folder
        if not d.is_dir():
            raise DataError(f"IMDB folder {d} is missing")
        # Sorted by review id so the order (and so the pairing) never depends on the filesystem.
        names = sorted((p for p in d.iterdir() if p.suffix == ".txt"), key=_review_id)
        files += [(p, label) for p in names]
    if not files:
        raise DataError(f"IMDB folder {root / 'aclImdb' / split} holds no reviews")
    return files


def _read_csv(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"review", "sentiment"} <= set(reader.fieldnames):
                raise DataError(f"IMDB CSV {path} must have a 'review,sentiment' header "
                                f"(found: {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                sentiment = (row["sentiment"] or "").strip().lower()
                if sentiment not in SENTIMENTS:
                    raise DataError(f"IMDB CSV {path} line {line}: sentiment {row['sentiment']!r} "
                                    f"is not positive or negative")
                text = clean(row["review"] or "")
                if not text:
                    raise DataError(f"IMDB CSV {path} line {line}: the review is empty")
                texts.append(text)
                labels.append(SENTIMENTS.index(sentiment))
    except UnicodeDecodeError as e:
        raise DataError(f"IMDB CSV {path} is not UTF-8 text ({e.reason} at byte {e.start}): "
                        f"convert it to UTF-8") from None
    return texts, labels


def imdb_source(root: str | Path, fmt: str = "aclimdb", csv_file: str = "IMDB Dataset.csv"
                ) -> tuple[str, Callable[[], dict[str, Any]]]:
    """-> (identity of the files, a loader returning {"texts", "n_fit", "sentiment", "n_train"}).

    Texts are train reviews then test reviews; the loader runs only when the token cache misses.
    """
    root = Path(root)
    if fmt == "aclimdb":
        train, test = _acl_files(root, "train"), _acl_files(root, "test")
        identity = file_identity(p for p, _ in train + test)

        def load() -> dict[str, Any]:
            files = train + test
            return {"texts": [read_review(p) for p, _ in files], "n_fit": len(train),
                    "sentiment": torch.tensor([y for _, y in files]), "n_train": torch.tensor(len(train))}

        return identity, load
    if fmt == "csv":
        path = root / csv_file
        if not path.is_file():
            raise DataError(f"IMDB CSV {path} is missing: place the 'review,sentiment' CSV there "
                            f"or set data.text.csv_file")
        identity = file_identity([path])

        def load_csv() -> dict[str, Any]:
            texts, labels = _read_csv(path)
            order = list(range(0, len(texts), 2)) + list(range(1, len(texts), 2))
            return {"texts": [texts[i] for i in order], "n_fit": len(range(0, len(texts), 2)),
                    "sentiment": torch.tensor([labels[i] for i in order]),
                    "n_train": torch.tensor(len(range(0, len(texts), 2)))}

        return identity, load_csv
    raise DataError(f"data.text.format={fmt!r}: choose aclimdb or csv")
