"""``monitor drift run`` / ``drift serve`` end to end: real capture files, a real
Pushgateway, the CLI as a process, and the baseline cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.capture import CaptureWriter
from monitor.drift.job import DriftCollector, RunOptions, run_once
from monitor.drift.reference import load_reference
from monitor.errors import DriftError
from monitor.payload import Predictions, Rows
from monitor.procs import ManagedProcess, free_ports
from monitor.spec import load_spec
from tests.support import Metrics, require_tool

MONITOR = [sys.executable, "-m", "monitor"]
N_FEATURES = 4


def _frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {
        f"x{i}": rng.normal(shift if i == 0 else 0.0, 1.0, n) for i in range(N_FEATURES)
    }
    data["color"] = rng.choice(["red", "green", "blue"], n, p=[0.5, 0.3, 0.2])
    return pd.DataFrame(data)


def _spec(tmp: Path, **drift: Any) -> Path:
    baseline = tmp / "baseline.parquet"
    ref = _frame(2000, seed=1)
    ref["prediction"] = (ref["x0"] > 0).astype(int).astype(str)
    ref.to_parquet(baseline)
    model = {
        "name": "m",
        "protocol": "v2",
        "upstream": "http://127.0.0.1:9",
        "features": [{"name": f"x{i}"} for i in range(N_FEATURES)]
        + [{"name": "color", "type": "categorical"}, {"name": "secret", "pii": True}],
        "outputs": [{"name": "predict", "type": "categorical", "classes": ["0", "1"]}],
        "capture": {"dir": str(tmp / "capture"), "rotate_seconds": 0.2},
        "baseline": str(baseline),
    }
    spec = {
        "apiVersion": "monitor/v1",
        "service": "t",
        "models": [model],
        "drift": {
            "schedule_seconds": 1,
            "window_seconds": 3600,
            "min_rows": 100,
            "cache_dir": str(tmp / "cache"),
            "out_dir": str(tmp / "reports"),
            **drift,
        },
    }
    path = tmp / "monitor.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _capture(spec_path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` through the real capture writer, 50 rows per request."""
    model = load_spec(spec_path).models[0]
    writer = CaptureWriter(model, registry=CollectorRegistry())
    writer.start()
    try:
        for start in range(0, len(frame), 50):
            part = frame.iloc[start : start + 50]
            cols = {c: part[c].tolist() for c in part.columns if c != "prediction"}
            preds = Predictions(
                outputs={"predict": (part["x0"] > 0).astype(int).astype(str).tolist()}
            )
            writer.submit(Rows(n=len(part), columns=cols), preds, request_id=f"r{start}")
        writer.flush()
    finally:
        writer.close()


def test_run_reads_the_capture_store_and_writes_drift_json_and_report(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    _capture(spec_path, _frame(600, seed=2, shift=1.0))
    out = tmp_path / "out"
    proc = subprocess.run(
        [*MONITOR, "drift", "run", "--config", str(spec_path), "--model", "m", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    # x0 was shifted by one std, and the prediction (x0 > 0) with it
    assert "model m: no drift: 2/6 features drifted" in proc.stdout
    doc = json.loads((out / "drift.json").read_text())
    assert doc["engine"] == "fast" and doc["schema_version"] == 1
    assert doc["dataset"]["rows"] == {"reference": 2000, "current": 600}
    assert doc["dataset"]["drifted_features"] == 2 and doc["dataset"]["dataset_drift"] is False
    assert doc["features"]["prediction"]["drifted"] is True
    x0 = doc["features"]["x0"]
    assert (x0["method"], x0["status"], x0["drifted"], x0["threshold"]) == (
        "wasserstein",
        "ok",
        True,
        0.1,
    )
    assert x0["rows"] == {"reference": 2000, "current": 600}
    assert doc["features"]["color"]["method"] == "jensenshannon"
    assert doc["features"]["prediction"]["type"] == "categorical"
    assert "secret" not in doc["features"]  # PII is never captured, so never compared
    assert doc["window"]["start"] is not None and doc["window"]["end"].endswith("Z")
    html = (out / "report.html").read_text()
    assert "monitor-drift-summary" in html  # our verdict table, skipped features included
    # evidently's own report follows
    assert "Data Drift Summary" in html and "Wasserstein distance (normed)" in html


def test_too_few_rows_is_no_verdict_and_exit_zero(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    _capture(spec_path, _frame(50, seed=2))
    res = run_once(load_spec(spec_path), "m", RunOptions(out=tmp_path / "o", html=False))
    assert res.dataset_drift is None
    assert {f.status for f in res.features.values()} == {"insufficient_data"}
    assert "fewer than drift.min_rows=100" in res.warnings[0]


def test_spec_overrides_reach_the_features(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path, method="psi", threshold=0.2)
    raw = yaml.safe_load(spec_path.read_text())
    raw["models"][0]["features"][1].update(drift_method="ks", drift_threshold=0.01)
    spec_path.write_text(yaml.safe_dump(raw))
    current = tmp_path / "current.csv"
    _frame(300, seed=3).to_csv(current, index=False)
    res = run_once(load_spec(spec_path), "m", RunOptions(current=current, html=False))
    assert (res.features["x0"].method, res.features["x0"].threshold) == ("psi", 0.2)
    assert (res.features["x1"].method, res.features["x1"].threshold) == ("ks", 0.01)
    assert res.features["x1"].method_source == "override"


def test_baseline_statistics_are_cached_by_content(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    baseline = tmp_path / "baseline.parquet"
    feats = {"x0": "numerical", "color": "categorical"}
    first = load_reference(baseline, feats, cache_dir=tmp_path / "cache")
    second = load_reference(baseline, feats, cache_dir=tmp_path / "cache")
    assert (first.cache_hit, second.cache_hit) == (False, True)
    assert np.array_equal(first.samples["x0"][0].values, second.samples["x0"][0].values)  # type: ignore[union-attr]
    assert first.samples["color"][0].counts == second.samples["color"][0].counts  # type: ignore[union-attr]
    _frame(2000, seed=9).to_parquet(baseline)  # new content, new key
    assert load_reference(baseline, feats, cache_dir=tmp_path / "cache").cache_hit is False
    # a corrupt entry is rebuilt, not fatal
    for entry in (tmp_path / "cache").iterdir():
        (entry / "meta.json").write_text("{not json")
    assert load_reference(baseline, feats, cache_dir=tmp_path / "cache").cache_hit is False
    del spec_path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "no model 'nope' in the spec; models: m"),
        (
            ["--model", "m", "--reference", "/nonexistent.parquet"],
            "baseline /nonexistent.parquet: no such file",
        ),
        (["--model", "m", "--current", "/nonexistent.csv"], "/nonexistent.csv: no such file"),
        (["--model", "m", "--since", "soon"], "expected a duration like 90s"),
    ],
    ids=[
        "an unknown model names the known ones",
        "a missing baseline is named",
        "a missing current file is named",
        "a bad duration is a usage error",
    ],
)
def test_bad_input_is_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    spec_path = _spec(tmp_path)
    proc = subprocess.run(
        [*MONITOR, "drift", "run", "--config", str(spec_path), *args, "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode in (1, 2)
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_current_file_that_is_not_data_is_an_error(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    bad = tmp_path / "current.parquet"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(DriftError, match="cannot read as Parquet or CSV"):
        run_once(load_spec(spec_path), "m", RunOptions(current=bad, html=False))


def test_push_to_a_real_pushgateway(tmp_path: Path) -> None:
    binary = require_tool("prometheus-pushgateway")
    (port,) = free_ports(1)
    spec_path = _spec(tmp_path)
    current = tmp_path / "current.parquet"
    _frame(500, seed=4, shift=1.0).to_parquet(current)
    gw = ManagedProcess(
        [binary, f"--web.listen-address=127.0.0.1:{port}"],
        ready_url=f"http://127.0.0.1:{port}/-/ready",
        log_path=tmp_path / "pushgateway.log",
        name="pushgateway",
        ready_timeout_s=30,
    )
    with gw:
        proc = subprocess.run(
            [
                *MONITOR,
                "drift",
                "run",
                "--config",
                str(spec_path),
                "--model",
                "m",
                "--current",
                str(current),
                "--no-html",
                "--out",
                str(tmp_path / "o"),
                "--pushgateway",
                f"http://127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            m = Metrics(resp.read().decode())
    labels = {"job": "monitor_drift", "model": "m"}
    assert m.get("mlmon_drift_detected", feature="x0", **labels) == 1
    assert m.get("mlmon_drift_detected", feature="x1", **labels) == 0
    assert m.get("mlmon_drift_rows", dataset="current", **labels) == 500
    assert m.get("mlmon_drift_runs_total", result="success", **labels) == 1
    assert m.get("mlmon_dataset_drift_share", **labels) == pytest.approx(1 / 5)
    assert m.get("mlmon_drift_last_success_timestamp_seconds", **labels) == pytest.approx(
        time.time(), abs=120
    )


def test_serve_exports_and_keeps_last_good_values_when_a_run_fails(tmp_path: Path) -> None:
    spec_path = _spec(tmp_path)
    _capture(spec_path, _frame(400, seed=5, shift=1.0))
    (port,) = free_ports(1)
    proc = ManagedProcess(
        [
            *MONITOR,
            "drift",
            "serve",
            "--config",
            str(spec_path),
            "--metrics-listen",
            f"127.0.0.1:{port}",
            "--no-html",
        ],
        ready_url=f"http://127.0.0.1:{port}/metrics",
        log_path=tmp_path / "serve.log",
        name="drift-serve",
        ready_timeout_s=60,
    )

    def scrape() -> Metrics:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return Metrics(resp.read().decode())

    def wait_for(pred: Any) -> Metrics:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = scrape()
            if pred(m):
                return m
            time.sleep(0.3)
        raise AssertionError(proc.log_tail())

    with proc:
        m = wait_for(lambda m: m.get("mlmon_drift_runs_total", model="m", result="success") >= 1)
        assert m.get("mlmon_drift_detected", model="m", feature="x0") == 1
        assert m.get("mlmon_drift_score", model="m", feature="x0", method="wasserstein") > 0.5
        assert m.get("mlmon_drift_reference_info", model="m") == 1
        assert (tmp_path / "reports" / "m" / "drift.json").is_file()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=5) as resp:
            assert resp.status == 200  # a liveness probe for the drift job's pod
        second = subprocess.run(
            [*MONITOR, "drift", "serve", "--config", str(spec_path),
             "--metrics-listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: --metrics-listen 127.0.0.1:{port}: Address already in use"
        )
        (tmp_path / "baseline.parquet").unlink()  # the next runs fail
        m = wait_for(lambda m: m.get("mlmon_drift_runs_total", model="m", result="failure") >= 1)
        assert m.get("mlmon_drift_detected", model="m", feature="x0") == 1  # last good value kept
        assert proc.running
    assert "drift run failed: baseline" in (tmp_path / "serve.log").read_text()


def test_collector_exports_nothing_for_a_model_that_never_succeeded() -> None:
    registry = CollectorRegistry()
    collector = DriftCollector(registry)
    collector.record_failure("m")
    assert (
        registry.get_sample_value("mlmon_drift_runs_total", {"model": "m", "result": "failure"})
        == 1
    )
    assert (
        registry.get_sample_value("mlmon_drift_runs_total", {"model": "m", "result": "success"})
        == 0
    )
    assert registry.get_sample_value("mlmon_dataset_drift_share", {"model": "m"}) is None


def test_drift_md_lists_exactly_the_families_the_collector_exports() -> None:
    from monitor.drift.core import DriftResult, FeatureDrift

    doc = (Path(__file__).parent.parent / "docs" / "drift.md").read_text(encoding="utf-8")
    table = doc.split("<!-- drift-metrics-table -->", 1)[1].split("\n\n", 1)[0]
    documented = {
        row.split("|")[1].strip().strip("`"): row.split("|")[2].strip()
        for row in table.splitlines()
        if row.startswith("| `")
    }
    collector = DriftCollector()
    res = DriftResult(
        features={
            "f": FeatureDrift(
                "f", "numerical", "ok", method="ks", score=0.5, threshold=0.05, drifted=False
            )
        },
        drift_share=0.5,
        engine="fast",
        rows_reference=1,
        rows_current=1,
        quality={"rows": 1, "metrics": {"accuracy": 1.0}},
    )
    collector.record("m", res, reference_sha256="ab")
    exported = {}
    for fam in collector.collect():
        exported[fam.name + ("_total" if fam.type == "counter" else "")] = fam.type
    assert documented == exported


def test_drift_md_promql_parses(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    doc = (Path(__file__).parent.parent / "docs" / "drift.md").read_text(encoding="utf-8")
    block = doc.split("```promql\n", 1)[1].split("```", 1)[0]
    exprs = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(exprs) == 3
    rules = {
        "groups": [
            {
                "name": "doc",
                "rules": [{"record": f"doc:q{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "doc.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
