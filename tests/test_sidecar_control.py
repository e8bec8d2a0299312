"""The sidecar's control API (``/v1/control`` on the metrics port), against real processes.

Two scripted upstreams (tests/fault_server.py) on 127.0.0.1 play the primary and the
fallback model server; each is told its own version (``primary``, ``fallback``), so
``GET /v2/models/m`` through the sidecar says which one answered. Every process is
stopped by PID (tests/support.py).
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from monitor.procs import free_ports
from tests.support import MONITOR, FaultServer, SidecarProc, sidecar, write_spec

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-control-token"


# --- fixtures and helpers ---------------------------------------------------------


def _tagged_upstream(d: Path, tag: str) -> Iterator[FaultServer]:
    with FaultServer(d) as srv:
        c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        c.request("POST", f"/admin/version/{tag}")
        assert c.getresponse().read()
        c.close()
        yield srv


@pytest.fixture(scope="module")
def primary(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    yield from _tagged_upstream(tmp_path_factory.mktemp("primary"), "primary")


@pytest.fixture(scope="module")
def fallback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    yield from _tagged_upstream(tmp_path_factory.mktemp("fallback"), "fallback")


def control_spec(d: Path, primary: FaultServer, fallback: FaultServer | None, **ctl: Any) -> Path:
    """A spec whose model has a control section (token file by default) and a fallback."""
    token_file = d / "token"
    token_file.write_text(TOKEN + "\n")  # the trailing newline is stripped
    control: dict[str, Any] = {"token_file": str(token_file), "state_file": str(d / "state.json")}
    control.update(ctl)
    extra: dict[str, Any] = {"control": {k: v for k, v in control.items() if v is not None}}
    if fallback is not None:
        extra["fallback_upstream"] = fallback.url
    return write_spec(d / "m.yaml", primary.url, **extra)


@pytest.fixture(scope="module")
def module_side(
    primary: FaultServer, fallback: FaultServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProc]:
    d = tmp_path_factory.mktemp("side")
    with sidecar(control_spec(d, primary, fallback), log_dir=d) as proc:
        yield proc


@pytest.fixture
def side(module_side: SidecarProc) -> SidecarProc:
    """The module's sidecar, its control state back at the defaults."""
    status, body = put(
        module_side, {"fallback_weight": 0, "concurrency_limit": None, "quarantined": False}
    )
    assert status == 200, body
    return module_side


def call(
    proc: SidecarProc,
    method: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    path: str = "/v1/control",
) -> tuple[int, Any, http.client.HTTPResponse]:
    """One request to the metrics port: (status, parsed JSON body, response)."""
    c = http.client.HTTPConnection("127.0.0.1", proc.metrics_port, timeout=10)
    try:
        h = {} if token is None else {"Authorization": f"Bearer {token}"}
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None, r
    finally:
        c.close()


def put(proc: SidecarProc, body: Any, **kw: Any) -> tuple[int, Any]:
    status, data, _ = call(proc, "PUT", body, **kw)
    return status, data


def served_by(c: http.client.HTTPConnection) -> str:
    """Which upstream answered a metadata request sent through the sidecar."""
    c.request("GET", "/v2/models/m")
    r = c.getresponse()
    body = r.read()
    assert r.status == 200, body
    return str(json.loads(body)["versions"][0])


def proxy_conn(proc: SidecarProc, timeout: float = 10) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proc.port, timeout=timeout)


def upstream_connections(proc: SidecarProc, port: int) -> int:
    """Established TCP connections from the sidecar process to 127.0.0.1:``port``."""
    conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    return sum(1 for k in conns if k.raddr and k.raddr.port == port and k.status == "ESTABLISHED")


# --- auth, 404, validation --------------------------------------------------------


def test_the_control_api_needs_the_bearer_token(side: SidecarProc) -> None:
    for kw in ({"token": None}, {"token": "wrong"}, {"token": TOKEN + "x"}):
        status, body, r = call(side, "GET", **kw)
        assert status == 401, kw
        assert (r.getheader("WWW-Authenticate") or "").startswith("Bearer"), kw
        assert "token" in body["error"]
    status, _, r = call(side, "GET", token=None, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401 and r.getheader("WWW-Authenticate", "").startswith("Bearer")
    # A refused PUT changes nothing.
    status, _ = put(side, {"quarantined": True}, token="wrong")
    assert status == 401
    status, body, _ = call(side, "GET")
    assert status == 200 and body["quarantined"] is False


def test_get_answers_the_state_with_every_field(side: SidecarProc, fallback: FaultServer) -> None:
    status, body, r = call(side, "GET")
    assert status == 200 and r.getheader("Content-Type", "").startswith("application/json")
    assert set(body) == {
        "model",
        "fallback_weight",
        "concurrency_limit",
        "quarantined",
        "fallback_upstream",
        "updated_at",
    }
    assert body["model"] == "m" and body["fallback_upstream"] == fallback.url
    assert (body["fallback_weight"], body["concurrency_limit"], body["quarantined"]) == (
        0.0,
        None,
        False,
    )
    status, body = put(side, {"quarantined": True})
    assert status == 200 and body["quarantined"] is True
    assert isinstance(body["updated_at"], float) and abs(body["updated_at"] - time.time()) < 60
    assert call(side, "GET")[1]["updated_at"] == body["updated_at"]


def test_a_body_that_does_not_match_its_content_encoding_is_a_400(side: SidecarProc) -> None:
    """Case (break-it trial): aiohttp's decoding error escaped the handler as a 500."""
    status, data, _ = call(side, "PUT", b'{"quarantined": true}',
                           headers={"Content-Type": "application/json",
                                    "Content-Encoding": "gzip"})  # fmt: skip
    assert status == 400 and data["error"].startswith("body: cannot be read as sent: "), data
    assert call(side, "GET")[1]["quarantined"] is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b"{not json", "body", id="malformed JSON"),
        pytest.param(b"\xff\xfe", "body", id="not UTF-8"),
        pytest.param(b"", "body", id="empty body"),
        pytest.param([1, 2], "body", id="not an object"),
        pytest.param({"fallback_weight": 0.5, "weight": 1}, "weight", id="unknown field"),
        pytest.param({"fallback_weight": 1.5}, "fallback_weight", id="weight above 1"),
        pytest.param({"fallback_weight": -0.1}, "fallback_weight", id="negative weight"),
        pytest.param({"fallback_weight": "0.5"}, "fallback_weight", id="weight as a string"),
        pytest.param({"fallback_weight": True}, "fallback_weight", id="weight as a boolean"),
        pytest.param({"concurrency_limit": 0}, "concurrency_limit", id="limit 0"),
        pytest.param({"concurrency_limit": 2.5}, "concurrency_limit", id="limit not an int"),
        pytest.param({"concurrency_limit": True}, "concurrency_limit", id="limit a boolean"),
        pytest.param({"concurrency_limit": 10**7}, "concurrency_limit", id="limit too large"),
        pytest.param({"quarantined": "yes"}, "quarantined", id="quarantined not a boolean"),
        pytest.param({"quarantined": 1}, "quarantined", id="quarantined as 1"),
    ],
)
def test_a_bad_put_is_a_400_naming_the_field_and_changes_nothing(
    side: SidecarProc, body: Any, field: str
) -> None:
    status, data = put(side, body)
    assert status == 400, data
    assert data["error"].startswith(field), data
    status, now, _ = call(side, "GET")
    assert (now["fallback_weight"], now["concurrency_limit"], now["quarantined"]) == (
        0.0,
        None,
        False,
    )


def test_a_body_over_64_kib_is_a_413_declared_or_chunked(side: SidecarProc) -> None:
    big = json.dumps({"quarantined": True, "pad": "x" * 70_000}).encode()
    status, data = put(side, big)
    assert status == 413 and "body" in data["error"]
    # Chunked: no Content-Length to check up front; the read stops past the limit.
    c = http.client.HTTPConnection("127.0.0.1", side.metrics_port, timeout=10)
    try:
        c.request(
            "PUT",
            "/v1/control",
            body=iter([big[:40_000], big[40_000:]]),
            encode_chunked=True,
            headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"},
        )
        r = c.getresponse()
        assert r.status == 413, r.read()
    finally:
        c.close()
    assert call(side, "GET")[1]["quarantined"] is False


def test_other_methods_are_405_and_an_empty_put_changes_nothing(side: SidecarProc) -> None:
    status, body, r = call(side, "POST", {"quarantined": True})
    assert status == 405 and r.getheader("Allow") == "GET, PUT" and "POST" in body["error"]
    before = call(side, "GET")[1]
    status, body = put(side, {})
    assert status == 200 and body["updated_at"] == before["updated_at"]


def test_without_control_the_api_is_404_and_the_metrics_show_the_defaults(
    primary: FaultServer, tmp_path: Path
) -> None:
    with sidecar(write_spec(tmp_path / "m.yaml", primary.url), log_dir=tmp_path) as proc:
        for method in ("GET", "PUT"):
            status, body, _ = call(proc, method, {"quarantined": True})
            assert status == 404 and "control" in body["error"]
        m = proc.scrape()
        assert m.series("mlmon_route_weight") == [{"model": "m", "upstream": "primary"}]
        assert m.get("mlmon_route_weight", upstream="primary") == 1
        assert m.get("mlmon_quarantined", model="m") == 0
        assert m.get("mlmon_concurrency_limit", model="m") == 0
        assert m.series("mlmon_requests_shed_total") == [{"model": "m"}]
        assert m.get("mlmon_requests_shed_total") == 0


def test_without_a_fallback_a_weight_above_0_is_a_409_and_token_env_works(
    primary: FaultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLMON_TEST_CONTROL_TOKEN", f"  {TOKEN}  ")
    spec = control_spec(
        tmp_path, primary, None, token_file=None, token_env="MLMON_TEST_CONTROL_TOKEN"
    )
    with sidecar(spec, log_dir=tmp_path) as proc:
        status, body = put(proc, {"fallback_weight": 0.5})
        assert status == 409 and "fallback_upstream" in body["error"]
        # A 400 wins over the 409: the body is checked first.
        assert put(proc, {"fallback_weight": 0.5, "quarantined": "x"})[0] == 400
        status, body = put(proc, {"fallback_weight": 0, "concurrency_limit": 3})
        assert status == 200 and body["concurrency_limit"] == 3
        assert body["fallback_upstream"] is None
        m = proc.scrape()
        assert m.series("mlmon_route_weight") == [{"model": "m", "upstream": "primary"}]
        assert m.get("mlmon_concurrency_limit") == 3


@pytest.mark.parametrize(
    ("ctl", "expected"),
    [
        pytest.param({"token_file": "missing"}, "token_file", id="token file missing"),
        pytest.param({"token_file": "empty"}, "is empty", id="token file empty"),
        pytest.param(
            {"token_file": None, "token_env": "MLMON_TEST_UNSET_TOKEN"},
            "MLMON_TEST_UNSET_TOKEN is unset or empty",
            id="token env unset",
        ),
        pytest.param({"token_file": None}, "set token_file or token_env", id="no token source"),
    ],
)
def test_the_sidecar_refuses_to_start_without_a_readable_token(
    primary: FaultServer, tmp_path: Path, ctl: dict[str, Any], expected: str
) -> None:
    if ctl.get("token_file") == "missing":
        ctl = {"token_file": str(tmp_path / "no-such-token")}
    elif ctl.get("token_file") == "empty":
        (tmp_path / "empty-token").write_text("  \n")
        ctl = {"token_file": str(tmp_path / "empty-token")}
    spec = control_spec(tmp_path, primary, None, **ctl)
    port, mport = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k != "MLMON_TEST_UNSET_TOKEN"}
    proc = subprocess.run(
        [
            *MONITOR,
            *("sidecar", "--config", str(spec), "--model", "m"),
            *("--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{mport}"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: models[0].control") and expected in last, proc.stderr
    assert "Traceback" not in proc.stderr


# --- effects: routing, shedding, quarantine ---------------------------------------


def test_weight_1_sends_every_request_to_the_fallback_and_0_to_the_primary(
    side: SidecarProc, fallback: FaultServer
) -> None:
    c = proxy_conn(side)
    try:
        # Idle pooled connections to the primary exist now; none may serve the fallback.
        assert {served_by(c) for _ in range(20)} == {"primary"}
        status, body = put(side, {"fallback_weight": 1.0})
        assert status == 200 and body["fallback_weight"] == 1.0 and body["persisted"] is True
        assert {served_by(c) for _ in range(30)} == {"fallback"}
        # Sequential requests reuse one kept-alive connection per upstream.
        assert upstream_connections(side, fallback.port) == 1
        assert put(side, {"fallback_weight": 0})[0] == 200
        assert {served_by(c) for _ in range(20)} == {"primary"}
    finally:
        c.close()


def test_weight_half_splits_the_requests_and_the_route_weight_gauges_follow(
    side: SidecarProc,
) -> None:
    assert put(side, {"fallback_weight": 0.5})[0] == 200
    m = side.scrape()
    assert m.get("mlmon_route_weight", model="m", upstream="primary") == 0.5
    assert m.get("mlmon_route_weight", model="m", upstream="fallback") == 0.5
    c = proxy_conn(side)
    try:
        seen = [served_by(c) for _ in range(200)]
    finally:
        c.close()
    share = seen.count("fallback") / len(seen)
    assert 0.3 <= share <= 0.7, share
    assert put(side, {"fallback_weight": 0.25})[0] == 200
    m = side.scrape()
    assert m.get("mlmon_route_weight", upstream="primary") == 0.75
    assert m.get("mlmon_route_weight", upstream="fallback") == 0.25


def _wait_inflight(proc: SidecarProc, n: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while proc.scrape().get("mlmon_inflight_requests") != n:
        assert time.monotonic() < deadline, f"never {n} request(s) in flight"
        time.sleep(0.02)


def test_at_the_concurrency_limit_new_requests_are_shed_with_503(side: SidecarProc) -> None:
    status, body = put(side, {"concurrency_limit": 1})
    assert status == 200 and body["concurrency_limit"] == 1
    m0 = side.scrape()
    assert m0.get("mlmon_concurrency_limit", model="m") == 1
    result: dict[str, Any] = {}

    def hold() -> None:  # client 1: holds the only slot for 1.5 s
        c = proxy_conn(side)
        try:
            c.request("GET", "/slow?delay=1.5")
            r = c.getresponse()
            result["status"] = r.status
            r.read()
        except BaseException as exc:
            result["error"] = exc
        finally:
            c.close()

    t = threading.Thread(target=hold)
    t.start()
    c = proxy_conn(side)  # client 2
    try:
        _wait_inflight(side, 1)
        t0 = time.monotonic()
        for method, body_bytes in (("GET", None), ("POST", b'{"small": "body"}')):
            c.request(method, "/slow?delay=0", body=body_bytes)
            r = c.getresponse()
            answer = json.loads(r.read())
            assert r.status == 503, answer
            assert r.getheader("Retry-After") == "1"
            assert r.getheader("X-Monitor-Sidecar") == "error"
            assert answer["error"] == "load shed by the sidecar: concurrency limit 1 reached"
            assert r.getheader("Connection") is None  # kept alive: the next one reuses it
        assert time.monotonic() - t0 < 1.0  # answered at once, not after the slow one
        t.join(timeout=10)
        assert result == {"status": 200}
        c.request("GET", "/slow?delay=0")  # the slot is free again, same connection
        r = c.getresponse()
        r.read()
        assert r.status == 200
    finally:
        c.close()
        t.join(timeout=10)
    m1 = side.scrape()
    assert (
        m1.get("mlmon_requests_shed_total", model="m")
        - m0.get("mlmon_requests_shed_total", model="m")
        == 2
    )
    # Counted as the sidecar counts a 503: code 503, outcome server_error.
    assert (
        m1.get("mlmon_requests_total", code="503", outcome="server_error")
        - m0.get("mlmon_requests_total", code="503", outcome="server_error")
        == 2
    )
    assert m1.get("mlmon_inflight_requests") == 0
    assert put(side, {"concurrency_limit": None})[0] == 200
    assert side.scrape().get("mlmon_concurrency_limit", model="m") == 0


def test_two_concurrent_clients_with_limit_2_are_both_served(side: SidecarProc) -> None:
    assert put(side, {"concurrency_limit": 2})[0] == 200
    statuses: list[int] = []

    def one() -> None:
        c = proxy_conn(side)
        try:
            c.request("GET", "/slow?delay=0.5")
            r = c.getresponse()
            r.read()
            statuses.append(r.status)
        finally:
            c.close()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert statuses == [200, 200]


def test_quarantine_fails_readiness_while_requests_still_pass(side: SidecarProc) -> None:
    assert call(side, "GET", path="/-/ready", token=None)[0] == 200
    status, body = put(side, {"quarantined": True})
    assert status == 200 and body["quarantined"] is True
    status, body, _ = call(side, "GET", path="/-/ready", token=None)
    assert (status, body) == (503, {"status": "quarantined"})
    assert call(side, "GET", path="/-/healthy", token=None)[0] == 200
    c = proxy_conn(side)
    try:
        assert served_by(c) == "primary"
    finally:
        c.close()
    assert side.scrape().get("mlmon_quarantined", model="m") == 1
    assert put(side, {"quarantined": False})[0] == 200
    assert call(side, "GET", path="/-/ready", token=None)[0] == 200
    assert side.scrape().get("mlmon_quarantined", model="m") == 0


def test_every_change_is_logged_at_warning_with_old_and_new_values(side: SidecarProc) -> None:
    assert put(side, {"fallback_weight": 0.3, "concurrency_limit": 7})[0] == 200
    deadline = time.monotonic() + 5
    while "fallback_weight 0 -> 0.3" not in side.log_tail(200):
        assert time.monotonic() < deadline, side.log_tail()
        time.sleep(0.05)
    line = next(x for x in side.log_tail(200).splitlines() if "fallback_weight 0 -> 0.3" in x)
    assert "WARNING" in line and "concurrency_limit none -> 7" in line


# --- persistence ------------------------------------------------------------------


def test_the_state_survives_a_restart_and_a_corrupt_file_means_defaults(
    primary: FaultServer, fallback: FaultServer, tmp_path: Path
) -> None:
    spec = control_spec(tmp_path, primary, fallback)
    state_file = tmp_path / "state.json"
    change = {"fallback_weight": 1.0, "concurrency_limit": 5, "quarantined": True}
    with sidecar(spec, log_dir=tmp_path / "run1") as proc:
        status, body = put(proc, change)
        assert status == 200 and body["persisted"] is True
        saved = body
    on_disk = json.loads(state_file.read_text())
    assert {k: on_disk[k] for k in change} == change and on_disk["model"] == "m"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp left

    with sidecar(spec, log_dir=tmp_path / "run2") as proc:
        status, body, _ = call(proc, "GET")
        assert body == {k: v for k, v in saved.items() if k != "persisted"}
        assert call(proc, "GET", path="/-/ready", token=None)[0] == 503
        c = proxy_conn(proc)
        try:
            assert {served_by(c) for _ in range(10)} == {"fallback"}
        finally:
            c.close()
        m = proc.scrape()
        assert m.get("mlmon_route_weight", upstream="fallback") == 1
        assert m.get("mlmon_route_weight", upstream="primary") == 0
        assert m.get("mlmon_quarantined") == 1 and m.get("mlmon_concurrency_limit") == 5
        assert "control state restored" in proc.log_tail(200)

    state_file.write_text('{"model": "m", "fallback_weight": 7')  # truncated
    with sidecar(spec, log_dir=tmp_path / "run3") as proc:
        _, body, _ = call(proc, "GET")
        assert (body["fallback_weight"], body["concurrency_limit"], body["quarantined"]) == (
            0.0,
            None,
            False,
        )
        # /-/healthy (what sidecar() waits for) can answer before the first probe of
        # the upstream is done; until then /-/ready is 503, rightly
        deadline = time.monotonic() + 10
        while (status := call(proc, "GET", path="/-/ready", token=None)[0]) != 200:
            assert status == 503 and time.monotonic() < deadline, status
            time.sleep(0.05)
        log = proc.log_tail(200)
        assert "WARNING" in log and "corrupt" in log


def test_an_unwritable_state_file_still_applies_the_change_and_says_so(
    primary: FaultServer, fallback: FaultServer, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state file's directory should be")
    spec = control_spec(tmp_path, primary, fallback, state_file=str(blocker / "state.json"))
    with sidecar(spec, log_dir=tmp_path) as proc:
        status, body = put(proc, {"quarantined": True})
        assert status == 200 and body["quarantined"] is True and body["persisted"] is False
        assert call(proc, "GET", path="/-/ready", token=None)[0] == 503
