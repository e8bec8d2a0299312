"""The sidecar as a transparent proxy, against a real scripted upstream on 127.0.0.1.

Covers transparency, the fault cases of the issue (upstream down, slow, 5xx,
malformed JSON, 120 MB body, chunked request, SSE stream, client disconnect)
and cases C11, C13, C14, C16, C17 of shared/cases/real-world-cases.md.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import random
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from monitor.procs import free_ports, pid_alive
from tests.support import FaultServer, SidecarProc, require_tool, sidecar, write_spec

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    with FaultServer(tmp_path_factory.mktemp("fault")) as srv:
        yield srv


@pytest.fixture(scope="module")
def side(upstream: FaultServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProc]:
    d = tmp_path_factory.mktemp("side")
    with sidecar(write_spec(d / "m.yaml", upstream.url), log_dir=d) as proc:
        yield proc


_OPEN: list[http.client.HTTPConnection | socket.socket] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def conn(proc: SidecarProc, timeout: float = 10) -> http.client.HTTPConnection:
    c = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=timeout)
    _OPEN.append(c)
    return c


def raw(proc: SidecarProc, timeout: float = 10) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proc.port), timeout=timeout)
    _OPEN.append(s)
    return s


def v2_body(rows: list[list[object]]) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": rows}
            ]
        }
    ).encode()


def test_method_path_query_headers_and_body_pass_through_unchanged(side: SidecarProc) -> None:
    body = os.urandom(4096)
    c = conn(side)
    c.putrequest("PUT", "/echo/a%20b?x=1&y=%2F", skip_accept_encoding=True)
    c.putheader("X-Custom", "One")
    c.putheader("x-custom", "two")  # repeated, different case: both kept, in order
    c.putheader("Content-Length", str(len(body)))
    c.putheader("Connection", "keep-alive, X-Hop")
    c.putheader("X-Hop", "dropped: named in Connection")
    c.endheaders(body)
    r = c.getresponse()
    raw = r.read()
    seen = json.loads(raw)
    assert r.status == 200
    assert r.getheader("X-Upstream") == "fault-server" and r.getheader("Set-Cookie") == "a=1"
    assert seen["method"] == "PUT" and seen["path_qs"] == "/echo/a%20b?x=1&y=%2F"
    names = [h[0] for h in seen["headers"]]
    assert [h for h in seen["headers"] if h[0].lower() == "x-custom"] == [
        ["X-Custom", "One"],
        ["x-custom", "two"],
    ]
    assert "X-Hop" not in names and "Connection" not in names
    assert seen["body_len"] == len(body) and seen["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert r.getheader("Content-Length") == str(len(raw))


def test_a_chunked_request_reaches_the_upstream_byte_for_byte(side: SidecarProc) -> None:
    parts = [os.urandom(n) for n in (1, 1000, 65536, 7)]
    c = conn(side)
    c.request(
        "POST",
        "/echo",
        body=iter(parts),
        encode_chunked=True,
        headers={"Transfer-Encoding": "chunked"},
    )
    seen = json.loads(c.getresponse().read())
    whole = b"".join(parts)
    assert seen["body_len"] == len(whole)
    assert seen["body_sha256"] == hashlib.sha256(whole).hexdigest()


def test_a_compressed_inference_body_is_forwarded_as_it_came_and_not_inspected(
    side: SidecarProc,
) -> None:
    """Case (break-it trial): ``Transfer-Encoding: gzip, chunked`` reached the upstream
    as plain ``chunked``, the gzip coding dropped; and a ``Content-Encoding: gzip``
    body (Triton accepts them) would be parsed as JSON and counted a payload error."""
    before = side.scrape()
    skipped = before.get(
        "mlmon_payload_inspection_skipped_total", model="m", reason="content_encoding"
    )
    errors = before.get("mlmon_payload_errors_total")
    body = gzip.compress(v2_body([[7.0, 1.0]]))
    c = conn(side)
    c.request("POST", "/v2/models/m/infer", body=body,
              headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    r = c.getresponse()
    assert r.status == 200, r.read()  # aiohttp upstream decompresses it
    assert json.loads(r.read())["outputs"][0]["data"] == [1]

    s = raw(side)
    s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
              + b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body))  # fmt: skip
    reply = b""
    while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
        chunk = s.recv(65536)
        assert chunk, reply
        reply += chunk
    seen = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert ["Transfer-Encoding", "gzip, chunked"] in seen["headers"]
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()

    after = side.scrape()
    assert (
        after.get("mlmon_payload_inspection_skipped_total", model="m", reason="content_encoding")
        == skipped + 1
    )
    assert after.get("mlmon_payload_errors_total") == errors


def test_a_chunked_response_is_streamed_back_whole(side: SidecarProc) -> None:
    c = conn(side)
    c.request("GET", "/chunked?parts=50")
    r = c.getresponse()
    assert r.getheader("Transfer-Encoding") == "chunked"
    assert r.read() == b"".join(f"part-{i};".encode() for i in range(50))


def test_the_w3c_traceparent_goes_upstream_with_the_same_trace_id(side: SidecarProc) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    c = conn(side)
    c.request("GET", "/echo", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    headers = dict((k.lower(), v) for k, v in json.loads(c.getresponse().read())["headers"])
    version, tid, span_id, flags = headers["traceparent"].split("-")
    assert (version, tid) == ("00", trace_id)
    assert span_id != "00f067aa0ba902b7"  # the sidecar's own span is the parent now
    assert int(flags, 16) & 1 == 1


def test_5xx_passes_through_untouched_and_counts_as_server_error(side: SidecarProc) -> None:
    before = side.scrape().get("mlmon_requests_total", code="503", outcome="server_error")
    c = conn(side)
    c.request("POST", "/status/503", body=b"{}")
    r = c.getresponse()
    assert (r.status, json.loads(r.read())) == (503, {"error": "status 503"})
    assert (
        side.scrape().get("mlmon_requests_total", code="503", outcome="server_error") == before + 1
    )


def test_c13_malformed_json_is_forwarded_and_counted_not_answered_500(side: SidecarProc) -> None:
    m0 = side.scrape()
    broken = b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [[0.4, 1.7]]'
    c = conn(side)
    c.request(
        "POST", "/v2/models/m/infer", body=broken, headers={"Content-Type": "application/json"}
    )
    r = c.getresponse()
    body = r.read()
    # The upstream's own answer, not a sidecar-made 5xx.
    assert r.status == 400 and b"bad request" in body and r.getheader("X-Monitor-Sidecar") is None
    m1 = side.scrape()
    assert (
        m1.get("mlmon_payload_errors_total", reason="invalid_json")
        == m0.get("mlmon_payload_errors_total", reason="invalid_json") + 1
    )
    assert m1.get("mlmon_feature_values_total") == m0.get("mlmon_feature_values_total")
    assert (
        m1.get("mlmon_requests_total", code="400", outcome="client_error")
        == m0.get("mlmon_requests_total", code="400", outcome="client_error") + 1
    )


def test_c17_random_paths_never_become_label_values(side: SidecarProc) -> None:
    rng = random.Random(17)
    errors: list[BaseException] = []

    def worker(paths: list[str]) -> None:
        try:
            c = http.client.HTTPConnection("127.0.0.1", side.port, timeout=10)
            for p in paths:
                c.request("GET" if p.endswith(".php") else "POST", p, body=b"{}")
                c.getresponse().read()
            c.close()
        except BaseException as exc:
            errors.append(exc)

    paths = [
        f"/files/{rng.getrandbits(64):x}.php"
        if i % 2
        else f"/v2/models/{rng.getrandbits(64):x}/infer"
        for i in range(10_000)
    ] + ["/v2/models/m/infer"] * 100
    rng.shuffle(paths)
    threads = [threading.Thread(target=worker, args=(paths[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=100)
    assert not errors
    series = side.scrape().series("mlmon_requests_total")
    assert {s["route"] for s in series} <= {
        "unmatched",
        "/v2/models/{model}/infer",
        "/v2/health/ready",
        "/v2/models/{model}",
    }
    assert {s["model"] for s in series} <= {"m", "other"}
    # Bounded by routes x codes x known models, whatever the 10,000 paths were.
    assert len(series) <= 4 * 6 * 2


def test_upstream_down_gives_502_json_and_not_ready(tmp_path: Path) -> None:
    (dead,) = free_ports(1)
    with sidecar(write_spec(tmp_path / "m.yaml", f"http://127.0.0.1:{dead}")) as proc:
        c = conn(proc)
        c.request("POST", "/v2/models/m/infer", body=v2_body([[1, 2]]))
        r = c.getresponse()
        body = json.loads(r.read())
        assert (
            r.status == 502
            and body["source"] == "monitor-sidecar"
            and "unreachable" in body["error"]
        )
        assert urllib_status(f"http://127.0.0.1:{proc.metrics_port}/-/ready") == 503
        m = proc.scrape()
        assert m.get("mlmon_requests_total", code="502", outcome="unreachable") == 1
        assert m.get("mlmon_upstream_up") == 0
        # Inputs were still seen: coverage counts them even though the upstream is down.
        assert m.get("mlmon_feature_values_total", feature="f0", state="present") == 1


def urllib_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_sigterm_while_starting_up_is_a_graceful_shutdown(tmp_path: Path) -> None:
    """Case: CI lost a sidecar's spans. It was stopped as soon as /-/healthy answered,
    while start() still awaited the first readiness probe and before the signal
    handlers were installed, so the SIGTERM killed it unflushed (exit -15)."""
    with FaultServer(tmp_path) as up:
        spec = write_spec(
            tmp_path / "m.yaml", up.url, health_path="/slow?delay=2", probe_interval_seconds=5
        )
        proc = SidecarProc(spec, "m", tmp_path)
        with proc:  # ready: /-/healthy answers; the first probe waits 2 s for /slow
            pass
    assert proc.returncode == 0, proc.log_tail()
    assert "shutting down" in proc.log_path.read_text()


def test_a_slow_upstream_gives_504_after_the_read_timeout(side: SidecarProc) -> None:
    c = conn(side)
    t0 = time.monotonic()
    c.request("GET", "/slow?delay=5")
    r = c.getresponse()
    body = json.loads(r.read())
    elapsed = time.monotonic() - t0
    assert r.status == 504 and "did not answer within 2 s" in body["error"]
    assert 1.9 <= elapsed < 4
    assert side.scrape().get("mlmon_requests_total", code="504", outcome="timeout") >= 1


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_c14_a_120_mb_body_streams_through_with_bounded_memory(side: SidecarProc) -> None:
    size = 120_000_000
    block = b'{"instances": [{"b64": "' + b"A" * (1 << 20)
    peak = [_rss(side.pid)]
    base = peak[0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss(side.pid))
            time.sleep(0.02)

    def body() -> Iterator[bytes]:
        sent = 0
        while sent < size:
            chunk = block[: min(len(block), size - sent)]
            sent += len(chunk)
            yield chunk

    m0 = side.scrape()
    t = threading.Thread(target=sample)
    t.start()
    try:
        c = conn(side, timeout=60)
        c.request("POST", "/echo/upload", body=body(), headers={"Content-Length": str(size)})
        seen = json.loads(c.getresponse().read())
    finally:
        done.set()
        t.join()
    assert seen["body_len"] == size
    assert peak[0] - base < 40 * 2**20, f"sidecar RSS grew by {(peak[0] - base) / 2**20:.0f} MiB"
    m1 = side.scrape()
    assert m1.get("mlmon_request_size_bytes_sum") - m0.get("mlmon_request_size_bytes_sum") == size


def test_c14_an_inference_body_over_the_inspection_cap_is_forwarded_uninspected(
    side: SidecarProc,
) -> None:
    m0 = side.scrape()
    big = b'{"instances": [{"b64": "' + b"A" * (9 << 20) + b'"}]}'
    c = conn(side, timeout=30)
    c.request("POST", "/v2/models/m/infer", body=big)
    r = c.getresponse()
    r.read()
    assert r.status == 400  # the upstream's verdict, passed through
    m1 = side.scrape()
    assert (
        m1.get("mlmon_payload_inspection_skipped_total", reason="too_large")
        == m0.get("mlmon_payload_inspection_skipped_total", reason="too_large") + 1
    )
    assert m1.get("mlmon_payload_errors_total") == m0.get("mlmon_payload_errors_total")


def test_c14_a_body_over_max_request_bytes_gets_413_from_the_sidecar(
    upstream: FaultServer, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path / "m.yaml", upstream.url, max_request_bytes=1_000_000)
    with sidecar(spec) as proc:
        c = conn(proc)
        c.request("POST", "/v2/models/m/infer", body=b"x" * 2_000_000)
        r = c.getresponse()
        assert r.status == 413 and json.loads(r.read())["source"] == "monitor-sidecar"
        m = proc.scrape()
        assert m.get("mlmon_rejected_requests_total", reason="too_large") == 1
        assert m.get("mlmon_requests_total", code="413", outcome="client_error") == 1


def test_c16_sse_events_are_flushed_at_once_and_ttfb_is_kept_apart_from_duration(
    side: SidecarProc,
) -> None:
    m0 = side.scrape()
    s = raw(side)
    t0 = time.monotonic()
    s.sendall(b"GET /sse?head=0.25&first=0.3&interval=0.2&events=10 HTTP/1.1\r\nHost: x\r\n\r\n")
    buf = b""
    first_event_at = None
    while b"[DONE]" not in buf:
        data = s.recv(65536)
        assert data
        buf += data
        if first_event_at is None and b"data: {" in buf:
            first_event_at = time.monotonic() - t0
            mid = side.scrape()  # the stream is still going: not yet counted, but in flight
            assert mid.get("mlmon_inflight_requests") == 1
            assert mid.get("mlmon_time_to_first_byte_seconds_count") == m0.get(
                "mlmon_time_to_first_byte_seconds_count"
            )
    while not buf.endswith(b"0\r\n\r\n"):
        buf += s.recv(65536)
    total = time.monotonic() - t0
    s.close()
    assert first_event_at is not None and 0.25 <= first_event_at < 0.6
    assert 2.0 <= total < 3.5
    m1 = side.scrape()
    n_ttfb = m1.get("mlmon_time_to_first_byte_seconds_count") - m0.get(
        "mlmon_time_to_first_byte_seconds_count"
    )
    ttfb = m1.get("mlmon_time_to_first_byte_seconds_sum") - m0.get(
        "mlmon_time_to_first_byte_seconds_sum"
    )
    dur = m1.get("mlmon_request_duration_seconds_sum") - m0.get(
        "mlmon_request_duration_seconds_sum"
    )
    assert n_ttfb == 1
    assert 0.28 <= ttfb < 0.5  # the first event (0.30 s), not the head (0.25 s), not the end
    assert 2.0 <= dur < 3.5
    assert (
        m1.get("mlmon_requests_total", outcome="ok") - m0.get("mlmon_requests_total", outcome="ok")
        == 1
    )


def _upstream_conns(pid: int, port: int) -> int:
    return sum(
        1
        for cn in psutil.Process(pid).net_connections(kind="tcp")
        if cn.raddr and cn.raddr.port == port and cn.status == psutil.CONN_ESTABLISHED
    )


def test_c16_a_client_leaving_mid_stream_is_cancelled_and_frees_the_upstream_connection(
    upstream: FaultServer, tmp_path: Path
) -> None:
    # A sidecar of its own, so no pooled connection from other tests is around, and
    # readiness probes far apart (they close their connection after each probe).
    with sidecar(write_spec(tmp_path / "m.yaml", upstream.url, probe_interval_seconds=600)) as proc:
        s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
        s.sendall(b"GET /sse?first=0.1&interval=0.2&events=100 HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            assert s.recv(65536)
        assert _upstream_conns(proc.pid, upstream.port) == 1  # the stream's own connection
        s.close()
        deadline = time.monotonic() + 5
        while proc.scrape().get("mlmon_requests_total", outcome="client_cancelled") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        m = proc.scrape()
        assert m.get("mlmon_requests_total", outcome="client_cancelled", code="200") == 1
        assert m.get("mlmon_requests_total") == 1  # counted once
        assert 0.9 <= m.get("mlmon_request_duration_seconds_sum", outcome="client_cancelled") < 2.0
        assert m.get("mlmon_inflight_requests") == 0
        # Closed, not returned to the pool: nothing to the upstream stays open.
        deadline = time.monotonic() + 2
        while _upstream_conns(proc.pid, upstream.port):
            assert time.monotonic() < deadline, "the upstream connection leaked"
            time.sleep(0.05)


def test_pipelined_requests_are_answered_in_order(side: SidecarProc) -> None:
    s = raw(side)
    s.sendall(
        b"GET /slow?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /echo/second HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    buf = b""
    deadline = time.monotonic() + 15
    while b"/echo/second" not in buf and time.monotonic() < deadline:
        buf += s.recv(65536)
    s.close()
    assert buf.index(b'"slept"') < buf.index(b"/echo/second")


def test_head_204_and_expect_100_continue_work(side: SidecarProc) -> None:
    c = conn(side)
    c.request("HEAD", "/echo")
    r = c.getresponse()
    assert r.status == 200 and r.read() == b""
    c.request("GET", "/status/204")
    r = c.getresponse()
    assert r.status == 204 and r.read() == b""
    s = raw(side)
    s.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
    s.sendall(b"abc")
    buf = b""
    while b'"body_len": 3' not in buf:
        data = s.recv(65536)
        assert data
        buf += data
    s.close()


def test_garbage_that_is_not_http_gets_400_and_the_sidecar_keeps_serving(side: SidecarProc) -> None:
    s = raw(side)
    s.sendall(b"\x16\x03\x01 this is TLS, not HTTP\r\n\r\n")
    assert s.recv(1000).startswith(b"HTTP/1.1 400")
    s.close()
    c = conn(side)
    c.request("GET", "/echo")
    assert c.getresponse().status == 200


def test_c11_a_version_change_leaves_no_stale_info_series_and_keeps_counts(
    upstream: FaultServer, tmp_path: Path
) -> None:
    """C11's kind of fault (a stale gauge outliving what it described), single process."""
    urllib.request.urlopen(
        urllib.request.Request(upstream.url + "/admin/version/7", method="POST")
    ).read()
    with sidecar(write_spec(tmp_path / "m.yaml", upstream.url)) as proc:
        c = conn(proc)
        for _ in range(20):
            c.request("POST", "/v2/models/m/infer", body=v2_body([[1, 2]]))
            c.getresponse().read()
        urllib.request.urlopen(
            urllib.request.Request(upstream.url + "/admin/version/8", method="POST")
        ).read()
        deadline = time.monotonic() + 5
        want = [{"model": "m", "version": "8", "fingerprint": ""}]
        while proc.scrape().series("mlmon_model_info") != want:
            assert time.monotonic() < deadline, proc.scrape().series("mlmon_model_info")
            time.sleep(0.1)
        for _ in range(5):
            c.request("POST", "/v2/models/m/infer", body=v2_body([[1, 2]]))
            c.getresponse().read()
        m = proc.scrape()
        assert m.series("mlmon_model_info") == want
        assert m.get("mlmon_requests_total", version="7", route="/v2/models/{model}/infer") == 20
        assert m.get("mlmon_requests_total", version="8", route="/v2/models/{model}/infer") == 5
        assert m.get("mlmon_requests_total", route="/v2/models/{model}/infer") == 25


def test_prometheus_multiproc_dir_is_ignored_so_no_dead_worker_files_are_read(
    upstream: FaultServer, tmp_path: Path
) -> None:
    stale = tmp_path / "multiproc"
    stale.mkdir()
    (stale / "gauge_all_101.db").write_bytes(b"stale file of a dead worker")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(stale))
    proc = SidecarProc(write_spec(tmp_path / "m.yaml", upstream.url), "m", tmp_path)
    proc.env = env
    with proc:
        c = conn(proc)
        c.request("POST", "/v2/models/m/infer", body=v2_body([[1, 2]]))
        c.getresponse().read()
        assert proc.scrape().get("mlmon_requests_total") == 1


def test_the_exposition_passes_promtool_and_speaks_openmetrics_with_exemplars(
    side: SidecarProc,
) -> None:
    c = conn(side)
    c.request("POST", "/v2/models/m/infer", body=v2_body([[1, 2]]))
    c.getresponse().read()
    with urllib.request.urlopen(side.metrics_url) as r:
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = r.read()
    promtool = require_tool("promtool")
    res = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert res.returncode == 0, res.stdout + res.stderr
    req = urllib.request.Request(
        side.metrics_url,
        headers={"Accept": "application/openmetrics-text; version=1.0.0; charset=utf-8"},
    )
    with urllib.request.urlopen(req) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        om = r.read().decode()
    assert om.rstrip().endswith("# EOF")
    assert any(
        "mlmon_request_duration_seconds_bucket" in line and '# {trace_id="' in line
        for line in om.splitlines()
    )


def test_the_sidecar_process_is_gone_after_stop(upstream: FaultServer, tmp_path: Path) -> None:
    proc = SidecarProc(write_spec(tmp_path / "m.yaml", upstream.url), "m", tmp_path)
    with proc:
        pid = proc.pid
        assert pid_alive(pid)
    assert not pid_alive(pid)


def _chat(proc: SidecarProc, body: dict) -> bytes:
    c = conn(proc)
    c.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    r = c.getresponse()
    assert r.status == 200
    return r.read()


def test_openai_streams_count_tokens_time_to_first_token_and_prompt_size(
    upstream: FaultServer, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path / "m.yaml",
        upstream.url,
        protocol="openai",
        outputs=[{"name": "*"}],
        features=[
            {"name": "temperature", "min": 0, "max": 2},
            {"name": "max_tokens", "min": 1, "max": 4096},
            {"name": "has_system_message", "type": "categorical", "categories": [0, 1]},
        ],
    )
    with sidecar(spec) as proc:
        messages = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "one two three"},
        ]
        # Streamed with a usage chunk, streamed without (the sidecar must not assume
        # one comes), and not streamed; temperature 3 is out of range.
        streamed = _chat(
            proc,
            {
                "model": "m",
                "messages": messages,
                "stream": True,
                "temperature": 0.2,
                "stream_options": {"include_usage": True},
            },
        )
        assert streamed.count(b"data: ") == 6 and streamed.rstrip().endswith(b"data: [DONE]")
        _chat(proc, {"model": "m", "messages": messages, "stream": True, "temperature": 3})
        plain = json.loads(_chat(proc, {"model": "m", "messages": messages, "max_tokens": 10}))
        assert plain["usage"]["completion_tokens"] == 3
        m = proc.scrape()
        route = "/v1/chat/completions"
        assert m.get("mlmon_requests_total", route=route, outcome="ok") == 3
        # prompt 2 + 3 words per request; usage known for 2 of the 3 responses.
        assert m.get("mlmon_llm_tokens_total", kind="prompt") == 2 * 5
        assert m.get("mlmon_llm_tokens_total", kind="completion") == 2 * 3
        assert m.get("mlmon_llm_time_to_first_token_seconds_count") == 2
        ttft = m.get("mlmon_llm_time_to_first_token_seconds_sum") / 2
        assert 0.24 <= ttft < 0.6
        assert m.get("mlmon_llm_prompt_characters_count") == 3
        assert m.get("mlmon_llm_prompt_characters_sum") == 3 * len("be brief" + "one two three")
        assert m.get("mlmon_feature_values_total", feature="temperature", state="out_of_range") == 1
        assert m.get("mlmon_feature_values_total", feature="temperature", state="present") == 1
        assert m.get("mlmon_feature_values_total", feature="temperature", state="missing") == 1
        assert (
            m.get("mlmon_feature_values_total", feature="has_system_message", state="present") == 3
        )


def test_idle_and_stalled_client_connections_are_closed(
    upstream: FaultServer, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path / "m.yaml",
        upstream.url,
        timeouts={"connect_seconds": 1, "read_seconds": 2, "client_idle_seconds": 1},
    )
    with sidecar(spec) as proc:
        idle = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
        stalled = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
        _OPEN.extend([idle, stalled])
        stalled.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
        t0 = time.monotonic()
        assert idle.recv(100) == b"" and stalled.recv(100) == b""  # closed by the sidecar
        assert 0.9 <= time.monotonic() - t0 < 3.5
        # A connection in use is not cut: a 1.5 s request outlives the 1 s idle limit.
        c = conn(proc)
        c.request("GET", "/slow?delay=1.5")
        assert c.getresponse().status == 200


def test_an_upgrade_request_gets_the_upstreams_plain_answer_then_close(side: SidecarProc) -> None:
    s = raw(side)
    s.sendall(
        b"GET /echo/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    buf = b""
    while True:
        data = s.recv(65536)
        if not data:
            break
        buf += data
    assert buf.startswith(b"HTTP/1.1 200 OK")  # not 101: the client knows no upgrade happened
    assert b"Connection: close" in buf
    seen = json.loads(buf.split(b"\r\n\r\n", 1)[1])
    assert not any(h[0].lower() in ("upgrade", "connection") for h in seen["headers"])


def _read_all(s: socket.socket, limit: float = 10) -> bytes:
    s.settimeout(limit)
    buf = b""
    while True:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        buf += data
    return buf


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", b"431"),
        (
            b"GET /echo HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(1000))
            + b"\r\n",
            b"431",
        ),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
    ],
    ids=[
        "A 1 MB header value gets 431 instead of being buffered.",
        "A thousand header fields get 431.",
        "A 100 KB request target gets 414.",
    ],
)
def test_oversized_request_heads_are_refused_and_others_keep_being_served(
    side: SidecarProc, head: bytes, status: bytes
) -> None:
    s = raw(side)
    with contextlib.suppress(ConnectionResetError, BrokenPipeError):
        s.sendall(head)
    assert _read_all(s).startswith(b"HTTP/1.1 " + status)
    c = conn(side)
    c.request("GET", "/echo")
    assert c.getresponse().status == 200


def test_an_endless_head_cannot_starve_other_clients(side: SidecarProc) -> None:
    s = raw(side)
    s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ")
    stop = threading.Event()

    def flood() -> None:
        sent = 0
        with contextlib.suppress(OSError):
            while sent < (32 << 20) and not stop.is_set():
                s.sendall(b"a" * 65536)
                sent += 65536

    t = threading.Thread(target=flood)
    t.start()
    try:
        for _ in range(5):  # the sidecar stops reading the flood at 64 KiB and keeps serving
            t0 = time.monotonic()
            c = conn(side, timeout=5)
            c.request("GET", "/echo")
            assert c.getresponse().status == 200
            assert time.monotonic() - t0 < 2
    finally:
        stop.set()
        t.join(timeout=30)
    assert _rss(side.pid) < 200 * 2**20


def test_slowloris_heads_get_408_after_client_header_seconds(
    upstream: FaultServer, tmp_path: Path
) -> None:
    spec = write_spec(
        tmp_path / "m.yaml",
        upstream.url,
        timeouts={"connect_seconds": 1, "read_seconds": 2, "client_header_seconds": 1},
    )
    with sidecar(spec) as proc:
        s = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
        _OPEN.append(s)
        t0 = time.monotonic()
        got = b""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for ch in b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: abcdefghijklmnop":
                s.sendall(bytes([ch]))  # one byte every 0.1 s: never idle, never done
                time.sleep(0.1)
                if time.monotonic() - t0 > 3.5:
                    break
        got = _read_all(s, 3)
        assert got.startswith(b"HTTP/1.1 408")
        assert 0.9 <= time.monotonic() - t0 < 6


def test_garbage_after_a_pipelined_request_answers_the_request_then_400(side: SidecarProc) -> None:
    m0 = side.scrape()
    s = raw(side)
    s.sendall(b"GET /echo/first HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
    buf = _read_all(s)
    assert buf.startswith(b"HTTP/1.1 200") and b"/echo/first" in buf
    assert b"HTTP/1.1 400" in buf[buf.index(b"/echo/first") :]
    m1 = side.scrape()
    assert (
        m1.get("mlmon_requests_total", code="200") - m0.get("mlmon_requests_total", code="200") == 1
    )
    assert m1.get("mlmon_requests_total", outcome="client_cancelled") == m0.get(
        "mlmon_requests_total", outcome="client_cancelled"
    )


def test_chunked_trailers_are_never_promoted_to_request_headers(side: SidecarProc) -> None:
    s = raw(side)
    s.sendall(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n0\r\nAuthorization: Bearer forged\r\n\r\n"
    )
    buf = _read_all(s)
    seen = json.loads(
        buf.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[1]
        if b"chunked" in buf.split(b"\r\n\r\n")[0].lower()
        else buf.split(b"\r\n\r\n", 1)[1]
    )
    assert seen["body_len"] == 3
    assert not any(h[0].lower() == "authorization" for h in seen["headers"])


def test_an_http10_request_without_host_gets_one_upstream(
    side: SidecarProc, upstream: FaultServer
) -> None:
    s = raw(side)
    s.sendall(b"GET /echo HTTP/1.0\r\n\r\n")
    buf = _read_all(s)
    assert buf.startswith(b"HTTP/1.1 200")
    seen = json.loads(buf.split(b"\r\n\r\n", 1)[1])
    assert ["Host", f"127.0.0.1:{upstream.port}"] in seen["headers"]
