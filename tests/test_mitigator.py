"""``monitor mitigator`` as a real process: auth, bad bodies, per-alert decisions (C26),
duplicate deliveries (C28), cooldown and dry run, a kill mid-action, a real
Alertmanager delivering, and a fuzz of random bodies (never a 5xx)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.procs import AlertmanagerProcess, ManagedProcess, free_ports
from tests.support import Metrics, Receiver, require_tool

MONITOR = [sys.executable, "-m", "monitor"]
TOKEN = "s3cret-token"

C26 = {
    "version": "4", "receiver": "mitigator", "status": "firing", "truncatedAlerts": 0,
    "groupKey": '{}:{alertname="ModelErrorRateHigh"}',
    "groupLabels": {"alertname": "ModelErrorRateHigh"},
    "commonLabels": {"alertname": "ModelErrorRateHigh", "severity": "page"},
    "commonAnnotations": {}, "externalURL": "http://alertmanager.example:9093",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "ModelErrorRateHigh", "model": "m1", "severity": "page"},  # noqa: E501
         "annotations": {}, "startsAt": "2025-03-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "", "fingerprint": "a1b2c3d4e5f60718"},
        {"status": "resolved", "labels": {"alertname": "ModelErrorRateHigh", "model": "m2", "severity": "page"},  # noqa: E501
         "annotations": {}, "startsAt": "2025-03-01T09:40:00Z", "endsAt": "2025-03-01T10:05:00Z",
         "generatorURL": "", "fingerprint": "0f1e2d3c4b5a6978"},
    ],
}  # fmt: skip


def _recorder(path: Path, sleep: float = 0.0) -> list[str]:
    """A command action that appends the alert it got on stdin to ``path`` (one line per run)."""
    code = (  # noqa: UP031 - the program text is easier to read with %r
        "import json, sys, time; a = json.load(sys.stdin); time.sleep(%r); "
        "open(%r, 'a').write(json.dumps([a['status'], a['labels'].get('model'), a['fingerprint']]) + '\\n')"  # noqa: E501
    ) % (sleep, str(path))
    return [sys.executable, "-c", code]


class Mitigator(ManagedProcess):
    """``monitor mitigator`` on a free port with a token file and a SQLite store."""

    def __init__(
        self,
        tmp: Path,
        policies: list[dict[str, Any]],
        port: int | None = None,
        models: list[dict[str, Any]] | None = None,
        **mitigator: Any,
    ) -> None:
        self.port = port or free_ports(1)[0]
        (tmp / "token").write_text(TOKEN + "\n")
        spec = {
            "apiVersion": "monitor/v1",
            "service": "t",
            "models": models or [{"name": "m1", "upstream": "http://127.0.0.1:9"}],
            "mitigations": policies,
            "mitigator": {"token_file": str(tmp / "token"), "store": f"sqlite:///{tmp / 'mitigator.db'}",  # noqa: E501
                          "listen": f"127.0.0.1:{self.port}", "retries": 1, **mitigator},
        }  # fmt: skip
        (tmp / "monitor.yaml").write_text(yaml.safe_dump(spec))
        super().__init__(
            [*MONITOR, "mitigator", "--config", str(tmp / "monitor.yaml")],
            ready_url=f"http://127.0.0.1:{self.port}/-/ready",
            log_path=tmp / f"mitigator-{self.port}.log",
            name="mitigator",
            ready_timeout_s=30,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def post(
        self, body: bytes | dict[str, Any], token: str | None = TOKEN
    ) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(
            f"{self.url}/v1/alerts", data=data, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def actions(self) -> list[dict[str, Any]]:
        req = urllib.request.Request(
            f"{self.url}/v1/actions", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return list(json.loads(resp.read())["actions"])

    def metrics(self) -> Metrics:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            return Metrics(resp.read().decode())

    def wait_done(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            acts = [a for a in self.actions() if a["state"] == "done"]
            if len(acts) >= n:
                return acts
            time.sleep(0.1)
        raise AssertionError(f"{n} done actions expected: {self.actions()}\n{self.log_tail()}")


def _policy(out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "name": "rollback",
        "match": {"alertname": "ModelErrorRateHigh"},
        "action": {"type": "command", "argv": _recorder(out)},
        "revert": {"type": "command", "argv": _recorder(out)},
        "cooldown_seconds": 0,
        **extra,
    }


def _lines(path: Path) -> list[list[Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_auth_size_and_shape_are_checked_before_anything_runs(tmp_path: Path) -> None:
    out = tmp_path / "ran.jsonl"
    with Mitigator(tmp_path, [_policy(out)], max_body_bytes=4096) as m:
        assert m.post(C26, token=None)[0] == 401
        assert m.post(C26, token="wrong")[0] == 401
        status, body = m.post(b"{not json")
        assert status == 400 and body["error"].startswith("body is not JSON")
        status, body = m.post({**C26, "version": "3"})
        assert (status, body["error"]) == (400, "version: expected \"4\", got '3'")
        bad = json.loads(json.dumps(C26))
        bad["alerts"][0]["startsAt"] = "yesterday"
        status, body = m.post(bad)
        assert (status, body["error"]) == (
            400,
            "alerts[0].startsAt: expected an RFC 3339 time, got 'yesterday'",
        )
        assert m.post(b"x" * 5000)[0] == 413
        # chunked: no Content-Length, the limit still holds
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", m.port, timeout=5)
        conn.request("POST", "/v1/alerts", body=iter([b"x" * 3000, b"y" * 3000]),
                     headers={"Authorization": f"Bearer {TOKEN}"}, encode_chunked=True)  # fmt: skip
        assert conn.getresponse().status == 413
        conn.close()
        assert (
            m.post({**C26, "notification_reason": "new", "alerts": []})[0] == 200
        )  # unknown fields tolerated
        for query in ("limit=-1", "limit=0", "limit=1001", "limit=ten", "state=gone"):
            req = urllib.request.Request(
                f"{m.url}/v1/actions?{query}", headers={"Authorization": f"Bearer {TOKEN}"}
            )
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code == 400, query
            assert json.loads(err.value.read())["error"].startswith(query.split("=")[0] + ": ")
        # bytes that are not HTTP: aiohttp answers 400; the log says so in one WARNING line
        import socket

        for raw, why in [
            (b"POST /v1/alerts HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
             "Invalid character in Content-Length"),
            (b"POST /v1/alerts HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
             "Invalid character in chunk size"),
        ]:  # fmt: skip
            with socket.create_connection(("127.0.0.1", m.port), timeout=5) as sock:
                sock.sendall(raw)
                assert sock.recv(64).startswith(b"HTTP/1.0 400 Bad Request\r\n")
            deadline = time.monotonic() + 5
            while why not in m.log_path.read_text():
                assert time.monotonic() < deadline, m.log_tail()
            (line,) = [x for x in m.log_path.read_text().splitlines() if why in x]
            assert line.endswith(
                f" WARNING aiohttp.server: Error handling request from 127.0.0.1: "
                f"answered 400, {why}"
            ), line
        assert "Traceback" not in m.log_path.read_text()
        metrics = m.metrics()
        assert metrics.get("mlmon_webhook_notifications_total", result="unauthorized") == 2
        assert metrics.get("mlmon_webhook_notifications_total", result="invalid") == 3
        assert metrics.get("mlmon_webhook_notifications_total", result="too_large") == 2
        time.sleep(0.5)
    assert _lines(out) == []  # nothing ran


def test_c26_each_alert_is_decided_by_its_own_status(tmp_path: Path) -> None:
    out = tmp_path / "ran.jsonl"
    with Mitigator(tmp_path, [_policy(out, revert_on_resolve=True)]) as m:
        status, body = m.post(C26)
        assert status == 200
        # m1 fires: its apply. m2 is resolved: its revert, which finds nothing applied.
        assert body["planned"] == [
            "a1b2c3d4e5f60718|2025-03-01T10:00:00Z|rollback|apply",
            "0f1e2d3c4b5a6978|2025-03-01T09:40:00Z|rollback|revert",
        ]
        acts = {a["alert"]["labels"]["model"]: a for a in m.wait_done(2)}
    assert (acts["m1"]["kind"], acts["m1"]["outcome"]) == ("apply", "success")
    assert (acts["m2"]["kind"], acts["m2"]["outcome"]) == ("revert", "skipped")
    assert acts["m2"]["detail"] == "nothing to revert (no apply for this alert)"
    assert _lines(out) == [["firing", "m1", "a1b2c3d4e5f60718"]]


def test_c28_duplicate_deliveries_run_the_action_once_and_resolve_reverts(tmp_path: Path) -> None:
    out = tmp_path / "ran.jsonl"
    firing = {**C26, "alerts": [C26["alerts"][0]]}
    with Mitigator(tmp_path, [_policy(out, revert_on_resolve=True)]) as m:
        assert m.post(firing)[0] == 200
        time.sleep(1.5)
        status, body = m.post(firing)
        assert (status, body["planned"], body["duplicates"]) == (200, [], 1)
        m.wait_done(1)
        resolved = json.loads(json.dumps(firing))
        resolved["alerts"][0].update(status="resolved", endsAt="2025-03-01T10:05:00Z")
        status, body = m.post(resolved)
        assert body["planned"] == ["a1b2c3d4e5f60718|2025-03-01T10:00:00Z|rollback|revert"]
        assert m.post(resolved)[1]["duplicates"] == 1  # the resolve delivered twice: one revert
        acts = m.wait_done(2)
        assert m.metrics().get("mlmon_webhook_duplicates_total") == 2
    assert _lines(out) == [
        ["firing", "m1", "a1b2c3d4e5f60718"],
        ["resolved", "m1", "a1b2c3d4e5f60718"],
    ]
    assert sorted((a["kind"], a["outcome"]) for a in acts) == [
        ("apply", "success"),
        ("revert", "success"),
    ]


def test_huge_numbers_get_400_never_5xx(tmp_path: Path) -> None:
    """Case (break-it trial): a 5000-digit integer gave 500; truncatedAlerts 2^63, which
    SQLite cannot store, gave 503, which Alertmanager retries for ever."""
    with Mitigator(tmp_path, [_policy(tmp_path / "ran.jsonl")]) as m:
        # an integer past Python's 4300-digit str->int limit
        status, body = m.post(b'{"version": "4", "x": ' + b"9" * 5000 + b', "alerts": []}')
        assert status == 400 and body["error"].startswith("body is not usable JSON: Exceeds")
        status, body = m.post({**C26, "truncatedAlerts": 2**63})
        assert (status, body["error"]) == (
            400, "truncatedAlerts: expected an integer in [0, 2^63), got 9223372036854775808"
        )  # fmt: skip
        assert m.post({**C26, "truncatedAlerts": 2**63 - 1})[0] == 200
        # "\ud800" is valid JSON but not text: it was a 503 (the store refused it) or,
        # in a label, a job that crashed in its action; now a 400 naming the field
        for field in ("fingerprint", "labels.model"):
            alert = json.loads(json.dumps(C26["alerts"][0]))
            node = alert
            for k in field.split(".")[:-1]:
                node = node[k]
            node[field.split(".")[-1]] = "PLACEHOLDER"
            raw = json.dumps({"version": "4", "alerts": [alert]}).encode()
            status, body = m.post(raw.replace(b'"PLACEHOLDER"', b'"\\ud800x"'))
            assert (status, body["error"]) == (
                400, f"alerts[0].{field}: a string holds a lone UTF-16 surrogate"
            )  # fmt: skip
        long_fp = json.loads(json.dumps(C26))
        long_fp["alerts"][0]["fingerprint"] = "f" * 200
        status, body = m.post(long_fp)
        assert (status, body["error"]) == (
            400, "alerts[0].fingerprint: expected a non-empty string of at most 128 "
            "characters, got '" + "f" * 36 + "..."
        )  # fmt: skip
        # a body that does not match its Content-Encoding: 400, not aiohttp's 500
        req = urllib.request.Request(
            f"{m.url}/v1/alerts", data=json.dumps(C26).encode(), method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                     "Content-Encoding": "gzip"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400
        assert json.loads(err.value.read())["error"].startswith("body cannot be read as sent: ")
        # aiohttp logs the payload error again when it drains the body, after the answer
        deadline = time.monotonic() + 5
        while "a request body could not be read" not in m.log_path.read_text():
            assert time.monotonic() < deadline, m.log_tail()
            time.sleep(0.05)
        log = m.log_path.read_text()
        assert "Traceback" not in log, log
        assert (
            " WARNING aiohttp.server: a request body could not be read: answered 400, "
            "Can not decode content-encoding: gzip\n"
        ) in log


def test_a_header_with_a_newline_fails_its_job_and_the_worker_goes_on(tmp_path: Path) -> None:
    """Case (break-it trial): a templated header rendered with a newline from an alert's
    annotation made aiohttp raise ValueError, which ended the worker task: every later
    job stayed pending while /-/ready said ready."""
    out = tmp_path / "ran.jsonl"
    hook = {"name": "hook", "match": {"alertname": "ModelErrorRateHigh", "model": "m1"},
            "action": {"type": "http", "url": "RECEIVER/x", "body": "{}",
                       "headers": {"X-Summary": "{{ annotations.summary }}"}},
            "cooldown_seconds": 0}  # fmt: skip
    second = {**_policy(out), "match": {"alertname": "ModelErrorRateHigh", "model": "m3"}}
    first = json.loads(json.dumps(C26["alerts"][0]))
    first["annotations"] = {"summary": "line1\nline2"}
    other = json.loads(json.dumps(C26["alerts"][0]))
    other.update(fingerprint="ffff000011112222", labels={**other["labels"], "model": "m3"})
    with Receiver().running() as rx:  # it accepts the connection: the header is the problem
        hook["action"]["url"] = rx.url + "/x"
        with Mitigator(tmp_path, [hook, second]) as m:
            assert m.post({**C26, "alerts": [first]})[0] == 200
            assert m.post({**C26, "alerts": [other]})[0] == 200
            acts = {a["policy"]: a for a in m.wait_done(2)}
            with urllib.request.urlopen(f"{m.url}/-/ready", timeout=5) as resp:
                assert resp.status == 200
        assert rx.received == []
    assert acts["hook"]["outcome"] == "failure"
    assert acts["hook"]["detail"] == (
        "http action: header 'X-Summary': the rendered value has a control character: "
        "'line1\\nline2'; not sent"
    )
    assert acts["rollback"]["outcome"] == "success"
    assert _lines(out) == [["firing", "m3", "ffff000011112222"]]


def test_cooldown_skips_a_second_alert_and_dry_run_only_records(tmp_path: Path) -> None:
    out = tmp_path / "ran.jsonl"
    other = json.loads(json.dumps(C26["alerts"][0]))
    other.update(fingerprint="ffff000011112222", labels={**other["labels"], "model": "m3"})
    policies = [
        _policy(out, cooldown_seconds=600),
        {**_policy(out), "name": "audit-only", "match": {"alertname": "ModelErrorRateHigh", "model": "m3"}, "dry_run": True},  # noqa: E501
    ]  # fmt: skip
    with Mitigator(tmp_path, policies) as m:
        m.post({**C26, "alerts": [C26["alerts"][0]]})
        m.wait_done(1)
        m.post({**C26, "alerts": [other]})
        acts = m.wait_done(3)
        metrics = m.metrics()
    by = {(a["policy"], a["alert"]["labels"]["model"]): a for a in acts}
    assert by[("rollback", "m1")]["outcome"] == "success"
    assert by[("rollback", "m3")]["outcome"] == "skipped"
    assert by[("rollback", "m3")]["detail"].startswith("cooldown: policy acted")
    assert by[("audit-only", "m3")]["outcome"] == "dry_run"
    assert _lines(out) == [["firing", "m1", "a1b2c3d4e5f60718"]]
    assert (
        metrics.get(
            "mlmon_mitigation_actions_total",
            policy="audit-only",
            action="command",
            outcome="dry_run",
        )
        == 1
    )


def test_a_failing_action_is_retried_then_failed_and_counted(tmp_path: Path) -> None:
    policy = {
        **_policy(tmp_path / "x"),
        "action": {"type": "command", "argv": [sys.executable, "-c", "raise SystemExit(3)"]},
    }
    with Mitigator(tmp_path, [policy]) as m:
        m.post({**C26, "alerts": [C26["alerts"][0]]})
        (act,) = m.wait_done(1)
        metrics = m.metrics()
    assert (act["outcome"], act["attempts"]) == ("failure", 2)  # retries: 1
    assert act["detail"].startswith("command ") and "exit status 3" in act["detail"]
    assert (
        metrics.get(
            "mlmon_mitigation_actions_total", policy="rollback", action="command", outcome="failure"
        )
        == 1
    )


def test_killed_mid_action_the_restart_resumes_it_and_nothing_is_lost(tmp_path: Path) -> None:
    out = tmp_path / "ran.jsonl"
    policy = {**_policy(out), "action": {"type": "command", "argv": _recorder(out, sleep=3.0)}}
    m = Mitigator(tmp_path, [policy])
    m.start()
    try:
        assert m.post({**C26, "alerts": [C26["alerts"][0]]})[0] == 200
        deadline = time.monotonic() + 10
        while not [a for a in m.actions() if a["state"] == "running"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        import psutil

        children = psutil.Process(m.pid).children(recursive=True)
        os.killpg(m.pid, signal.SIGKILL)  # mid-action, and the command with it (a pod killed whole)
        for child in children:
            child.kill()
        time.sleep(0.5)
    finally:
        m.stop()
    assert _lines(out) == []
    with Mitigator(tmp_path, [policy], port=m.port) as m2:  # same address: same owner in the store
        (act,) = m2.wait_done(1, timeout=30)
    assert act["outcome"] == "success" and act["attempts"] == 1
    assert _lines(out) == [["firing", "m1", "a1b2c3d4e5f60718"]]


@contextmanager
def _alertmanager(tmp_path: Path, m: Mitigator) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A real Alertmanager delivering to ``m``; yields ``send(extra)`` that posts the
    alert ModelErrorRateHigh{model="m1"} (with ``extra``: startsAt, endsAt) to it."""
    alertmanager = require_tool("prometheus-alertmanager")
    cfg = {
        "route": {"receiver": "mitigator", "group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h"},  # noqa: E501
        "receivers": [{"name": "mitigator", "webhook_configs": [{
            "url": f"{m.url}/v1/alerts", "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": str(tmp_path / "token")}},
        }]}],
    }  # fmt: skip
    (tmp_path / "am.yml").write_text(yaml.safe_dump(cfg))
    am = AlertmanagerProcess(alertmanager, tmp_path / "am.yml", tmp_path)
    alert = {"labels": {"alertname": "ModelErrorRateHigh", "model": "m1", "severity": "page"}}

    def send(extra: dict[str, Any]) -> None:
        req = urllib.request.Request(
            f"{am.url}/api/v2/alerts", data=json.dumps([{**alert, **extra}]).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        urllib.request.urlopen(req, timeout=5).close()

    with am:
        yield send


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def test_a_real_alertmanager_delivers_and_its_resolve_reverts(tmp_path: Path) -> None:
    out = tmp_path / "ran.jsonl"
    with (
        Mitigator(tmp_path, [_policy(out, revert_on_resolve=True)]) as m,
        _alertmanager(tmp_path, m) as send,
    ):
        started = _iso(time.time() - 5)
        send({"startsAt": started})
        m.wait_done(1, timeout=30)
        send({"startsAt": started, "endsAt": _iso(time.time())})  # resolved now
        acts = m.wait_done(2, timeout=30)
    assert [line[0] for line in _lines(out)] == ["firing", "resolved"], acts
    assert sorted(a["kind"] for a in acts) == ["apply", "revert"]


def test_a_503_while_the_store_is_locked_is_retried_by_alertmanager_and_runs_once(
    tmp_path: Path,
) -> None:
    """The store cannot take the notification (another writer holds SQLite's lock): the
    mitigator answers 503 within the busy timeout, Alertmanager retries, and once the
    lock is gone the retry is stored and the action runs exactly once."""
    out = tmp_path / "ran.jsonl"
    with Mitigator(tmp_path, [_policy(out)]) as m, _alertmanager(tmp_path, m) as send:
        lock = sqlite3.connect(tmp_path / "mitigator.db", timeout=0, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            send({"startsAt": _iso(time.time() - 5)})
            deadline = time.monotonic() + 30
            while m.metrics().get("mlmon_webhook_notifications_total", result="unavailable") < 1:
                assert time.monotonic() < deadline, m.log_tail()
                time.sleep(0.2)
            assert m.actions() == []  # nothing was stored
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        (act,) = m.wait_done(1, timeout=40)
        time.sleep(2)  # room for a stray second run
        metrics = m.metrics()
        acts = m.actions()
    assert act["outcome"] == "success"
    assert len(acts) == 1
    assert _lines(out) == [["firing", "m1", act["alert"]["fingerprint"]]]
    assert metrics.get("mlmon_webhook_notifications_total", result="accepted") >= 1


def test_rate_limits_per_policy_and_global(tmp_path: Path) -> None:
    """``max_per_hour`` caps one policy; ``mitigator.max_actions_per_hour`` caps all."""
    out = tmp_path / "ran.jsonl"

    def alert(name: str, fp: str) -> dict[str, Any]:
        a = json.loads(json.dumps(C26["alerts"][0]))
        a.update(fingerprint=fp, labels={**a["labels"], "alertname": name})
        return {**C26, "alerts": [a]}

    policies = [
        {**_policy(out), "name": "a", "match": {"alertname": "A"}, "max_per_hour": 1},
        {**_policy(out), "name": "b", "match": {"alertname": "B"}},
    ]
    with Mitigator(tmp_path, policies, max_actions_per_hour=2) as m:
        for i, (name, fp) in enumerate([("A", "f1"), ("A", "f2"), ("B", "f3"), ("B", "f4")]):
            assert m.post(alert(name, fp))[0] == 200
            m.wait_done(i + 1)
        acts = {a["alert"]["fingerprint"]: a for a in m.actions()}
        metrics = m.metrics()
    assert {fp: a["outcome"] for fp, a in acts.items()} == {
        "f1": "success", "f2": "skipped", "f3": "success", "f4": "skipped",
    }  # fmt: skip
    assert acts["f2"]["detail"] == "rate limit: 1 actions of this policy in the last hour"
    assert acts["f4"]["detail"] == "global rate limit: 2 actions in the last hour"
    assert [line[2] for line in _lines(out)] == ["f1", "f3"]
    assert (
        metrics.get(
            "mlmon_mitigation_actions_total", policy="b", action="command", outcome="skipped"
        )
        == 1
    )


def test_fuzzed_bodies_get_4xx_or_200_never_5xx(tmp_path: Path) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=20,
    )
    alert = st.fixed_dictionaries(
        {"status": st.sampled_from(["firing", "resolved", "x"]),
         "labels": st.dictionaries(st.sampled_from(["alertname", "model", "x"]), st.text(max_size=8), max_size=3),  # noqa: E501
         "startsAt": st.sampled_from(["2025-03-01T10:00:00Z", "0001-01-01T00:00:00Z", "nope", "2025-03-01T10:00:00.123456789+02:00"]),  # noqa: E501
         "fingerprint": st.text(max_size=10)},
        optional={"endsAt": json_values, "annotations": json_values},
    )  # fmt: skip
    payload = st.fixed_dictionaries(
        {"version": st.sampled_from(["4", 4, "3"]), "alerts": st.lists(alert, max_size=3)},
        optional={"truncatedAlerts": json_values, "status": json_values, "groupKey": json_values},
    )
    bodies = (
        st.binary(max_size=200)
        | json_values.map(lambda v: json.dumps(v).encode())
        | payload.map(lambda v: json.dumps(v).encode())
    )

    with Mitigator(tmp_path, [_policy(tmp_path / "ran.jsonl", dry_run=True)]) as m:

        @hypothesis.settings(max_examples=150, deadline=None, database=None)
        @hypothesis.given(bodies)
        def check(body: bytes) -> None:
            status, _ = m.post(body)
            assert status in (200, 400), body

        check()
        assert m.running


def test_a_sidecar_action_shifts_a_real_sidecar_to_its_fallback_and_the_resolve_shifts_back(
    tmp_path: Path,
) -> None:
    """The mitigator calls the sidecar's control API with the model's control token."""
    from tests.support import FaultServer, sidecar
    from tests.test_sidecar_control import control_spec

    side_dir = tmp_path / "side"
    side_dir.mkdir()
    with FaultServer(side_dir) as primary, FaultServer(side_dir) as fallback:
        spec = control_spec(side_dir, primary, fallback)
        with sidecar(spec, log_dir=side_dir) as side:
            admin = f"http://127.0.0.1:{side.metrics_port}"
            policy = {
                "name": "shift-to-fallback",
                "match": {"alertname": "ModelErrorRateHigh"},
                "action": {
                    "type": "sidecar",
                    "op": "route",
                    "fallback_weight": 1.0,
                    "urls": [admin],
                },
                "revert_on_resolve": True,
                "cooldown_seconds": 0,
            }
            models = [{"name": "m1", "upstream": primary.url,
                       "control": {"token_file": str(side_dir / "token")}}]  # fmt: skip
            firing = {**C26, "alerts": [C26["alerts"][0]]}
            with Mitigator(tmp_path, [policy], models=models) as m:

                def weight() -> float:
                    req = urllib.request.Request(
                        f"{admin}/v1/control", headers={"Authorization": f"Bearer {(side_dir / 'token').read_text().strip()}"}  # noqa: E501
                    )  # fmt: skip
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        return float(json.loads(resp.read())["fallback_weight"])

                assert weight() == 0.0
                m.post(firing)
                (act,) = m.wait_done(1)
                assert (act["outcome"], weight()) == ("success", 1.0), act
                resolved = json.loads(json.dumps(firing))
                resolved["alerts"][0].update(status="resolved", endsAt="2025-03-01T10:05:00Z")
                m.post(resolved)
                acts = m.wait_done(2)
                assert weight() == 0.0
                metrics = side.scrape()
    assert sorted((a["kind"], a["outcome"]) for a in acts) == [
        ("apply", "success"),
        ("revert", "success"),
    ]
    assert metrics.get("mlmon_route_weight", upstream="primary") == 1.0


def test_an_apply_waits_min_firing_seconds_from_startsat_but_never_longer_from_now() -> None:
    from monitor.mitigator.service import _due

    now = 1_000_000.0
    assert _due(now - 100, 60, now) == now  # fired 100 s ago: due at once
    assert _due(now - 20, 60, now) == now + 40  # fired 20 s ago: 40 s more
    assert _due(now + 3600, 60, now) == now + 60  # startsAt an hour ahead (skew): 60 s
    assert _due(now + 3600, 0, now) == now


def test_a_worker_that_dies_turns_ready_to_503(tmp_path: Path) -> None:
    """Defence in depth: should the job worker ever end while not stopping, /-/ready
    says so (and why) instead of taking webhooks no one will act on."""
    import asyncio

    from monitor.mitigator.service import Mitigator as Service
    from monitor.spec import parse_spec

    (tmp_path / "token").write_text(TOKEN + "\n")
    spec = parse_spec({
        "apiVersion": "monitor/v1", "service": "t",
        "models": [{"name": "m1", "upstream": "http://127.0.0.1:9"}],
        "mitigations": [_policy(tmp_path / "ran.jsonl")],
        "mitigator": {"token_file": str(tmp_path / "token"),
                      "store": f"sqlite:///{tmp_path / 'mitigator.db'}"},
    })  # fmt: skip
    service = Service(spec)

    async def scenario() -> tuple[int, dict[str, Any], int]:
        before = (await service.handle_ready(None)).status  # type: ignore[arg-type]

        async def dies() -> None:
            raise RuntimeError("boom")

        task = asyncio.create_task(dies())
        await asyncio.wait([task])
        service._worker_ended(task)
        resp = await service.handle_ready(None)  # type: ignore[arg-type]
        return before, json.loads(resp.body), resp.status  # type: ignore[arg-type]

    try:
        before, body, status = asyncio.run(scenario())
    finally:
        service.store.close()
    assert before == 200
    assert (status, body) == (503, {"status": "worker stopped", "error": "RuntimeError: boom"})
