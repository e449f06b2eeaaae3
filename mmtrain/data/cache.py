"""An on-disk cache for work done once per dataset: fitted tokenizers and tokenized text.

Entries live in `<cache dir>/<kind>-<key>.pt`, where the key hashes the identity of the
source files (path, size, modification time) and whatever else the result depends on (the
tokenizer's JSON, options): editing a file or changing the tokenizer gives a new key, so a
stale entry is never read, and datasets under different roots never share one. Writes are
atomic. The cache dir is `data.cache_dir`, else `$MMTRAIN_CACHE`, else the user's cache
folder: never the dataset root, which is only read (shared, often read-only, on clusters).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from mmtrain.atomic import write_atomically
from mmtrain.data.tokenizer import TextTokenizer, fit_tokenizer

log = logging.getLogger("mmtrain")

CACHE_ENV = "MMTRAIN_CACHE"


def cache_dir(configured: str | os.PathLike | None = None) -> Path:
    """`configured` (data.cache_dir), else $MMTRAIN_CACHE, else $XDG_CACHE_HOME/mmtrain or
    ~/.cache/mmtrain (where pip, torch and Hugging Face keep theirs)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mmtrain"


def file_identity(paths: Iterable[Path]) -> str:
    """A hash of each file's path, size and mtime: cheap even for 50 000 review files."""
    digest = hashlib.sha256()
    for path in paths:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached(folder: Path, kind: str, key: str, compute: Callable[[], dict[str, Any]],
           enabled: bool = True) -> dict[str, Any]:
    """Load `<folder>/<kind>-<key>.pt`, or compute it and store it there."""
    if not enabled:
        return compute()
    path = folder / f"{kind}-{key}.pt"
    if path.is_file():
        try:
            return torch.load(path, weights_only=True)
        except Exception as e:  # a cache is disposable: rebuild a damaged entry
            log.warning("ignoring unreadable cache entry %s (%s)", path, e)
    value = compute()
    try:
        write_atomically(path, lambda f: torch.save(value, f))
    except OSError as e:  # an unwritable cache dir still trains, just without the cache
        log.warning("could not write cache entry %s (%s)", path, e)
    return value


def tokenized_corpus(folder: Path, corpus: str, identity: str,
                     load: Callable[[], dict[str, Any]], tokenizer: TextTokenizer | None,
                     tokenizer_options: dict[str, Any], enabled: bool = True
                     ) -> tuple[TextTokenizer, dict[str, torch.Tensor]]:
    """Fit (or reuse) a tokenizer and tokenize a corpus, each at most once per corpus version.

    `load()` reads the corpus: {"texts": [...], "n_fit": k (fit on texts[:k], the training
    part), plus any tensors to keep with the tokens (labels)}. It is called only on a miss.
    Returns the tokenizer and {"ids": N x L long, "lengths": N long, <the load()'s tensors>}.
    """
    loaded: dict[str, Any] = {}

    def corpus_data() -> dict[str, Any]:
        if not loaded:
            loaded.update(load())
        return loaded

    if tokenizer is None:
        entry = cached(folder, f"{corpus}-tokenizer", cache_key(identity, tokenizer_options), lambda: {
            "json": fit_tokenizer(corpus_data()["texts"][: corpus_data()["n_fit"]],
                                  **tokenizer_options).to_json()}, enabled)
        tokenizer = TextTokenizer.from_json(entry["json"])

    def encode() -> dict[str, Any]:
        data = corpus_data()
        ids, lengths = tokenizer.encode(data["texts"])
        # int32 halves the file; ids are cast back to long on load.
        extra = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        return {"ids": ids.to(torch.int32), "lengths": lengths, **extra}

    tokens = cached(folder, f"{corpus}-tokens", cache_key(identity, tokenizer.to_json()), encode, enabled)
    tokens["ids"] = tokens["ids"].long()
    return tokenizer, tokens
