#!/usr/bin/env python3
"""Drift benchmark: ``fast`` engine vs evidently's ``Report([DataDriftPreset()])``, side by side.

Data: ``--rows`` reference rows and as many current rows (default 100,000 and then
1,000,000) of 20 numerical features (normal, 10 of them shifted by 0.2 std in the
current window) and 5 categorical ones (6 string values, 2 of them re-weighted).
Both engines get the same pandas DataFrames in one process, in alternation,
``--repeat`` times (best run counts):

* ``evidently``: ``Report([DataDriftPreset()]).run(...)`` with evidently's defaults
  (no HTML rendering);
* ``fast cold``: ``monitor.drift.compute(reference_df, current_df)``: the reference is
  cleaned and sorted in the run;
* ``fast warm``: ``compute(profile, current_df)`` with the reference statistics
  already built (what ``monitor drift serve`` does after the first run: the
  profile comes from the on-disk cache).

It also checks that both engines chose the same method and verdict for every
feature and prints the largest score difference, and measures the fast engine's
peak memory next to the in-memory size of the two DataFrames
(``memory_usage(deep=True)``): the larger of the ``tracemalloc`` peak (numpy
buffers and Python objects) and the peak-RSS growth of the same run in a fresh
process (which also sees native allocations such as pandas' hash tables).

Usage: ``.venv/bin/python benchmarks/drift.py [--rows 100000 1000000] [--repeat 3]
[--no-evidently-at 1000000]``. Ratios, not absolute times, are the result: the
machine may be noisy.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np
import pandas as pd

from monitor.drift import DriftResult, compute
from monitor.drift import evidently_engine as ev
from monitor.drift.reference import build_profile

NUMERICAL = [f"num{i:02d}" for i in range(20)]
CATEGORICAL = [f"cat{i}" for i in range(5)]
KINDS = {**dict.fromkeys(NUMERICAL, "numerical"), **dict.fromkeys(CATEGORICAL, "categorical")}


def make(rows: int, seed: int, drifted: bool) -> pd.DataFrame:
    """One window; ``drifted`` shifts num00..num09 and re-weights cat0, cat1."""
    rng = np.random.default_rng(seed)
    data: dict[str, object] = {}
    for i, name in enumerate(NUMERICAL):
        data[name] = rng.normal(0.2 if drifted and i < 10 else 0.0, 1.0, rows)
    values = np.array(list("abcdef"), dtype=object)
    even = np.full(6, 1 / 6)
    skew = np.array([0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
    for i, name in enumerate(CATEGORICAL):
        data[name] = rng.choice(values, rows, p=skew if drifted and i < 2 else even)
    return pd.DataFrame(data)


def best(fn, repeat: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def peak_bytes(fn) -> int:  # type: ignore[no-untyped-def]
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn()
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return peak


def _rss_child(rows: int, warm: bool) -> tuple[int, int]:
    """In a fresh process: build the data (and profile), then run the fast engine once.

    Returns (peak RSS before the run, peak RSS after it), bytes. The difference is
    everything the run allocated at its peak, native buffers (pandas hash tables)
    included, which tracemalloc does not see.
    """
    import resource

    ref, cur = make(rows, 1, False), make(rows, 2, True)
    profile = build_profile(ref, KINDS) if warm else None
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    compute(profile if profile is not None else ref, cur, features=KINDS)
    return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_growth(rows: int, warm: bool) -> int:
    """Peak RSS growth of one fast run, measured in a spawned process (bytes)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(1) as pool:
        before, after = pool.apply(_rss_child, (rows, warm))
    return after - before


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--no-evidently-at", type=int, nargs="*", default=[], help="row counts to skip evidently at"
    )
    args = ap.parse_args()

    head = ("rows", "engine", "seconds", "vs evidently", "peak MiB", "peak/data")
    print(f"{head[0]:>9} {head[1]:<11} {head[2]:>8} {head[3]:>13} {head[4]:>9} {head[5]:>9}")
    notes = []
    for rows in args.rows:
        notes += run_size(rows, args.repeat, rows not in args.no_evidently_at)
    print()
    for n in notes:
        print(n)


def run_size(rows: int, repeat: int, with_evidently: bool) -> list[str]:
    """Time and measure both engines on ``rows`` rows per window; print the table rows."""
    notes = []
    ref, cur = make(rows, 1, False), make(rows, 2, True)
    data_bytes = int(ref.memory_usage(deep=True).sum() + cur.memory_usage(deep=True).sum())
    profile = build_profile(ref, KINDS)

    def cold() -> DriftResult:
        return compute(ref, cur, features=KINDS)

    def warm() -> DriftResult:
        return compute(profile, cur, features=KINDS)

    t_cold, fast = best(cold, repeat)
    t_warm, _ = best(warm, repeat)
    peak_cold = max(peak_bytes(cold), rss_growth(rows, False))
    peak_warm = max(peak_bytes(warm), rss_growth(rows, True))
    t_ev = None
    if with_evidently:
        t_ev, snap = best(
            lambda: ev.run_preset(ref, cur, NUMERICAL, CATEGORICAL),
            1 if rows >= 1_000_000 else repeat,
        )
        table = next(
            v[0].drift_by_columns
            for v in snap.context._legacy_metrics.values()  # type: ignore[attr-defined]
            if hasattr(v[0], "drift_by_columns")
        )
        diff = max(abs(fast.features[n].score - table[n].drift_score) for n in KINDS)  # type: ignore[attr-defined,operator]
        same = all(fast.features[n].drifted == table[n].drift_detected for n in KINDS)  # type: ignore[attr-defined]
        notes.append(
            f"{rows} rows: verdicts identical: {same}; largest |score difference| {diff:.2e}; "
            f"drifted {len(fast.drifted_features)}/25"  # type: ignore[attr-defined]
        )
    mib = data_bytes / 2**20
    timings = (
        ("evidently", t_ev, None),
        ("fast cold", t_cold, peak_cold),
        ("fast warm", t_warm, peak_warm),
    )
    for name, t, peak in timings:
        if t is None:
            continue
        ratio = f"{t_ev / t:.1f}x" if t_ev else "-"
        pk = f"{peak / 2**20:.0f}" if peak is not None else "-"
        rel = f"{peak / data_bytes:.2f}" if peak is not None else "-"
        print(f"{rows:>9} {name:<11} {t:>8.3f} {ratio:>13} {pk:>9} {rel:>9}", flush=True)
    notes.append(f"{rows} rows: data in memory {mib:.0f} MiB (both windows)")
    return notes


if __name__ == "__main__":
    main()
