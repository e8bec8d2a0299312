"""`monitor demo --fast` runs the whole loop, and what it reports is what happened."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.demo import histogram_quantile
from monitor.procs import pid_alive
from tests.support import require_tool

pytestmark = pytest.mark.timeout(240)

FAST_BUDGET_S = 90.0
"""The issue's bound on ``monitor demo --fast`` on this 2-core machine (measured: about
65 s alone, see docs/performance.md). The test allows twice that, as a guard against a
demo that waits for nothing, not as a performance claim: CI machines are shared."""


def _overlaps(ivs: list[list[float]], span: list[float]) -> bool:
    return any(s <= span[1] and e >= span[0] for s, e in ivs)


@pytest.mark.usefixtures("servers_venv_python")
def test_the_fast_demo_runs_the_whole_loop_and_leaves_no_process(tmp_path: Path) -> None:
    require_tool("prometheus")
    require_tool("prometheus-alertmanager")
    t0 = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--fast", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=200,
    )
    took = time.monotonic() - t0
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    doc = json.loads((tmp_path / "summary.json").read_text())
    phases, alerts, actions = doc["phases"], doc["alerts"], doc["actions"]
    assert list(phases) == ["healthy", "shift", "fault", "recovery"], out

    # Healthy: no drift alert (and no alert at all).
    assert [k for k, ivs in alerts.items() if _overlaps(ivs, phases["healthy"])] == [], out
    # Shift: the drift job finds dataset drift, and DatasetDriftDetected fires.
    shift = phases["shift"]
    assert any(r["detected"] for r in doc["drift_runs"] if shift[0] <= r["t"] <= shift[1]), out
    assert _overlaps(alerts["DatasetDriftDetected[ticket]"], shift), out
    drift, fault = doc["incidents"]
    assert 0 < drift["time_to_detect_seconds"] < shift[1] - shift[0], drift
    # Fault: the page fires, the mitigator shifts the traffic to the fallback ...
    page = alerts["ErrorBudgetBurn[page]"]
    assert page[0][0] >= phases["fault"][0], (page, phases)
    done = {(a["kind"], a["outcome"]) for a in actions if a["state"] == "done"}
    assert ("apply", "success") in done and ("revert", "success") in done, actions
    apply = next(a for a in actions if a["kind"] == "apply" and a["outcome"] == "success")
    assert apply["policy"] == "shift-to-fallback" and "fallback_weight" in apply["detail"]
    assert 0 < fault["time_to_detect_seconds"] <= fault["time_to_mitigate_seconds"] < 30, fault
    # ... and the error ratio recovers; the page resolves, then the route reverts.
    after = [t for t in doc["ticks"] if t["fallback"] == 1.0 and t["error_ratio"] is not None]
    assert after and min(t["error_ratio"] for t in after) < 0.01, doc["ticks"]
    assert fault["time_to_resolve_seconds"] is not None, fault
    assert fault["time_to_resolve_seconds"] <= fault["time_to_revert_seconds"], fault
    assert doc["ticks"][-1]["fallback"] == 0.0
    # The sidecar counted exactly the bad values the client sent.
    cov = doc["coverage"]
    assert cov["out_of_range_sent"] > 0 and cov["null_sent"] > 0, cov
    assert cov["out_of_range_counted"] == cov["out_of_range_sent"], cov
    assert cov["null_counted"] == cov["null_sent"], cov
    # Reports and generated files exist; every process is gone.
    for key in ("drift_report", "report", "dashboards"):
        assert Path(doc["files"][key]).is_file(), doc["files"]
    assert (tmp_path / "generated" / "alerts" / "alertmanager.yml").is_file()
    assert len(list((tmp_path / "generated" / "dashboards").glob("*.json"))) == 4
    assert len(doc["pids"]) == 8, doc["pids"]
    assert [n for n, p in doc["pids"].items() if pid_alive(p)] == []
    assert took < 2 * FAST_BUDGET_S, f"monitor demo --fast took {took:.0f} s"
    print(f"\nmonitor demo --fast: {took:.0f} s; " + "; ".join(
        f"{i['name']}: detect {i['time_to_detect_seconds']} s, "
        f"mitigate {i['time_to_mitigate_seconds']} s" for i in doc["incidents"]
    ))  # fmt: skip


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)], 0.1),
        (0.75, [(0.1, 50.0), (0.2, 100.0), (math.inf, 100.0)], 0.15),
        (0.5, [(1.0, 0.0), (2.5, 0.0), (5.0, 0.0), (10.0, 2.0), (math.inf, 100.0)], 10.0),
        (0.99, [(1.0, 0.0), (10.0, 2.0), (math.inf, 100.0)], 10.0),
    ],
    ids=[
        "The median on a bucket edge is that edge.",
        "A quantile inside a bucket is interpolated linearly.",
        "C20: a median in the +Inf bucket reads as the top finite bound, as in PromQL.",
        "C20: so does p99; the product must not present it as a real p99.",
    ],
)
def test_histogram_quantile_matches_promql(
    q: float, buckets: list[tuple[float, float]], expected: float
) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_without_observations_is_nan() -> None:
    assert math.isnan(histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]))


@pytest.mark.usefixtures("servers_venv_python")
def test_without_prometheus_and_alertmanager_the_demo_says_how_to_get_them_and_runs_the_rest(
    tmp_path: Path,
) -> None:
    """PATH without the Debian tools (every other program of /usr/bin stays reachable)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    hidden = {"prometheus", "prometheus-alertmanager", "alertmanager"}
    for exe in Path("/usr/bin").iterdir():
        if exe.name not in hidden:
            (bindir / exe.name).symlink_to(exe)
    out = tmp_path / "out"
    res = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--fast", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=200,
        env={**os.environ, "PATH": str(bindir)},
    )
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    assert "! prometheus not found: sudo apt-get install prometheus" in text
    assert "! alertmanager not found: sudo apt-get install prometheus-alertmanager" in text
    doc = json.loads((out / "summary.json").read_text())
    assert doc["missing"] == ["prometheus", "alertmanager"]
    assert list(doc["phases"]) == ["healthy", "shift", "fault", "recovery"]
    # The sidecar still measured the traffic, and the fault still failed requests.
    assert doc["coverage"]["out_of_range_counted"] == doc["coverage"]["out_of_range_sent"] > 0
    assert doc["counts"]["fault"]["error"] > 0
    assert doc["actions"] == [] and doc["alerts"] == {}
    assert Path(doc["files"]["drift_report"]).is_file()
    assert Path(doc["files"]["report"]).is_file()
    assert "Prometheus" not in doc["pids"] and len(doc["pids"]) == 6
    assert [n for n, p in doc["pids"].items() if pid_alive(p)] == []


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("earlier-run", "not empty (an earlier run's state would be read back)"),
        ("a-file", "File exists"),
        ("under-a-file", "Not a directory"),
    ],
    ids=[
        "An earlier run's directory is refused: its stores would falsify the new run.",
        "An existing file is refused with one line.",
        "A path under a file is refused with one line.",
    ],
)
def test_a_bad_out_directory_is_one_line_and_exit_1(
    tmp_path: Path, setup: str, expected: str
) -> None:
    target = {
        "earlier-run": tmp_path / "run1",
        "a-file": tmp_path / "f",
        "under-a-file": tmp_path / "f" / "sub",
    }[setup]
    (tmp_path / "f").write_text("x")
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "summary.json").write_text("{}")
    res = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--fast", "--out", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("demo failed: --out ") and expected in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stdout == ""
