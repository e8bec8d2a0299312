"""The weights fingerprint of ``mlmon_model_info``: the sha256 of what a replica serves.

Two replicas that report the same version but load different bytes (a partial copy, bit
rot on one disk, a hand-patched file) differ here, and the ``ModelVersionSkew`` alert
compares ``version`` and ``fingerprint`` across replicas.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["weights_fingerprint", "weights_signature"]

_CHUNK = 1 << 20


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)  # hashlib drops the GIL on large updates: the loop keeps running
    return h.hexdigest()


def weights_fingerprint(path: Path) -> str:
    """Hex sha256 of a weights file (the same as ``sha256sum FILE``), or of a directory:
    the sha256 of the lines ``<sha256 of the file>  <relative path>\\n`` of every regular
    file under it, sorted by path (``sha256sum`` output of ``find . -type f | sort``).
    Symbolic links are followed. Reads the whole file: call it off the event loop.

    Raises:
        OSError: the path is missing or unreadable (the caller names the spec field).
    """
    p = Path(path)
    if not p.is_dir():
        return _file_digest(p)
    files = sorted(f for f in p.rglob("*") if f.is_file())
    if not files:
        raise OSError(f"{p}: the directory holds no file")
    listing = "".join(f"{_file_digest(f)}  {f.relative_to(p).as_posix()}\n" for f in files)
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
