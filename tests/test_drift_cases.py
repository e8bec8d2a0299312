"""The drift cases of ../shared/cases/real-world-cases.md, each with its right value.

Every case runs through ``compute`` (the Python API) and, where the case names
an exported value, through the job's collector as Prometheus would scrape it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.drift import compute
from monitor.drift.job import DriftCollector
from tests.support import Metrics


def _scrape(result) -> Metrics:  # type: ignore[no-untyped-def]
    registry = CollectorRegistry()
    DriftCollector(registry).record("m", result)
    return Metrics(generate_latest(registry).decode())


# --- C01: constant categorical column ------------------------------------------------


def _c01() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = pd.DataFrame({"flag": ["0"] * 50, "amount": [10, 20, 30, 40, 50] * 10})
    return frame, frame.copy()


@pytest.mark.parametrize(
    ("method", "expected"),
    [("chisquare", 1.0), ("z", 1.0), ("psi", 0.0), ("jensenshannon", 0.0)],
    ids=lambda v: str(v),
)
def test_c01_one_category_in_both_windows_is_no_drift_never_nan(
    method: str, expected: float
) -> None:
    ref, cur = _c01()
    res = compute(ref, cur, method={"flag": method})
    flag = res.features["flag"]
    assert flag.status == "ok"
    assert flag.score == expected
    assert flag.drifted is False
    assert res.share_of_drifted == 0.0
    assert res.dataset_drift is False
    m = _scrape(res)
    assert m.get("mlmon_drift_score", model="m", feature="flag", method=method) == expected
    assert not any(math.isnan(v) for n, _, v in m.samples if n == "mlmon_drift_score")


def test_c01_a_nan_score_is_reported_undefined_and_left_out_of_the_share() -> None:
    """A t-test on two constant windows is NaN: status undefined, not exported, not counted."""
    ref = pd.DataFrame({"x": [1.0] * 40, "y": np.arange(40.0)})
    res = compute(ref, ref.copy(), method={"x": "t_test"})
    x = res.features["x"]
    assert (x.status, x.reason, x.score, x.drifted) == ("undefined", "nan_score", None, None)
    assert [f.name for f in res.scored] == ["y"]
    m = _scrape(res)
    status = {"status": "undefined", "reason": "nan_score"}
    assert m.get("mlmon_drift_feature_status", feature="x", **status) == 1
    assert not [s for s in m.samples if s[0] == "mlmon_drift_score" and s[1].get("feature") == "x"]


# --- C02: all-empty column ----------------------------------------------------------


def test_c02_empty_reference_column_is_skipped_and_the_rest_is_scored() -> None:
    frame = pd.DataFrame({"age": list(range(20, 70)) * 2, "coupon": [np.nan] * 100})
    res = compute(frame, frame.copy())
    coupon, age = res.features["coupon"], res.features["age"]
    assert (coupon.status, coupon.reason) == ("skipped", "empty_reference")
    assert age.status == "ok" and age.drifted is False and age.score == 1.0
    assert res.dataset_drift is False and res.share_of_drifted == 0.0
    assert any("coupon" in w and "empty_reference" in w for w in res.warnings)
    assert "coupon" in res.summary_html() and "empty_reference" in res.summary_html()
    m = _scrape(res)
    assert m.get("mlmon_drift_missing_ratio", feature="coupon", dataset="current") == 1.0
    status = {"status": "skipped", "reason": "empty_reference"}
    assert m.get("mlmon_drift_feature_status", feature="coupon", **status) == 1


# --- C04: unseen category -----------------------------------------------------------


def _c04() -> tuple[pd.DataFrame, pd.DataFrame]:
    ref = pd.DataFrame({"channel": ["A"] * 50 + ["B"] * 30 + ["C"] * 20})
    cur = pd.DataFrame({"channel": ["A"] * 45 + ["B"] * 30 + ["C"] * 15 + ["D"] * 10})
    return ref, cur


def test_c04_unseen_category_is_counted_on_the_union_and_drifts() -> None:
    ref, cur = _c04()
    res = compute(ref, cur, method="chisquare")
    ch = res.features["channel"]
    assert ch.details["statistic"] == pytest.approx(10.977443609022556, rel=1e-12)
    assert ch.details["dof"] == 3
    assert ch.score == pytest.approx(0.011848473896240023, rel=1e-9)
    assert ch.drifted is True
    assert "C04" in ch.note
    assert ch.unseen_categories == ["D"]
    assert ch.unseen_category_ratio == 0.10
    m = _scrape(res)
    assert m.get("mlmon_drift_unseen_category_ratio", feature="channel") == 0.10


def test_c04_psi_names_the_epsilon_of_the_empty_reference_bin() -> None:
    ref, cur = _c04()
    ch = compute(ref, cur, method="psi").features["channel"]
    expected = (
        (0.5 - 0.45) * math.log(0.5 / 0.45)
        + (0.2 - 0.15) * math.log(0.2 / 0.15)
        + (0.0001 - 0.10) * math.log(0.0001 / 0.10)
    )
    assert ch.score == pytest.approx(expected, rel=1e-12)
    assert round(ch.score, 2) == 0.71
    assert ch.details["epsilon_reference"] == 0.0001
    assert ch.unseen_categories == ["D"]


# --- C05: same proportions, different sizes -------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"), [("chisquare", 1.0), ("psi", 0.0), ("jensenshannon", 0.0)]
)
def test_c05_same_proportions_different_sizes_is_not_drift(method: str, expected: float) -> None:
    ref = pd.DataFrame({"quality": ["good"] * 120 + ["bad"] * 480})
    cur = pd.DataFrame({"quality": ["good"] * 30 + ["bad"] * 120})
    q = compute(ref, cur, method=method).features["quality"]
    assert q.score == pytest.approx(expected, abs=1e-12)
    assert q.drifted is False
    if method == "chisquare":
        assert q.details["statistic"] == 0.0  # not the unscaled 337.5


# --- C07: infinities ----------------------------------------------------------------


def test_c07_infinities_are_excluded_counted_and_do_not_abort() -> None:
    ref = pd.DataFrame({"ratio": [1.0, 2, 3, 4, 5] * 20})
    cur = pd.DataFrame({"ratio": [1.0, 2, 3, 4, 5] * 19 + [np.inf, np.inf, -np.inf, 4, 5]})
    res = compute(ref, cur, method="ks")
    r = res.features["ratio"]
    assert r.current.nonfinite == 3 and r.current.used == 97
    assert r.current.ratio(r.current.nonfinite) == 0.03
    assert r.details["statistic"] == pytest.approx(0.6 - 57 / 97, rel=1e-12)  # D ~ 0.012
    assert r.score == pytest.approx(1.0, abs=1e-12)
    assert r.drifted is False
    m = _scrape(res)
    assert m.get("mlmon_drift_nonfinite_ratio", feature="ratio", dataset="current") == 0.03
    # every method copes; the default choice (5 values -> chi-square) too
    for method in (None, "wasserstein", "psi", "jensenshannon", "kl_div", "hellinger", "ed"):
        assert compute(ref, cur, method=method).features["ratio"].status == "ok", method


# --- C08: datetime column named like the prediction ------------------------------------


def test_c08_roles_by_exact_name_and_datetime_skipped() -> None:
    n = 9
    frame = pd.DataFrame(
        {
            "prediction": np.linspace(0.1, 0.9, n),
            "prediction_timestamp_utc": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "f1": np.linspace(1.0, 2.0, n),
        }
    )
    res = compute(frame, frame.copy())
    pred = res.features["prediction"]
    assert pred.type == "numerical" and pred.status == "ok"
    assert res.features["f1"].type == "numerical" and res.features["f1"].status == "ok"
    ts = res.features["prediction_timestamp_utc"]
    assert (ts.status, ts.reason, ts.method) == ("skipped", "datetime", None)
    # declared, it is compared as epoch seconds
    declared = compute(frame, frame.copy(), features=["prediction_timestamp_utc"])
    assert declared.features["prediction_timestamp_utc"].status == "ok"


# --- C10: string dtype ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["object", "string", "category"])
def test_c10_string_columns_are_categorical_and_scored(dtype: str) -> None:
    frame = pd.DataFrame({"color": ["red", "blue", "red", "green"] * 25, "x": range(100)})
    frame["color"] = frame["color"].astype(dtype)
    res = compute(frame, frame.copy())
    color = res.features["color"]
    assert color.type == "categorical" and color.status == "ok"
    assert color.score == 1.0 and color.drifted is False
    assert set(res.features) == {"color", "x"}  # no feature vanished without a reason


def test_c10_every_configured_feature_has_a_score_or_a_reason() -> None:
    ref = pd.DataFrame({"a": [1.0, 2.0] * 20, "b": ["x", "y"] * 20})
    cur = pd.DataFrame({"a": [1.0, 2.0] * 20})
    res = compute(ref, cur, features={"a": "numerical", "b": "categorical", "c": "numerical"})
    assert {n: (f.status, f.reason) for n, f in res.features.items() if f.status != "ok"} == {
        "b": ("skipped", "missing_in_current"),
        "c": ("skipped", "missing_in_both"),
    }
    for f in res.features.values():
        assert f.score is not None or f.reason


def test_c10_old_evidently_with_pandas_3_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from monitor.drift import evidently_engine
    from monitor.errors import DriftError

    versions = {"evidently": (0, 7, 20), "pandas": (3, 0, 0)}
    monkeypatch.setattr(evidently_engine, "_version", lambda dist: versions[dist])
    with pytest.raises(DriftError, match=r"0\.7\.21"):
        evidently_engine.check_versions()
    versions["evidently"] = (0, 7, 21)
    evidently_engine.check_versions()


# --- awkward data beyond the cases ---------------------------------------------------


def test_insufficient_current_rows_give_no_verdict() -> None:
    ref = pd.DataFrame({"x": np.arange(500.0)})
    res = compute(ref, ref.head(20), min_rows=100)
    x = res.features["x"]
    assert x.status == "insufficient_data" and x.drifted is None and x.score is None
    assert res.dataset_drift is None and res.status == "insufficient_data"
    assert _scrape(res).get("mlmon_dataset_drift_detected") == 0  # absent, not 0-valued
    assert not [s for s in _scrape(res).samples if s[0] == "mlmon_dataset_drift_detected"]


def test_nullable_and_object_numbers_are_read_and_bad_values_counted() -> None:
    ref = pd.DataFrame(
        {"n": pd.array([1, 2, None, 4] * 30, dtype="Int64"), "o": ["1.5", "2", None, "x"] * 30}
    )
    res = compute(ref, ref.copy(), features={"n": "numerical", "o": "numerical"})
    assert res.features["n"].status == "ok" and res.features["n"].reference.null == 30
    o = res.features["o"]
    assert o.status == "ok" and (o.current.invalid, o.current.null, o.current.used) == (30, 30, 60)


def test_id_like_columns_are_ignored_unless_declared() -> None:
    frame = pd.DataFrame({"user_id": np.arange(300), "x": np.arange(300.0) % 7})
    res = compute(frame, frame.copy())
    uid = res.features["user_id"]
    assert (uid.status, uid.reason) == ("skipped", "id_like")
    assert compute(frame, frame.copy(), features=["user_id"]).features["user_id"].status == "ok"


def test_categories_compare_by_their_string_form_across_windows() -> None:
    """A baseline read with integer labels and a capture window of strings ("0"/"1",
    as the capture store writes categories) are the same categories, not 100% unseen."""
    ref = pd.DataFrame({"prediction": [0, 1] * 100})
    cur = pd.DataFrame({"prediction": ["0", "1"] * 50})
    p = compute(ref, cur, features={"prediction": "categorical"}).features["prediction"]
    assert p.unseen_categories == [] and p.score == 1.0 and p.drifted is False


def test_c10_an_engine_that_loses_a_feature_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A feature left without a score or reason is an error, not a silent "no drift"."""
    from monitor.drift import core
    from monitor.errors import DriftError

    monkeypatch.setattr(core, "_score_fast", lambda to_score: None)  # an engine that scores nothing
    frame = pd.DataFrame({"x": np.arange(50.0)})
    with pytest.raises(DriftError, match=r"no score and no reason for \['x'\]"):
        compute(frame, frame.copy())
