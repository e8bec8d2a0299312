"""``monitor demo``: the sidecar in front of a real model server, with real traffic.

Steps (each printed as it happens):

1. train a scikit-learn classifier on the breast-cancer dataset bundled with
   scikit-learn (no download);
2. start MLServer (Open Inference Protocol) serving it, from ``.venv/servers``;
3. start ``monitor sidecar`` in front of it, configured by ``deploy/monitor.yaml``
   (upstream and capture directory rewritten for this run);
4. send held-out rows through the sidecar with ``tritonclient`` (JSON tensors),
   with some rows made bad on purpose: out of range, null, wrong width;
5. scrape the sidecar's ``/metrics`` and print what it measured: RED, latency
   percentiles, feature coverage, predictions, capture;
6. stop every process it started (by PID);
7. run the drift job on what the sidecar captured: the training set (with the
   model's predictions) is the baseline, delayed labels arrive for the held-out
   rows; print the drift verdicts and the model quality, write ``drift/drift.json``
   and ``drift/report.html``, and exit 0.

Everything listens on 127.0.0.1 on free ports.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monitor import conventions as c
from monitor.errors import MonitorError
from monitor.modelserver import MLServerProcess, repo_root, train_breast_cancer
from monitor.procs import ManagedProcess, free_ports

__all__ = ["DemoReport", "histogram_quantile", "run_demo", "v2_input"]


@dataclass
class DemoReport:
    """What the demo measured (returned for tests; printed for people)."""

    sent: int
    answered_ok: int
    answered_error: int
    samples: list[tuple[str, dict[str, str], float]]
    capture_rows: int
    capture_dir: Path
    drift: dict[str, Any] | None = None
    """drift.json of the drift step."""


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Quantile ``q`` (0-1) from cumulative ``(upper bound, count)`` buckets.

    Same linear interpolation as PromQL's ``histogram_quantile``: returns the
    top finite bound when the rank falls in the ``+Inf`` bucket (case C20 is why
    the buckets must reach well above the latencies), NaN with no observations.
    """
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


_NULLABLE: Any = None


def v2_input(row: Any, name: str = "input-0") -> Any:
    """A ``tritonclient.http.InferInput`` (FP64, JSON) for a 2-D float array, NaN sent as null.

    tritonclient writes NaN as the bare token ``NaN``, which strict JSON parsers
    (MLServer's among them) reject with 422; JSON clients send ``null`` for a
    missing value, which MLServer reads as NaN.
    """
    global _NULLABLE
    if _NULLABLE is None:
        import tritonclient.http as triton

        class NullableInput(triton.InferInput):
            def _get_tensor(self) -> dict[str, Any]:
                tensor = super()._get_tensor()
                tensor["data"] = [
                    None if isinstance(v, float) and math.isnan(v) else v for v in tensor["data"]
                ]
                return tensor

        _NULLABLE = NullableInput
    inp = _NULLABLE(name, list(row.shape), "FP64")
    inp.set_data_from_numpy(row, binary_data=False)
    return inp


def _say(msg: str) -> None:
    print(msg, flush=True)


def _scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return [
        (s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples
    ]


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(
        v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items())
    )


def run_demo(
    requests: int = 300, out_dir: Path | None = None, spec_path: Path | None = None
) -> DemoReport:
    """Run the demo end to end; returns what it measured.

    Args:
        requests: inference requests to send (each one row).
        out_dir: where the model, logs and capture go (default: a temp dir, kept).
        spec_path: the spec to start from (default ``deploy/monitor.yaml``).

    Raises:
        MonitorError: a server could not start (the message says how to fix it,
            e.g. ``make servers``).
    """
    import numpy as np
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="monitor-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    spec_path = spec_path or repo_root() / "deploy" / "monitor.yaml"
    t0 = time.monotonic()

    _say("[1/7] training the breast-cancer classifier (scikit-learn, bundled data set)")
    model = train_breast_cancer(out / "model", version="1")
    _say(f"      held-out accuracy {model.accuracy:.3f}; model at {model.model_path}")

    _say("[2/7] starting MLServer (Open Inference Protocol) on 127.0.0.1")
    with MLServerProcess(model.model_dir) as server:
        _say(f"      MLServer ready at {server.url} in {server.startup_s:.1f} s (pid {server.pid})")

        spec = yaml.safe_load(spec_path.read_text())
        m = spec["models"][0]
        m["upstream"] = server.url
        capture_dir = out / "capture"
        if capture_dir.exists():
            shutil.rmtree(capture_dir)
        m["capture"] = {**m.get("capture", {}), "dir": str(capture_dir), "rotate_seconds": 1}
        run_spec = out / "monitor.yaml"
        run_spec.write_text(yaml.safe_dump(spec, sort_keys=False))
        port, mport = free_ports(2)
        _say(f"[3/7] starting the sidecar: 127.0.0.1:{port} -> {server.url}, metrics on :{mport}")
        sidecar = ManagedProcess(
            [
                sys.executable,
                "-m",
                "monitor",
                "sidecar",
                "--config",
                str(run_spec),
                "--model",
                m["name"],
                "--listen",
                f"127.0.0.1:{port}",
                "--metrics-listen",
                f"127.0.0.1:{mport}",
            ],
            ready_url=f"http://127.0.0.1:{mport}/-/ready",
            log_path=out / "sidecar.log",
            name="sidecar",
            ready_timeout_s=30,
        )
        with sidecar:
            _say(f"      sidecar ready in {sidecar.startup_s:.1f} s (pid {sidecar.pid})")
            _say(f"[4/7] sending {requests} requests with tritonclient through the sidecar")
            _say(
                "      1 row in 20 on purpose has mean_radius x100 (out of range), 1 in 20 a null"
                " value,\n      and 1 in 20 only 29 columns, which MLServer answers with a 500"
            )
            client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
            rng = np.random.default_rng(0)
            x = np.asarray(model.x_test, dtype=np.float64)
            ok = err = 0
            for i in range(requests):
                row = x[i % len(x)][None, :].copy()
                kind = i % 20
                if kind == 7:
                    row[0, 0] *= 100  # a unit mix-up: mean_radius far out of range
                elif kind == 13:
                    row = row[:, :29]  # a client that drops a column: the server answers 500
                elif kind == 3:
                    row[0, int(rng.integers(0, 30))] = math.nan  # a missing value
                try:
                    client.infer("bc", [v2_input(row)], request_id=f"demo-{i}")
                    ok += 1
                except InferenceServerException:
                    err += 1
                if (i + 1) % 100 == 0:
                    _say(f"      {i + 1}/{requests} sent ({ok} ok, {err} errors)")
            client.close()

            _say("[5/7] what the sidecar measured (scraped from /metrics)")
            metrics_url = f"http://127.0.0.1:{mport}/metrics"
            deadline = time.monotonic() + 10
            samples = _scrape(metrics_url)
            while _total(samples, c.CAPTURE_ROWS_TOTAL) < ok + err and time.monotonic() < deadline:
                time.sleep(0.25)
                samples = _scrape(metrics_url)
            _print_report(samples)

        _say("[6/7] stopping the sidecar and MLServer")
    drift = _drift_step(model, run_spec, out, requests)
    report = DemoReport(
        sent=requests,
        answered_ok=ok,
        answered_error=err,
        samples=samples,
        capture_rows=int(_total(samples, c.CAPTURE_ROWS_TOTAL)),
        capture_dir=capture_dir,
        drift=drift,
    )
    _say(f"done in {time.monotonic() - t0:.1f} s; files in {out} (capture: {capture_dir})")
    return report


def _drift_step(model: Any, run_spec: Path, out: Path, requests: int) -> dict[str, Any]:
    """Run the drift job on the capture; print and return drift.json."""
    import joblib
    import pandas as pd

    from monitor.drift.job import RunOptions, run_once
    from monitor.spec import load_spec

    _say("[7/7] drift job: captured traffic vs the training set (monitor drift run)")
    baseline = model.train_frame.copy()
    pipeline = joblib.load(model.model_path)
    baseline["prediction"] = pipeline.predict(model.train_frame.to_numpy()).astype(int)
    baseline_path = out / "baseline.parquet"
    baseline.to_parquet(baseline_path, index=False)
    # ground truth arrives later for the held-out rows the demo sent
    labels = pd.DataFrame(
        {
            "request_id": [f"demo-{i}" for i in range(requests)],
            "label": [model.y_test[i % len(model.y_test)] for i in range(requests)],
            "timestamp": [time.time()] * requests,
        }
    )
    labels_path = out / "labels.csv"
    labels.to_csv(labels_path, index=False)
    spec = yaml.safe_load(run_spec.read_text())
    m = spec["models"][0]
    m["baseline"] = str(baseline_path)
    m["labels"] = {"path": str(labels_path), "task": "classification"}
    spec.setdefault("drift", {}).update(
        min_rows=min(30, requests), cache_dir=str(out / "drift-cache")
    )
    run_spec.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = run_once(load_spec(run_spec), m["name"], RunOptions(out=out / "drift"))
    doc = result.to_dict()
    d = doc["dataset"]
    verdict = {True: "DRIFT", False: "no drift", None: "no verdict"}[d["dataset_drift"]]
    _say(
        f"      {verdict}: {d['drifted_features']} of {d['features_scored']} features drifted "
        f"({d['rows']['current']} captured rows vs {d['rows']['reference']} training rows, "
        f"{result.duration_seconds:.2f} s)"
    )
    for name, f in doc["features"].items():
        if f["drifted"]:
            score = f"score {f['score']:.3g} (threshold {f['threshold']})"
            _say(f"        {name:<26} {f['method']:<13} {score}")
    q = doc.get("quality") or {}
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(q.get("metrics", {}).items()))
    _say(f"      model quality on {q.get('rows', 0)} labelled predictions: {metrics or 'none'}")
    _say(f"      wrote {out / 'drift' / 'drift.json'} and report.html")
    return doc


def _print_report(samples: list[tuple[str, dict[str, str], float]]) -> None:
    by_outcome: dict[tuple[str, str], float] = {}
    for n, lab, v in samples:
        if n == c.REQUESTS_TOTAL:
            key = (lab["outcome"], lab["code"])
            by_outcome[key] = by_outcome.get(key, 0) + v
    _say("      requests by outcome and code (the 500s are the 29-column rows):")
    for (outcome, code), v in sorted(by_outcome.items()):
        _say(f"        {outcome:<14} {code:>4}  {int(v)}")
    buckets: dict[float, float] = {}
    for n, lab, v in samples:
        if n == c.REQUEST_DURATION_SECONDS + "_bucket" and lab.get("outcome") == c.OUTCOME_OK:
            le = float(lab["le"])
            buckets[le] = buckets.get(le, 0) + v
    b = sorted(buckets.items())
    p = {q: histogram_quantile(q, b) * 1000 for q in (0.5, 0.9, 0.99)}
    _say(
        f"      latency of ok requests (from the histogram): "
        f"p50 {p[0.5]:.1f} ms, p90 {p[0.9]:.1f} ms, p99 {p[0.99]:.1f} ms"
    )
    _say("      feature coverage (features with anything but 'present'):")
    cov: dict[str, dict[str, float]] = {}
    for n, lab, v in samples:
        if n == c.FEATURE_VALUES_TOTAL:
            cov.setdefault(lab["feature"], {})[lab["state"]] = v
    shown = 0
    for feature, states in cov.items():
        total = sum(states.values())
        bad = {s: int(v) for s, v in states.items() if s != c.STATE_PRESENT and v}
        if bad and total:
            shown += 1
            _say(
                f"        {feature:<26} coverage "
                f"{states.get(c.STATE_PRESENT, 0) / total:6.1%}  {bad}"
            )
    if not shown:
        _say("        (all present)")
    preds = {lab["class"]: int(v) for n, lab, v in samples if n == c.PREDICTIONS_TOTAL}
    _say(f"      predictions by class: {preds}")
    _say(
        f"      captured rows (every inference request, answered or not): "
        f"{int(_total(samples, c.CAPTURE_ROWS_TOTAL))} "
        f"in {int(_total(samples, c.CAPTURE_FILES_TOTAL))} Parquet file(s); "
        f"dropped: {int(_total(samples, c.CAPTURE_DROPPED_ROWS_TOTAL))}"
    )
    _say(
        f"      upstream up: {int(_total(samples, c.UPSTREAM_UP))}; model version: "
        f"{[lab['version'] for n, lab, _ in samples if n == c.MODEL_INFO]}"
    )


def main(requests: int, out_dir: Path | None) -> int:
    """CLI entry: run the demo, return the exit code."""
    try:
        run_demo(requests=requests, out_dir=out_dir)
    except MonitorError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0
