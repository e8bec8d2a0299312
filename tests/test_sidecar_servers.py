"""The sidecar in front of real model servers (MLServer over V2, MLflow's scoring
server), driven by real clients, scraped by a real Prometheus."""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
import yaml
from tritonclient.utils import InferenceServerException

from monitor.capture import read_capture
from monitor.modelserver import MLflowServerProcess, MLServerProcess, TrainedModel
from monitor.procs import PrometheusProcess
from tests.support import ROOT, SidecarProc, require_tool, sidecar, v2_input

pytestmark = pytest.mark.timeout(180)


def demo_spec(path: Path, upstream: str, capture_dir: Path, **overrides: Any) -> Path:
    """deploy/monitor.yaml, pointed at ``upstream`` and a private capture dir."""
    spec = yaml.safe_load((ROOT / "deploy" / "monitor.yaml").read_text())
    m = spec["models"][0]
    m["upstream"] = upstream
    m["capture"] = {"dir": str(capture_dir), "sample_rate": 1.0, "rotate_seconds": 0.5}
    m["probe_interval_seconds"] = 0.2
    # the control API's token file: this spec's own, next to it
    token = path.parent / "control.token"
    token.write_text("test-control-token\n")
    m["control"] = {"token_file": str(token), "state_file": str(path.parent / "state.json")}
    m.update(overrides)
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture()
def bc_sidecar(mlserver: MLServerProcess, tmp_path: Path) -> Iterator[SidecarProc]:
    with sidecar(demo_spec(tmp_path / "m.yaml", mlserver.url, tmp_path / "capture"), "bc") as proc:
        yield proc


def _infer(client: triton.InferenceServerClient, row: np.ndarray, rid: str) -> dict[str, Any]:
    return client.infer("bc", [v2_input(row)], request_id=rid).get_response()


def test_exact_counts_for_20_v2_requests_through_the_sidecar(
    bc_sidecar: SidecarProc, mlserver: MLServerProcess, trained_model: TrainedModel, tmp_path: Path
) -> None:
    """5 rows with mean_radius out of range, 3 with mean_texture null (NaN), 2 answered
    500 by MLServer (a [1, 29] tensor): exactly those counts, and the bodies the
    client gets equal what MLServer sends for the same request."""
    via = triton.InferenceServerClient(url=f"127.0.0.1:{bc_sidecar.port}")
    direct = triton.InferenceServerClient(url=mlserver.url.removeprefix("http://"))
    x = np.asarray(trained_model.x_test[:20], dtype=np.float64)
    outcomes = []
    for i in range(20):
        row = x[i : i + 1].copy()
        if i < 5:
            row[0, 0] = 1000.0  # mean_radius: spec max is 43
        elif i < 8:
            row[0, 1] = math.nan  # mean_texture: null
        elif i < 10:
            row = row[:, :29]  # the model needs 30 columns: MLServer answers 500
        rid = f"req-{i}"
        try:
            got = _infer(via, row, rid)
        except InferenceServerException as exc:
            outcomes.append(exc.status())
            with pytest.raises(InferenceServerException):
                _infer(direct, row, rid)
            continue
        outcomes.append("200")
        assert got == _infer(direct, row, rid)
    via.close()
    direct.close()
    assert outcomes.count("200") == 18

    m = bc_sidecar.scrape()
    infer = {"route": "/v2/models/{model}/infer", "model": "bc"}
    assert m.get("mlmon_requests_total", **infer, code="200", outcome="ok") == 18
    assert m.get("mlmon_requests_total", **infer, code="500", outcome="server_error") == 2
    assert m.get("mlmon_requests_total", **infer) == 20
    assert m.get("mlmon_request_duration_seconds_count", **infer) == 20
    assert m.get("mlmon_feature_values_total", feature="mean_radius", state="out_of_range") == 5
    assert m.get("mlmon_feature_values_total", feature="mean_radius", state="present") == 15
    assert m.get("mlmon_feature_values_total", feature="mean_texture", state="null") == 3
    assert m.get("mlmon_feature_values_total", feature="mean_texture", state="present") == 17
    assert (
        m.get("mlmon_feature_values_total", feature="worst_fractal_dimension", state="missing") == 2
    )
    assert m.get("mlmon_feature_values_total") == 20 * 30
    assert m.get("mlmon_payload_errors_total") == 0
    assert m.get("mlmon_unexpected_features_total") == 0
    assert m.get("mlmon_predictions_total", output="predict") == 18
    assert m.get("mlmon_inflight_requests") == 0
    assert m.get("mlmon_upstream_up") == 1
    # MLServer's metadata names no version; its responses do ("model_version": "1").
    assert m.series("mlmon_model_info") == [{"model": "bc", "version": "1", "fingerprint": ""}]

    # Capture: every inference request's rows (20), written as Parquet for the drift job.
    deadline = time.monotonic() + 10
    while bc_sidecar.scrape().get("mlmon_capture_rows_total") < 20:
        assert time.monotonic() < deadline, "capture did not commit 20 rows"
        time.sleep(0.1)
    table = read_capture(tmp_path / "capture")
    assert table.num_rows == 20
    assert sorted(table["request_id"].to_pylist()) == sorted(f"req-{i}" for i in range(20))
    assert table["mean_radius"].to_pylist().count(1000.0) == 5
    assert sum(1 for v in table["mean_texture"].to_pylist() if v is None or math.isnan(v)) == 3


def test_raw_bodies_are_byte_identical_to_the_upstreams(
    bc_sidecar: SidecarProc, mlserver: MLServerProcess, trained_model: TrainedModel
) -> None:
    def post(port: int, body: bytes) -> tuple[int, bytes, str | None]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request(
            "POST", "/v2/models/bc/infer", body=body, headers={"Content-Type": "application/json"}
        )
        r = c.getresponse()
        out = (r.status, r.read(), r.getheader("Content-Type"))
        c.close()
        return out

    up = urllib.parse.urlsplit(mlserver.url).port
    assert up is not None
    for i, rows in enumerate([trained_model.x_test[:1], trained_model.x_test[:64]]):
        body = json.dumps(
            {
                "id": f"same-{i}",
                "inputs": [
                    {"name": "x", "shape": [len(rows), 30], "datatype": "FP64", "data": rows}
                ],
            }
        ).encode()
        assert post(bc_sidecar.port, body) == post(up, body)


MLFLOW_BODIES = {
    "dataframe_split": lambda cols, rows: {"dataframe_split": {"columns": cols, "data": rows}},
    "dataframe_records": lambda cols, rows: {
        "dataframe_records": [dict(zip(cols, r, strict=True)) for r in rows]
    },
    "instances": lambda cols, rows: {"instances": [dict(zip(cols, r, strict=True)) for r in rows]},
    "inputs": lambda cols, rows: {"inputs": {c: [r[j] for r in rows] for j, c in enumerate(cols)}},
}


@pytest.fixture(scope="module")
def mlflow_sidecar(
    mlflow_server: MLflowServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProc]:
    d = tmp_path_factory.mktemp("mlflow-side")
    spec = demo_spec(d / "m.yaml", mlflow_server.url, d / "capture", protocol="mlflow")
    with sidecar(spec, "bc") as proc:
        yield proc


@pytest.mark.parametrize(
    "fmt", sorted(MLFLOW_BODIES), ids=lambda f: f"MLflow's {f} format is read row by row."
)
def test_mlflow_formats_through_the_sidecar(
    fmt: str,
    mlflow_sidecar: SidecarProc,
    mlflow_server: MLflowServerProcess,
    trained_model: TrainedModel,
) -> None:
    cols = list(trained_model.feature_names)
    rows = [list(r) for r in trained_model.x_test[:3]]
    rows[0][0] = 1000.0
    m0 = mlflow_sidecar.scrape()
    body = json.dumps(MLFLOW_BODIES[fmt](cols, rows)).encode()
    c = http.client.HTTPConnection("127.0.0.1", mlflow_sidecar.port, timeout=20)
    c.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    got = json.loads(r.read())
    c.close()
    assert r.status == 200, got
    expected = trained_model.load_estimator().predict(np.asarray(rows)).tolist()
    assert got == {"predictions": expected}
    m1 = mlflow_sidecar.scrape()
    assert (
        m1.get("mlmon_feature_values_total", feature="mean_radius", state="out_of_range")
        - m0.get("mlmon_feature_values_total", feature="mean_radius", state="out_of_range")
        == 1
    )
    assert (
        m1.get("mlmon_feature_values_total", state="present")
        - m0.get("mlmon_feature_values_total", state="present")
        == 3 * 30 - 1
    )
    assert (
        m1.get("mlmon_requests_total", route="/invocations", outcome="ok")
        - m0.get("mlmon_requests_total", route="/invocations", outcome="ok")
        == 1
    )


def test_c13_mlflow_malformed_json_keeps_mlflows_own_status(
    mlflow_sidecar: SidecarProc, mlflow_server: MLflowServerProcess
) -> None:
    broken = b'{"dataframe_split": {"columns": ["f1", "f2"], "data": [[0.4, 1.7]]'

    def post(port: int) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        c.request("POST", "/invocations", body=broken, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = (r.status, r.read())
        c.close()
        return out

    m0 = mlflow_sidecar.scrape()
    through = post(mlflow_sidecar.port)
    direct_port = urllib.parse.urlsplit(mlflow_server.url).port
    assert direct_port is not None
    assert through == post(direct_port)
    assert 400 <= through[0] < 500  # MLflow's own client error, passed through; never a sidecar 5xx
    m1 = mlflow_sidecar.scrape()
    assert (
        m1.get("mlmon_payload_errors_total", reason="invalid_json")
        - m0.get("mlmon_payload_errors_total", reason="invalid_json")
        == 1
    )
    assert m1.get("mlmon_feature_values_total") == m0.get("mlmon_feature_values_total")


def test_a_real_prometheus_scrapes_the_sidecar_and_answers_red_queries(
    bc_sidecar: SidecarProc, trained_model: TrainedModel, tmp_path: Path
) -> None:
    prom = PrometheusProcess(
        require_tool("prometheus"),
        tmp_path,
        jobs={"model-sidecar": [f"127.0.0.1:{bc_sidecar.metrics_port}"]},
    )
    client = triton.InferenceServerClient(url=f"127.0.0.1:{bc_sidecar.port}")
    with prom:
        x = np.asarray(trained_model.x_test[:50], dtype=np.float64)

        def query(q: str) -> list[dict[str, Any]]:
            url = f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": q})
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.loads(r.read())["data"]["result"]

        def wait_total(n: int) -> None:
            deadline = time.monotonic() + 30
            while True:
                res = query('sum(mlmon_requests_total{route="/v2/models/{model}/infer"})')
                if res and float(res[0]["value"][1]) == n:
                    return
                assert time.monotonic() < deadline, res
                time.sleep(0.5)

        # One request first, so the series exist in Prometheus before the rest:
        # rate() then sees the increase (a series born at its final value has none).
        _infer(client, x[:1], "p0")
        wait_total(1)
        for i in range(1, 50):
            _infer(client, x[i : i + 1], f"p{i}")
        client.close()
        wait_total(50)
        time.sleep(2.5)  # at least two samples after the traffic, for rate()
        p99 = query(
            "histogram_quantile(0.99, sum by (le) "
            "(rate(mlmon_request_duration_seconds_bucket[1m])))"
        )
        assert p99 and 0 < float(p99[0]["value"][1]) < 5
        up = query('mlmon_upstream_up{model="bc"}')
        assert float(up[0]["value"][1]) == 1
        cov = query(
            'sum by (feature) (mlmon_feature_values_total{state="present"}) / '
            "sum by (feature) (mlmon_feature_values_total)"
        )
        assert len(cov) == 30 and all(float(s["value"][1]) == 1.0 for s in cov)
