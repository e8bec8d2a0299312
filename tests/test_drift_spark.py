"""The ``spark`` engine (evidently's Spark stattests) against the ``fast`` engine.

One SparkSession (``local[2]``) serves the module. On a 2000 + 2000 row dataset
with 3 numerical and 2 categorical features (NaN, +/-inf and None among them;
3 features drifted) the spark engine must give the fast engine's method and
verdict for every feature, and its score within these tolerances, measured on
this data and explained by evidently's Spark code
(``evidently/legacy/spark/calculations/stattests/``):

- counts (categorical features, and a numerical one with 4 values, whose Doane
  bins hold one value each): same score, |diff| <= 1e-12 (measured: 0.0).
- ``wasserstein``: Spark bins each window into 1000 bins over its own range and
  measures between bin centres, so |diff| <= (range_ref + range_cur) / 2000 /
  std_ref, the most moving each value to its bin centre can change the distance
  (measured: 2.8e-6 and 3.2e-5 against bounds of 7.5e-3 and 9.3e-3).
- numerical ``psi`` / ``jensenshannon``: Spark uses Doane bins where the fast
  engine (= pandas evidently) uses Sturges bins: a different number, not an
  approximation (measured here: psi 0.2452 vs 0.2308, jensenshannon 0.1368 vs
  0.1363). Those are checked against a numpy reimplementation of Spark's
  binning instead (|diff| <= 1e-9 relative; measured: 0.0).

Skips cleanly without pyspark, evidently or ``java``. Runtime about 45 s on 2 cores
(JVM start about 7 s, the first scoring about 15 s of JIT warm-up).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyspark")
pytest.importorskip("evidently")
if shutil.which("java") is None:
    pytest.skip("the spark engine needs java", allow_module_level=True)

from monitor.drift import compute, evidently_engine, spark_engine
from monitor.drift.core import FeatureDrift, numeric_sample
from monitor.drift.methods import PSI_EPSILON
from monitor.errors import DriftError

KINDS = {
    "x": "numerical",  # normal, shifted; NaN
    "y": "numerical",  # exponential, wider; +/-inf
    "few": "numerical",  # 4 values: jensenshannon by default (> 1000 rows, <= 5 values)
    "cat": "categorical",  # str with None, shifted
    "flag": "categorical",  # bool, not shifted
}
EXACT = 1e-12


def _frame(rng: np.random.Generator, n: int, shift: float) -> pd.DataFrame:
    p = [0.4, 0.3, 0.2, 0.1] if not shift else [0.25, 0.25, 0.25, 0.25]
    frame = pd.DataFrame(
        {
            "x": rng.normal(shift, 1, n),
            "y": rng.exponential(1 + shift, n),
            "few": rng.integers(0, 4, n).astype(float),
            "cat": rng.choice(list("abcd"), n, p=p).astype(object),
            "flag": rng.random(n) < 0.3,
        }
    )
    frame.loc[rng.choice(n, 20, replace=False), "x"] = np.nan
    frame.loc[rng.choice(n, 10, replace=False), "y"] = np.inf
    frame.loc[rng.choice(n, 5, replace=False), "y"] = -np.inf
    frame.loc[rng.choice(n, 5, replace=False), "cat"] = None
    return frame


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(1)
    return _frame(rng, 2000, 0.0), _frame(rng, 2000, 0.5)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = spark_engine.session()
    yield session
    session.stop()


def _wasserstein_bound(ref: pd.Series, cur: pd.Series) -> float:
    """The most Spark's 1000-bin approximation can move the normed Wasserstein distance."""
    from evidently.legacy.spark.calculations.stattests.wasserstein import APPROX_WASSERSTEIN_BINS

    r, c = numeric_sample(ref)[0].values, numeric_sample(cur)[0].values
    width = (np.ptp(r) + np.ptp(c)) / APPROX_WASSERSTEIN_BINS
    return float(width / 2 / max(float(np.std(r)), 0.001))


def _doane(ref: pd.Series, cur: pd.Series, method: str) -> float:
    """Spark's numerical psi/jensenshannon in numpy: Doane bins over both windows,
    ``floor((x - min) / step)`` with the top value in the last bin (``hist_bin_doane``
    and ``get_histogram`` in ``evidently/legacy/spark/calculations/histogram.py``)."""
    r = ref[np.isfinite(ref)].to_numpy()
    c = cur[np.isfinite(cur)].to_numpy()
    both = np.concatenate([c, r])
    n = both.size
    lo, hi, mean, sigma = both.min(), both.max(), both.mean(), both.std()
    sg1 = np.sqrt(6.0 * (n - 2) / ((n + 1.0) * (n + 3)))
    g1 = np.mean(((both - mean) / sigma) ** 3)
    bins = int(np.ceil((hi - lo) / ((hi - lo) / (1.0 + np.log2(n) + np.log2(1.0 + abs(g1) / sg1)))))
    step = (hi - lo) / bins

    def shares(v: np.ndarray) -> np.ndarray:
        idx = np.minimum(np.floor((v - lo) / step).astype(int), bins - 1)
        return np.bincount(idx, minlength=bins) / v.size

    pr, pc = shares(r), shares(c)
    if method == "jensenshannon":
        from scipy.spatial import distance

        return float(distance.jensenshannon(pr, pc))
    for p in (pr, pc):
        low = p[p != 0].min()
        p[p == 0] = low / 10**6 if low <= PSI_EPSILON else PSI_EPSILON
    return float(np.sum((pr - pc) * np.log(pr / pc)))


def test_registry_matches_declared_methods() -> None:
    assert evidently_engine.spark_methods() == spark_engine.SPARK_METHODS


def test_defaults_match_fast(spark: Any, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = data
    fast = compute(ref, cur, features=KINDS)
    sp = compute(ref, cur, features=KINDS, engine="spark")
    assert sp.engine == "spark"
    assert sp.drifted_features == fast.drifted_features == ["x", "y", "cat"]
    for name in KINDS:
        a, b = fast.features[name], sp.features[name]
        assert b.status == "ok", f"{name}: {b.reason}"
        assert (b.method, b.drifted, b.threshold) == (a.method, a.drifted, a.threshold), name
        assert a.score is not None and b.score is not None
        tol = _wasserstein_bound(ref[name], cur[name]) if a.method == "wasserstein" else EXACT
        assert abs(a.score - b.score) <= tol, f"{name}: fast {a.score} spark {b.score} tol {tol}"
        assert b.current.to_dict() == a.current.to_dict()
    assert [sp.features[n].method for n in KINDS] == [
        "wasserstein",
        "wasserstein",
        "jensenshannon",
        "jensenshannon",
        "jensenshannon",
    ]


def test_overrides(spark: Any, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = data
    methods = {"x": "psi", "y": "jensenshannon", "few": "psi", "cat": "chisquare", "flag": "psi"}
    fast = compute(ref, cur, features=KINDS, method=methods)
    sp = compute(ref, cur, features=KINDS, method=methods, engine="spark")
    for name, method in methods.items():
        a, b = fast.features[name], sp.features[name]
        assert b.status == "ok" and b.method == method, name
        assert a.score is not None and b.score is not None
        if name in ("x", "y"):  # Doane bins, not the fast engine's Sturges bins
            assert math.isclose(b.score, _doane(ref[name], cur[name], method), rel_tol=1e-9), name
            assert b.drifted == (b.score >= 0.1)
        else:
            assert math.isclose(a.score, b.score, rel_tol=1e-9, abs_tol=EXACT), name
            assert a.drifted == b.drifted, name


def test_unsupported_methods(spark: Any, data: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    ref, cur = (d.iloc[:300] for d in data)
    with pytest.raises(
        DriftError, match=r"'ks' is not implemented by evidently's Spark.*wasserstein"
    ):
        compute(ref, cur, features=KINDS, method={"x": "ks"}, engine="spark")
    # <= 1000 reference rows: the default choice is ks / z for some features
    fast = compute(ref, cur, features=KINDS)
    sp = compute(ref, cur, features=KINDS, engine="spark")
    for name in KINDS:
        a, b = fast.features[name], sp.features[name]
        if a.method in spark_engine.SPARK_METHODS:
            assert b.status == "ok" and b.method == a.method and b.drifted == a.drifted, name
            assert a.score is not None and b.score is not None
            assert math.isclose(a.score, b.score, rel_tol=1e-9, abs_tol=EXACT), name
        else:  # ks / z have no Spark version: the >1000-rows choice, said in the note
            swap = {"ks": "wasserstein", "z": "chisquare"}[a.method or ""]
            assert (b.status, b.method) == ("ok", swap), name
            assert (
                b.note
                == f"{a.method} has no Spark implementation in evidently; {swap} used instead"
            )
            assert b.threshold == {"wasserstein": 0.1, "chisquare": 0.05}[swap]
    assert {fast.features[n].method for n in KINDS} == {"ks", "chisquare", "z"}
    assert {sp.features[n].method for n in KINDS} == {"wasserstein", "chisquare"}
    assert sp.features["x"].drifted is True  # the shifted feature is still caught


def _with_odd_columns(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Columns the Parquet path must read as pandas does: a timestamp and numbers as
    strings (bad, "nan", "inf", None) declared numerical, and a name with a dot."""
    rng = np.random.default_rng(seed)
    n = len(frame)
    out = frame.copy()
    start = pd.Timestamp("2024-01-01", tz="UTC")
    out["ts"] = start + pd.to_timedelta(rng.integers(0, 86400 * (30 + seed * 10), n), unit="s")
    out.loc[:4, "ts"] = pd.NaT
    text = rng.normal(seed, 1, n).round(3).astype(str).astype(object)
    text[:10], text[10:13], text[13:16], text[16:20] = "bad", "nan", "inf", None
    out["num_str"] = text
    out["odd name.x"] = rng.normal(0, 1, n)
    return out


ODD_KINDS = {**KINDS, "ts": "numerical", "num_str": "numerical", "odd name.x": "numerical"}


def test_parquet_paths(spark: Any, data: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    ref, cur = _with_odd_columns(data[0], 0), _with_odd_columns(data[1], 1)
    us = {"coerce_timestamps": "us"}  # Spark cannot read pandas' default nanoseconds
    ref.to_parquet(tmp_path / "ref.parquet", **us)
    (tmp_path / "cur").mkdir()  # a directory of part files, as Spark writes them
    cur.iloc[:1000].to_parquet(tmp_path / "cur" / "part-0.parquet", **us)
    cur.iloc[1000:].to_parquet(tmp_path / "cur" / "part-1.parquet", **us)
    fast = compute(ref, cur, features=ODD_KINDS)
    features = {n: FeatureDrift(n, k, "ok") for n, k in ODD_KINDS.items()}
    features["gone"] = FeatureDrift("gone", "numerical", "ok")
    spark_engine.score_parquet(tmp_path / "ref.parquet", tmp_path / "cur", features)
    assert (features["gone"].status, features["gone"].reason) == ("skipped", "missing_in_both")
    assert features["num_str"].reference.invalid == 13  # "bad" and "nan", as pandas counts them
    for name in ODD_KINDS:
        a, b = fast.features[name], features[name]
        assert b.status == "ok", f"{name}: {b.reason}"
        assert (b.method, b.threshold, b.drifted) == (a.method, a.threshold, a.drifted), name
        assert b.reference.to_dict() == a.reference.to_dict(), name
        assert b.current.to_dict() == a.current.to_dict(), name
        assert a.score is not None and b.score is not None
        tol = _wasserstein_bound(ref[name], cur[name]) if a.method == "wasserstein" else EXACT
        assert abs(a.score - b.score) <= tol, name

    with pytest.raises(DriftError, match=r"cannot read Parquet .*PATH_NOT_FOUND"):
        spark_engine.score_parquet(tmp_path / "nope.parquet", tmp_path / "cur", features)
    ref.to_parquet(tmp_path / "ns.parquet")
    with pytest.raises(DriftError, match=r"TIMESTAMP\(NANOS.*coerce_timestamps='us'"):
        spark_engine.score_parquet(tmp_path / "ns.parquet", tmp_path / "cur", features)


def test_missing_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(spark_engine.shutil, "which", lambda _: None)
    with pytest.raises(DriftError) as err:
        spark_engine.require_spark()
    assert str(err.value) == (
        "engine 'spark' needs pyspark and Java 17: pip install 'model-monitor[spark]'"
    )


def test_drift_run_with_the_spark_engine_on_parquet_writes_the_same_drift_json(
    spark: Any, data: tuple[pd.DataFrame, pd.DataFrame], tmp_path: Path
) -> None:
    """``monitor drift run --engine spark --current X.parquet``: Spark reads both files
    (pandas never loads them) and drift.json has the fast engine's verdicts."""
    import json

    import yaml

    from monitor.drift.job import RunOptions, run_once
    from monitor.spec import load_spec

    ref, cur = data
    ref.to_parquet(tmp_path / "ref.parquet")
    cur.to_parquet(tmp_path / "cur.parquet")
    feats = [{"name": n, "type": k} for n, k in KINDS.items()]
    spec = {
        "apiVersion": "monitor/v1",
        "service": "t",
        "models": [
            {
                "name": "m",
                "upstream": "http://127.0.0.1:9",
                "features": feats,
                "baseline": str(tmp_path / "ref.parquet"),
            }
        ],
        "drift": {"min_rows": 100, "cache_dir": str(tmp_path / "cache")},
    }
    (tmp_path / "monitor.yaml").write_text(yaml.safe_dump(spec))
    loaded = load_spec(tmp_path / "monitor.yaml")
    opts = RunOptions(current=tmp_path / "cur.parquet", out=tmp_path / "sp", engine="spark")
    run_once(loaded, "m", opts)
    sp = json.loads((tmp_path / "sp" / "drift.json").read_text())
    run_once(
        loaded, "m", RunOptions(current=tmp_path / "cur.parquet", out=tmp_path / "fa", html=False)
    )
    fa = json.loads((tmp_path / "fa" / "drift.json").read_text())
    assert sp["engine"] == "spark" and fa["engine"] == "fast"
    assert sp["dataset"]["rows"] == fa["dataset"]["rows"] == {"reference": 2000, "current": 2000}
    for name in KINDS:
        s, f = sp["features"][name], fa["features"][name]
        assert (s["status"], s["method"], s["drifted"]) == (
            f["status"],
            f["method"],
            f["drifted"],
        ), name
        assert s["reference"]["used"] == f["reference"]["used"], name
    assert sp["dataset"]["dataset_drift"] == fa["dataset"]["dataset_drift"]
    assert "not rendered for the Spark engine" in (tmp_path / "sp" / "report.html").read_text()
