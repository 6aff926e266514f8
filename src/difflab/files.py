"""Atomic files: a temporary file beside the target, fsync'ed, then renamed over it.

Readers (and a resumed run after a crash) see the old file or the new one, never a part.
Every writer in difflab that must not leave a half-written file goes through here; and the
SHA-256 that checksums and model cards record of a file (:func:`sha256_file`).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "fsync_path", "sha256_file"]


def fsync_path(path: Union[str, Path]) -> None:
    """Flush a file's or a folder's entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Union[str, Path], write: Callable[[Path], None]) -> Path:
    """Make ``path`` with ``write(tmp)`` on a temporary file beside it, then rename: readers see
    the old or the new file, never a part (the temporary file is removed if ``write`` fails)."""
    path = Path(path)
    # the suffix kept last: writers that pick a format by it (Pillow, matplotlib, imageio) see it
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        failed = _os_error_of(err, path)
        if failed is not None:
            raise failed from err
        raise
    fsync_path(path.parent)
    return path


def _os_error_of(err: BaseException, path: Path):
    """An OS error of writing ``path`` that names ``path`` (the file the caller asked for, not the
    temporary one; a failed write() names no file at all), or None to re-raise ``err`` as it is.
    Writers in other languages report errno in their text ("... (os error 28)": safetensors)."""
    if isinstance(err, OSError):
        if err.errno is None or str(err.filename) == str(path):
            return None
        return OSError(err.errno, err.strerror, str(path))  # the subclass by errno (PermissionError, ...)
    found = re.search(r"os error (\d+)", str(err))
    if found is None:
        return None
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(path))


def atomic_write_text(path: Union[str, Path], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def sha256_file(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes, in hex (what ``sha256sum`` prints), read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
