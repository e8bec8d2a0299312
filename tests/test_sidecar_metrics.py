"""SidecarMetrics with a fresh registry: the values each observation leaves behind."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from monitor.conventions import outcome_for_status
from monitor.payload import Predictions, Rows
from monitor.sidecar.metrics import SidecarMetrics
from monitor.spec import ModelSpec


def make(**kw: object) -> tuple[SidecarMetrics, CollectorRegistry]:
    reg = CollectorRegistry()
    spec = ModelSpec.model_validate({"name": "m", "upstream": "http://127.0.0.1:1", **kw})
    return SidecarMetrics(spec, reg), reg


def test_numeric_outputs_fill_the_prediction_histogram_and_skip_non_numbers() -> None:
    m, reg = make(outputs=[{"name": "score", "buckets": [0.5, 1.0]}])
    m.observe_predictions(Predictions({"score": [0.2, 0.7, 0.9, None, "x", float("nan")]}))
    get = reg.get_sample_value
    assert get("mlmon_prediction_value_count", {"model": "m", "output": "score"}) == 3
    assert get("mlmon_prediction_value_bucket", {"model": "m", "output": "score", "le": "0.5"}) == 1
    assert get("mlmon_prediction_value_sum", {"model": "m", "output": "score"}) == 0.2 + 0.7 + 0.9


def test_classes_outside_the_spec_count_as_other_so_labels_stay_bounded() -> None:
    m, reg = make(outputs=[{"name": "label", "type": "categorical", "classes": ["cat", 1]}])
    m.observe_predictions(Predictions({"label": ["cat", 1.0, [1], "dog", "fox", {"a": 1}]}))
    get = reg.get_sample_value
    assert get("mlmon_predictions_total", {"model": "m", "output": "label", "class": "cat"}) == 1
    assert get("mlmon_predictions_total", {"model": "m", "output": "label", "class": "1"}) == 2
    assert get("mlmon_predictions_total", {"model": "m", "output": "label", "class": "other"}) == 3


def test_the_default_output_star_reads_the_first_output_as_prediction() -> None:
    m, reg = make()
    m.observe_predictions(Predictions({"first": [0.25], "second": [0.95]}))
    assert (
        reg.get_sample_value("mlmon_prediction_value_count", {"model": "m", "output": "prediction"})
        == 1
    )
    assert (
        reg.get_sample_value("mlmon_prediction_value_sum", {"model": "m", "output": "prediction"})
        == 0.25
    )


def test_set_version_keeps_one_info_series_and_old_counts() -> None:
    m, reg = make(version="7")
    m.observe_request("m", "/r", 200, "ok", 0.01, None)
    m.set_version("8")
    m.observe_request("m", "/r", 200, "ok", 0.01, None)
    get = reg.get_sample_value
    info = {"model": "m", "fingerprint": ""}
    assert get("mlmon_model_info", {**info, "version": "7"}) is None
    assert get("mlmon_model_info", {**info, "version": "8"}) == 1
    base = {"model": "m", "route": "/r", "code": "200", "outcome": "ok"}
    assert get("mlmon_requests_total", {**base, "version": "7"}) == 1
    assert get("mlmon_requests_total", {**base, "version": "8"}) == 1


def test_requests_for_another_model_carry_no_version() -> None:
    m, reg = make(version="7")
    m.observe_request("other", "unmatched", 404, "client_error", 0.001, None)
    labels = {
        "model": "other",
        "version": "",
        "route": "unmatched",
        "code": "404",
        "outcome": "client_error",
    }
    assert reg.get_sample_value("mlmon_requests_total", labels) == 1


def test_coverage_and_unexpected_counts_come_from_rows() -> None:
    m, reg = make(features=[{"name": "a", "min": 0, "max": 1}])
    m.observe_rows(Rows(n=3, columns={"a": [0.5, 2, None]}, unexpected=3))
    get = reg.get_sample_value
    assert (
        get("mlmon_feature_values_total", {"model": "m", "feature": "a", "state": "present"}) == 1
    )
    assert (
        get("mlmon_feature_values_total", {"model": "m", "feature": "a", "state": "out_of_range"})
        == 1
    )
    assert get("mlmon_feature_values_total", {"model": "m", "feature": "a", "state": "null"}) == 1
    assert get("mlmon_unexpected_features_total", {"model": "m"}) == 3


def test_outcomes_follow_the_status_class() -> None:
    assert [outcome_for_status(s) for s in (200, 304, 404, 429, 500, 503)] == [
        "ok",
        "ok",
        "client_error",
        "client_error",
        "server_error",
        "server_error",
    ]


def test_the_duration_histogram_buckets_are_cumulative_inclusive_and_end_at_count() -> None:
    m, reg = make(latency_buckets=[0.001, 0.01])
    for seconds in (0.0005, 0.001, 0.005, 100.0):
        m.observe_request("m", "/r", 200, "ok", seconds, {"trace_id": "ab" * 16})
    labels = {"model": "m", "version": "unknown", "route": "/r", "outcome": "ok"}
    bucket = {
        le: reg.get_sample_value("mlmon_request_duration_seconds_bucket", {**labels, "le": le})
        for le in ("0.001", "0.01", "+Inf")
    }
    assert bucket == {"0.001": 2, "0.01": 3, "+Inf": 4}  # le is inclusive: 0.001 lands in 0.001
    assert reg.get_sample_value("mlmon_request_duration_seconds_count", labels) == 4
    assert (
        reg.get_sample_value("mlmon_request_duration_seconds_sum", labels)
        == 0.0005 + 0.001 + 0.005 + 100
    )


def test_exemplars_carry_the_trace_id_in_openmetrics() -> None:
    from prometheus_client.openmetrics.exposition import generate_latest

    m, reg = make(latency_buckets=[0.1])
    m.observe_request("m", "/r", 200, "ok", 0.05, {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    text = generate_latest(reg).decode()
    line = next(ln for ln in text.splitlines() if 'le="0.1"' in ln)
    assert '# {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.05' in line


class _Trace:
    def __init__(self, hex_id: str) -> None:
        self.trace_id_hex = hex_id


def test_a_bucket_takes_at_most_one_trace_exemplar_per_second() -> None:
    from prometheus_client.openmetrics.exposition import generate_latest

    m, reg = make(latency_buckets=[0.1, 1.0])
    m.observe_request("m", "/r", 200, "ok", 0.05, _Trace("a" * 32), now=100.0)
    m.observe_request(
        "m", "/r", 200, "ok", 0.06, _Trace("b" * 32), now=100.5
    )  # same bucket, too soon
    m.observe_request(
        "m", "/r", 200, "ok", 0.5, _Trace("c" * 32), now=100.5
    )  # another bucket: kept
    text = generate_latest(reg).decode()
    assert f'trace_id="{"a" * 32}"' in text and f'trace_id="{"b" * 32}"' not in text
    assert f'trace_id="{"c" * 32}"' in text
    m.observe_request("m", "/r", 200, "ok", 0.07, _Trace("d" * 32), now=101.0)  # a second later
    assert f'trace_id="{"d" * 32}"' in generate_latest(reg).decode()
