"""Atomic, durable file writes: a crash leaves the old file or the new one, never a torn one.

Imports no torch, so `mmtrain report` can use it and stay light.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from mmtrain.errors import StorageError


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temp file in the same folder, fsync it, then rename it over `path`.

    The temp name is unique, so parallel writers (sweep jobs refreshing one summary) never
    share a temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    recorder = None
    try:
        # mkstemp makes the file 0600; give it the mode open() would (0666 less the umask),
        # so teammates read checkpoints and metrics as they read the logs.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            recorder = _WriteErrors(f)
            write(recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        cause = e if isinstance(e, OSError) else getattr(recorder, "error", None)
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(f"no space left on device writing {path} (the previous file, if "
                               f"any, is intact): free some space and run again") from None
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _WriteErrors:
    """A file whose failed writes are remembered: torch.save turns the OSError of a full disk
    into a RuntimeError about stream positions, which would hide the cause."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")
