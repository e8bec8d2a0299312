"""`monitor demo` runs end to end and the numbers it prints are the ones it caused."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.demo import histogram_quantile
from monitor.procs import pid_alive

pytestmark = pytest.mark.timeout(240)


@pytest.mark.usefixtures("servers_venv_python")
def test_the_demo_exits_0_prints_exact_counts_and_leaves_no_process(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--requests", "40", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    # Every 20th request (i % 20 == 13) drops a column and MLServer answers 500: 2 of 40.
    assert re.search(r"ok\s+200\s+38\b", out), out
    assert re.search(r"server_error\s+500\s+2\b", out), out
    assert re.search(r"mean_radius\s+coverage\s+[\d.]+%\s+\{.*'out_of_range': 2", out), out
    assert "captured rows (every inference request, answered or not): 40 " in out
    assert (tmp_path / "capture").is_dir()
    # the drift step compares the 40 captured rows with the 426 training rows, and
    # joins the delayed labels with the 38 answered predictions (the 2 500s have none)
    assert "[7/7] drift job" in out
    doc = json.loads((tmp_path / "drift" / "drift.json").read_text())
    assert doc["dataset"]["rows"] == {"reference": 426, "current": 40}
    assert doc["dataset"]["features_scored"] == 31  # 30 features and the prediction
    assert doc["quality"]["rows"] == 38
    assert "model quality on 38 labelled predictions: accuracy" in out
    assert (tmp_path / "drift" / "report.html").is_file()
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", out)]
    assert len(pids) == 2  # MLServer and the sidecar, as the demo printed them
    assert not [p for p in pids if pid_alive(p)]


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
