"""Soak: minutes of mixed traffic through the sidecar; its memory stays flat.

Slow (5 minutes by default, ``SOAK_SECONDS`` to change): excluded from
``make test``, run with ``make soak``. Traffic goes to 127.0.0.1 only, paced
and bounded in time.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support import FaultServer, sidecar, write_spec

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(int(SOAK_SECONDS) + 120)]


@pytest.fixture()
def upstream(tmp_path: Path) -> Iterator[FaultServer]:
    with FaultServer(tmp_path) as srv:
        yield srv


def test_sidecar_memory_is_flat_under_minutes_of_mixed_traffic(
    upstream: FaultServer, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path / "m.yaml",
        upstream.url,
        capture={"dir": str(tmp_path / "capture"), "rotate_seconds": 5, "max_bytes": 20_000_000},
    )
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [4, 2],
                    "datatype": "FP64",
                    "data": [[1, 2], [11, None], [3, "a"], [4, 5]],
                }
            ]
        }
    ).encode()
    sent = [0]
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def client(port: int, kind: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            while not stop.is_set():
                t = time.monotonic()
                if kind == 0:
                    c.request("POST", "/v2/models/m/infer", body=body)
                elif kind == 1:
                    c.request("GET", "/sse?events=5&interval=0.01")
                else:
                    c.request("POST", "/v2/models/m/infer", body=b'{"broken": ')
                c.getresponse().read()
                with lock:
                    sent[0] += 1
                time.sleep(
                    max(0.0, 0.005 - (time.monotonic() - t))
                )  # pace: at most ~200 req/s each
        except BaseException as exc:
            errors.append(exc)
        finally:
            c.close()

    with sidecar(spec) as proc:
        ps = psutil.Process(proc.pid)
        threads = [threading.Thread(target=client, args=(proc.port, k)) for k in (0, 0, 1, 2)]
        for t in threads:
            t.start()
        rss: list[tuple[float, int]] = []
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < SOAK_SECONDS:
                time.sleep(min(5.0, SOAK_SECONDS / 20))
                rss.append((time.monotonic() - t0, ps.memory_info().rss))
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not errors, errors[:3]
        m = proc.scrape()
        assert m.get("mlmon_requests_total") == sent[0]
        assert m.get("mlmon_inflight_requests") == 0
    # Flat: after the first fifth (imports, pools, caches warmed), RSS grows < 10 MiB.
    warm = [r for t, r in rss if t >= SOAK_SECONDS / 5]
    growth = (max(warm) - warm[0]) / 2**20
    print(
        f"soak: {sent[0]} requests in {SOAK_SECONDS:.0f} s; RSS {warm[0] / 2**20:.1f} -> "
        f"max {max(warm) / 2**20:.1f} MiB (+{growth:.1f} MiB)"
    )
    assert growth < 10, [(round(t), round(r / 2**20, 1)) for t, r in rss]
    assert max(r for _, r in rss) < 150 * 2**20
