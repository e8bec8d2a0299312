"""Reference (baseline) statistics, computed once per baseline and cached on disk.

A :class:`ReferenceProfile` holds what the methods need from the reference side:
the sorted finite values of each numerical feature and the value counts of each
categorical one, with the row accounting. :func:`load_reference` reads a
baseline file (Parquet or CSV) and caches its profile under
``<cache_dir>/<sha256 of the file>-<sha256 of the feature types>/`` (``meta.json``
plus ``numeric.npz``, no pickle), so a scheduled job sorts the baseline once,
not on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitor.drift.core import (
    ColumnStats,
    FeatureDrift,
    prepare,
    resolve_columns,
)
from monitor.drift.methods import CategoricalSample, ColumnKind, NumericSample, Sample
from monitor.errors import DriftError

CACHE_VERSION = 1
"""Bumped when the cached layout or the cleaning rules change."""


@dataclass
class ReferenceProfile:
    """Per-feature reference samples (sorted values or counts) and row accounting.

    Attributes:
        rows: rows in the baseline.
        kinds: feature -> ``numerical`` | ``categorical`` for the scored features.
        decided: features skipped when the profile was built (datetime, text, ...).
        source: the baseline file, when loaded from one (engines that need the raw
            rows, evidently and spark, read it again).
        cache_hit: the profile came from the on-disk cache.
        sha256: hex sha256 of the baseline file ("" when built from a DataFrame).
    """

    rows: int
    kinds: dict[str, ColumnKind]
    samples: dict[str, tuple[Sample, ColumnStats]]
    decided: dict[str, FeatureDrift] = field(default_factory=dict)
    source: Path | None = None
    cache_hit: bool = False
    sha256: str = ""
    _frame: pd.DataFrame | None = field(default=None, repr=False)

    def sample(self, name: str) -> tuple[Sample, ColumnStats]:
        """The cleaned reference sample of ``name`` and its row accounting."""
        return self.samples[name]

    def frame(self) -> pd.DataFrame:
        """The raw reference rows (re-read from ``source`` if needed).

        Raises:
            DriftError: the profile was built without keeping rows or a source.
        """
        if self._frame is None:
            if self.source is None:
                raise DriftError("this reference profile has no rows; pass the baseline DataFrame")
            self._frame = read_table(self.source)
        return self._frame

    def resolve(
        self, current: pd.DataFrame, features: Mapping[str, str] | list[str] | None
    ) -> tuple[dict[str, ColumnKind], dict[str, FeatureDrift]]:
        """Kinds to score against ``current`` and the features decided without scoring."""
        names = list(self.kinds) if features is None else list(features)
        kinds: dict[str, ColumnKind] = {}
        decided: dict[str, FeatureDrift] = {}
        for name in names:
            if name in self.decided:
                f = self.decided[name]
                if f.reason.startswith("missing_in_"):  # absent from the baseline; and now?
                    in_cur = name in current.columns
                    reason = "missing_in_reference" if in_cur else "missing_in_both"
                    f = FeatureDrift(name, f.type, "skipped", reason)
                decided[name] = f
            elif name not in self.kinds:
                in_cur = name in current.columns
                reason = "missing_in_reference" if in_cur else "missing_in_both"
                decided[name] = FeatureDrift(name, "unknown", "skipped", reason)
            elif name not in current.columns:
                decided[name] = FeatureDrift(
                    name, self.kinds[name], "skipped", "missing_in_current"
                )
            else:
                kinds[name] = self.kinds[name]
        if features is None:
            for name, f in self.decided.items():
                decided.setdefault(name, f)
        return kinds, decided


def build_profile(
    frame: pd.DataFrame,
    kinds: Mapping[str, ColumnKind],
    *,
    decided: Mapping[str, FeatureDrift] | None = None,
    source: Path | None = None,
) -> ReferenceProfile:
    """Clean and sort every ``kinds`` column of ``frame`` once."""
    samples = {name: prepare(frame[name], kind) for name, kind in kinds.items()}
    return ReferenceProfile(
        rows=len(frame),
        kinds=dict(kinds),
        samples=samples,
        decided=dict(decided or {}),
        source=source,
        _frame=frame,
    )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a Parquet or CSV file into a DataFrame.

    Raises:
        DriftError: the file is missing, unreadable or neither Parquet nor CSV.
    """
    p = Path(path)
    if p.is_dir():
        if not any(p.glob("*.parquet")):
            raise DriftError(
                f"{p} is a directory without *.parquet files; pass a Parquet or CSV file"
            )
        try:
            return pd.read_parquet(p)
        except Exception as e:
            raise DriftError(f"{p}: cannot read the directory as one Parquet dataset: {e}") from e
    if not p.is_file():
        raise DriftError(f"{p}: no such file")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if p.suffix.lower() in (".csv", ".txt") or p.name.lower().endswith(".csv.gz"):
            return _read_csv(p)
        with p.open("rb") as fh:
            magic = fh.read(4)
        return pd.read_parquet(p) if magic == b"PAR1" else _read_csv(p)
    except DriftError:
        raise
    except Exception as e:
        raise DriftError(f"{p}: cannot read as Parquet or CSV: {e}") from e


def _read_csv(p: Path) -> pd.DataFrame:
    """``pd.read_csv``, refusing repeated header names, which pandas renames (``x``,
    ``x.1``) so that the second column would be silently left out."""
    head = pd.read_csv(p, header=None, nrows=1, dtype=str, keep_default_na=False)
    names = [str(v) for v in head.iloc[0].tolist()] if len(head) else []
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DriftError(f"{p}: duplicate column names: {', '.join(dup)}")
    return pd.read_csv(p)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/monitor/drift`` (``~/.cache/monitor/drift``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "monitor" / "drift"


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_reference(
    path: str | Path,
    features: Mapping[str, str] | list[str] | None = None,
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> ReferenceProfile:
    """Load a baseline file's profile, from the cache when its content was seen before.

    Args:
        path: Parquet or CSV baseline.
        features: as :func:`monitor.drift.compute`'s ``features``.
        cache_dir: cache root (default :func:`default_cache_dir`).
        use_cache: False to neither read nor write the cache.

    Raises:
        DriftError: the baseline cannot be read. A corrupt or unwritable cache is
            ignored (the profile is rebuilt), never fatal.
    """
    p = Path(path)
    if p.is_dir():
        raise DriftError(f"baseline {p} is a directory; pass one Parquet or CSV file")
    if not p.is_file():
        raise DriftError(f"baseline {p}: no such file")
    key_features = json.dumps(
        features if not isinstance(features, Mapping) else dict(features), sort_keys=True
    )
    kinds_hash = hashlib.sha256(f"{CACHE_VERSION}:{key_features}".encode()).hexdigest()[:16]
    sha = file_sha256(p)
    key = f"{sha}-{kinds_hash}"
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = root / key
    if use_cache:
        cached = _read_cache(entry, p)
        if cached is not None:
            cached.sha256 = sha
            return cached
    frame = read_table(p)
    kinds, decided = resolve_columns(frame, frame, features)
    profile = build_profile(frame, kinds, decided=decided, source=p)
    profile.sha256 = sha
    if use_cache:
        _write_cache(entry, profile)
    return profile


def _stats_dict(s: ColumnStats) -> dict[str, int]:
    return {
        "rows": s.rows,
        "used": s.used,
        "null": s.null,
        "nonfinite": s.nonfinite,
        "invalid": s.invalid,
    }


def _encode_key(k: Hashable) -> list[Any]:
    if isinstance(k, bool | np.bool_):
        return ["b", bool(k)]
    if isinstance(k, int | np.integer):
        return ["i", int(k)]
    if isinstance(k, float | np.floating):
        return ["f", float(k)]
    return ["s", str(k)]


def _decode_key(tag: str, v: Any) -> Hashable:
    return {"b": bool, "i": int, "f": float, "s": str}[tag](v)


def _write_cache(entry: Path, profile: ReferenceProfile) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        arrays: dict[str, np.ndarray] = {}
        columns: dict[str, Any] = {}
        for i, (name, (sample, stats)) in enumerate(profile.samples.items()):
            col: dict[str, Any] = {"kind": profile.kinds[name], "stats": _stats_dict(stats)}
            if isinstance(sample, NumericSample):
                col["array"] = f"a{i}"
                arrays[f"a{i}"] = sample.values
            else:
                col["counts"] = [[*_encode_key(k), int(n)] for k, n in sample.counts.items()]
            columns[name] = col
        meta = {
            "version": CACHE_VERSION,
            "rows": profile.rows,
            "columns": columns,
            "decided": {
                n: {"type": f.type, "reason": f.reason} for n, f in profile.decided.items()
            },
        }
        np.savez(tmp / "numeric.npz", **arrays)  # type: ignore[arg-type]
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        try:
            os.replace(tmp, entry)
        except OSError:  # another run cached it first
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
    except OSError:
        return


def _read_cache(entry: Path, source: Path) -> ReferenceProfile | None:
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION:
            return None
        with np.load(entry / "numeric.npz", allow_pickle=False) as npz:
            samples: dict[str, tuple[Sample, ColumnStats]] = {}
            kinds: dict[str, ColumnKind] = {}
            for name, col in meta["columns"].items():
                stats = ColumnStats(**col["stats"])
                sample: Sample
                if "array" in col:
                    sample = NumericSample(np.asarray(npz[col["array"]], dtype=np.float64))
                else:
                    sample = CategoricalSample(
                        {_decode_key(t, v): int(n) for t, v, n in col["counts"]}
                    )
                samples[name] = (sample, stats)
                kinds[name] = col["kind"]
        decided = {
            n: FeatureDrift(n, d["type"], "skipped", d["reason"])
            for n, d in meta.get("decided", {}).items()
        }
        return ReferenceProfile(
            rows=int(meta["rows"]),
            kinds=kinds,
            samples=samples,
            decided=decided,
            source=source,
            cache_hit=True,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
