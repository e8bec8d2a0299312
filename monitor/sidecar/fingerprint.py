"""The weights fingerprint of ``mlmon_model_info``: the sha256 of what a replica serves.

Two replicas that report the same version but load different bytes (a partial copy, bit
rot on one disk, a hand-patched file) differ here, and the ``ModelVersionSkew`` alert
compares ``version`` and ``fingerprint`` across replicas.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from pathlib import Path

__all__ = ["weights_fingerprint", "weights_signature"]

_CHUNK = 1 << 20


def _file_digest(path: Path, stop: threading.Event | None) -> str:
    # Only a regular file has an end: /dev/zero would be read forever, and opening a FIFO
    # blocks until some writer comes; so look before opening, and again after.
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(f"{path}: not a regular file")
    h = hashlib.sha256()
    with path.open("rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError(f"{path}: not a regular file")
        while chunk := fh.read(_CHUNK):
            h.update(chunk)  # hashlib drops the GIL on large updates: the loop keeps running
            if stop is not None and stop.is_set():
                raise OSError(f"{path}: hashing stopped (the sidecar is shutting down)")
    return h.hexdigest()


def weights_fingerprint(path: Path, stop: threading.Event | None = None) -> str:
    """Hex sha256 of a weights file (the same as ``sha256sum FILE``), or of a directory:
    the sha256 of the lines ``<sha256 of the file>  <relative path>\\n`` of every regular
    file under it, sorted by path (``sha256sum`` output of ``find . -type f | sort``).
    Symbolic links are followed. Reads the whole file: call it off the event loop;
    setting ``stop`` ends it within one 1 MiB read.

    Raises:
        OSError: the path is missing, unreadable or not a regular file or directory, or
            ``stop`` was set (the caller names the spec field).
    """
    p = Path(path)
    if not p.is_dir():
        return _file_digest(p, stop)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    if not files:
        raise OSError(f"{p}: the directory holds no file")
    listing = "".join(f"{_file_digest(f, stop)}  {f.relative_to(p).as_posix()}\n" for f in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def weights_signature(path: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(relative path, size, mtime in ns, inode) of the file, or of every file under the
    directory: cheap to read, and different whenever a deployment replaces the weights, so
    an unchanged signature spares a re-hash.

    Raises:
        OSError: the path is missing or unreadable.
    """
    p = Path(path)
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    out = []
    for f in files:
        st = f.stat()
        rel = f.relative_to(p).as_posix() if f != p else ""
        out.append((rel, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)
