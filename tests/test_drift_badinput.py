"""Bad and awkward input to the drift job, from a new user's break-it session.

Each test is one kind of fault: the input gets a clear error naming what is wrong,
or a result whose every number is right; never a traceback, never NaN in JSON.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from monitor.drift import compute, load_reference
from monitor.drift.job import RunOptions, run_once
from monitor.errors import DriftError, SpecError
from monitor.spec import load_spec

MONITOR = [sys.executable, "-m", "monitor"]


def test_integer_column_names_are_compared_not_reported_missing() -> None:
    x = np.random.default_rng(0).normal(size=(300, 3))
    res = compute(pd.DataFrame(x), pd.DataFrame(x + 5))
    assert sorted(res.features) == ["0", "1", "2"]
    assert res.dataset_drift is True and len(res.drifted_features) == 3


@pytest.mark.parametrize(
    ("reference", "current", "kwargs", "message"),
    [
        (
            np.zeros((3, 2)),
            pd.DataFrame({"a": [1.0]}),
            {},
            "reference must be a pandas DataFrame, not ndarray",
        ),
        (pd.DataFrame({"a": [1.0]}), None, {}, "current must be a pandas DataFrame, not NoneType"),
        (
            pd.DataFrame([[1, 2]], columns=["a", "a"]),
            pd.DataFrame({"a": [1]}),
            {},
            "reference has duplicate column names: ['a']",
        ),
        (
            pd.DataFrame({"a": [1.0]}),
            pd.DataFrame({"a": [1.0]}),
            {"features": "a"},
            "features must be a list of column names",
        ),
        (
            pd.DataFrame({"a": [1.0]}),
            pd.DataFrame({"a": [1.0]}),
            {"method": {"zzz": "ks"}},
            "method names features that are not compared: ['zzz']",
        ),
        (
            pd.DataFrame({"a": [1.0]}),
            pd.DataFrame({"a": [1.0]}),
            {"threshold": {"b": 0.1}},
            "threshold names features that are not compared: ['b']",
        ),
        (
            pd.DataFrame({"a": [1.0]}),
            pd.DataFrame({"a": [1.0]}),
            {"min_rows": -5},
            "min_rows must be an integer >= 1",
        ),
    ],
    ids=[
        "an ndarray is not a DataFrame",
        "None is not a DataFrame",
        "duplicate column names are named",
        "a string is not a feature list (it would iterate letters)",
        "a method for an unknown feature is a typo, not silence",
        "a threshold for an unknown feature is a typo, not silence",
        "min_rows below 1 is refused",
    ],
)
def test_unusable_arguments_are_one_clear_error(reference, current, kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DriftError) as err:
        compute(reference, current, **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("method", "threshold", "message"),
    [
        ("ks", float("nan"), "must be in (0, 1)"),
        ("ks", 1.5, "must be in (0, 1)"),
        ("ks", 0.0, "must be in (0, 1)"),
        ("psi", -1.0, "must be finite and >= 0"),
        ("psi", float("inf"), "must be finite and >= 0"),
        ("psi", "0.1", "threshold must be a number"),
        ("psi", True, "threshold must be a number"),
    ],
)
def test_thresholds_outside_the_methods_range_are_refused(
    method: str, threshold: object, message: str
) -> None:
    frame = pd.DataFrame({"x": np.arange(100.0)})
    with pytest.raises(DriftError, match="threshold") as err:
        compute(frame, frame, method=method, threshold=threshold)  # type: ignore[arg-type]
    assert message in str(err.value)


def test_non_finite_method_details_become_null_in_json() -> None:
    tiny = pd.DataFrame({"x": np.array([1e-320, 2e-320, 3e-320] * 20)})
    res = compute(tiny, tiny * 2, method="t_test")
    text = json.dumps(res.to_dict(), allow_nan=False)  # raises on NaN/inf
    assert "Infinity" not in text and "NaN" not in text


def test_html_note_is_escaped_once() -> None:
    ref = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 50})
    cur = pd.DataFrame({"c": ["a"] * 40 + ["b"] * 40 + ["z"] * 20})
    html = compute(ref, cur, method="chisquare").summary_html()
    assert " &mdash; category absent from the reference" in html
    assert "&amp;mdash;" not in html


def _spec(tmp: Path, baseline: pd.DataFrame, **extra: object) -> Path:
    baseline.to_parquet(tmp / "baseline.parquet")
    model = {
        "name": "m",
        "upstream": "http://127.0.0.1:9",
        "features": [{"name": "x"}, {"name": "y"}, {"name": "c", "type": "categorical"}],
        "outputs": [{"name": "p", "type": "categorical", "classes": ["0", "1"]}],
        "capture": {"dir": str(tmp / "capture")},
        "baseline": str(tmp / "baseline.parquet"),
        **extra,
    }
    spec = {"apiVersion": "monitor/v1", "service": "t", "models": [model],
            "drift": {"min_rows": 10, "cache_dir": str(tmp / "cache")}}  # fmt: skip
    (tmp / "monitor.yaml").write_text(yaml.safe_dump(spec))
    return tmp / "monitor.yaml"


def _data(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {"x": rng.normal(size=n), "y": rng.normal(size=n), "c": rng.choice(["a", "b"], n)}
    )


def test_a_baseline_missing_a_feature_says_missing_in_reference(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _data().drop(columns=["y"]))
    cur = tmp_path / "cur.parquet"
    _data().to_parquet(cur)
    res = run_once(load_spec(spec), "m", RunOptions(current=cur, html=False))
    assert (res.features["y"].status, res.features["y"].reason) == (
        "skipped",
        "missing_in_reference",
    )
    profile = load_reference(
        tmp_path / "baseline.parquet", {"x": "numerical", "q": "numerical"}, use_cache=False
    )
    assert compute(profile, _data()).features["q"].reason == "missing_in_both"


def test_a_current_file_with_none_of_the_features_is_an_error_not_a_quiet_no_verdict(
    tmp_path: Path,
) -> None:
    """Case (break-it trial): such a file exited 0 with 'no verdict (insufficient
    data)', so a CronJob fed the wrong file looked green."""
    spec = _spec(tmp_path, _data())
    cur = tmp_path / "cur.csv"
    cur.write_text("a,b\n1,2\n3,4\n")
    with pytest.raises(DriftError) as err:
        run_once(load_spec(spec), "m", RunOptions(current=cur, html=False))
    assert str(err.value) == (
        f"--current {cur}: none of model 'm''s features (x, y, c) is a column; "
        "its columns are: a, b"
    )
    # one feature present is a partial file: a result, the others missing_in_current
    cur.write_text("x,b\n" + "".join(f"{i / 10},{i}\n" for i in range(50)))
    res = run_once(load_spec(spec), "m", RunOptions(current=cur, html=False))
    assert res.features["y"].reason == "missing_in_current"
    assert res.features["x"].status != "skipped"


def test_a_csv_with_a_repeated_column_name_is_refused_not_renamed(tmp_path: Path) -> None:
    """Case (break-it trial): pandas renamed the second ``x`` to ``x.1``, so it was
    silently left out, though duplicate names are documented as an error."""
    from monitor.drift.reference import read_table

    cur = tmp_path / "cur.csv"
    cur.write_text("x,y,x\n1,2,3\n")
    with pytest.raises(DriftError) as err:
        read_table(cur)
    assert str(err.value) == f"{cur}: duplicate column names: x"
    cur.write_text("x,y,x.1\n1,2,3\n")  # a real column named x.1 is fine
    assert list(read_table(cur).columns) == ["x", "y", "x.1"]


def test_an_empty_capture_window_is_insufficient_data_not_missing(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _data())
    (tmp_path / "capture").mkdir()
    res = run_once(load_spec(spec), "m", RunOptions(html=False))
    assert {f.status for f in res.features.values()} == {"insufficient_data"}
    assert res.dataset_drift is None


def test_labels_not_there_yet_skip_quality_and_drift_still_runs(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _data(), labels={"path": str(tmp_path / "labels.parquet")})
    cur = tmp_path / "cur.parquet"
    _data().to_parquet(cur)
    res = run_once(load_spec(spec), "m", RunOptions(current=cur, out=tmp_path / "o", html=False))
    assert res.dataset_drift is False
    assert (
        res.quality is not None
        and res.quality["rows"] == 0
        and "labels.parquet" in res.quality["skipped"]["all"]
    )
    assert any(w.startswith("model quality skipped") for w in res.warnings)
    mode = stat.S_IMODE((tmp_path / "o" / "drift.json").stat().st_mode)
    assert mode & 0o044 == 0o044  # readable by group and others (umask permitting), not 0600


def test_a_directory_of_parquet_parts_is_read_as_one_window(tmp_path: Path) -> None:
    spec = _spec(tmp_path, _data())
    parts = tmp_path / "window"
    parts.mkdir()
    _data(100).to_parquet(parts / "part-0.parquet")
    _data(50).to_parquet(parts / "part-1.parquet")
    res = run_once(load_spec(spec), "m", RunOptions(current=parts, html=False))
    assert res.rows_current == 150
    (tmp_path / "empty").mkdir()
    with pytest.raises(DriftError, match="is a directory without"):
        run_once(load_spec(spec), "m", RunOptions(current=tmp_path / "empty", html=False))


@pytest.mark.parametrize(
    ("spec_drift", "feature_extra", "message"),
    [
        (
            {"method": "ks"},
            {},
            "drift.method: 'ks' needs numerical features, "
            "but models[0].features[2] ('c') is categorical",
        ),
        ({"threshold": -1}, {}, "drift.threshold"),
        ({}, {"drift_threshold": float("nan")}, "drift_threshold"),
    ],
    ids=["a global method that cannot score a feature", "a negative threshold", "a NaN threshold"],
)
def test_spec_refuses_drift_settings_that_cannot_work(
    tmp_path: Path, spec_drift, feature_extra, message
) -> None:  # type: ignore[no-untyped-def]
    path = _spec(tmp_path, _data())
    raw = yaml.safe_load(path.read_text())
    raw["drift"].update(spec_drift)
    raw["models"][0]["features"][0].update(feature_extra)
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "/dev/null/x"], "error: cannot write the report to /dev/null/x"),
        (["--since", "99999999999d"], "must be positive and at most 100 years"),
    ],
    ids=["an unwritable --out is one line", "an absurd --since is a usage error"],
)
def test_cli_bad_output_and_window_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    spec = _spec(tmp_path, _data())
    cur = tmp_path / "cur.csv"
    _data().to_csv(cur, index=False)
    proc = subprocess.run(
        [*MONITOR, "drift", "run", "--config", str(spec), "--model", "m",
         "--current", str(cur), "--no-html", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode in (1, 2)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
