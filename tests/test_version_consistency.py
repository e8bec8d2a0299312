"""Model-version consistency: the weights fingerprint of ``mlmon_model_info``, and the
generated ``ModelVersionSkew`` alert evaluated by a real Prometheus scraping two real
sidecars in front of replicas that serve different versions or different weights."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor import conventions as c
from monitor.generate import to_yaml
from monitor.procs import PrometheusProcess
from monitor.rules import build_rules
from monitor.sidecar.fingerprint import weights_fingerprint, weights_signature
from monitor.spec import load_spec
from tests.support import FaultServer, SidecarProc, require_tool, write_spec

TIME_SCALE = 20.0
SKEW_MINUTES = 1.0
"""``alerting.version_skew_minutes``: 60 s, which TIME_SCALE turns into a 3 s ``for:``."""
FOR_S = SKEW_MINUTES * 60 / TIME_SCALE
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the fingerprint ---------------------------------------------------------------------------


def test_the_fingerprint_of_a_file_is_its_sha256(tmp_path: Path) -> None:
    f = tmp_path / "model.joblib"
    data = bytes(range(256)) * 10_000  # 2.5 MB: several read chunks
    f.write_bytes(data)
    assert weights_fingerprint(f) == sha256(data)


def test_the_fingerprint_of_a_directory_covers_every_file_and_its_name(tmp_path: Path) -> None:
    d = tmp_path / "weights"
    (d / "sub").mkdir(parents=True)
    (d / "a.safetensors").write_bytes(b"A")
    (d / "sub" / "b.safetensors").write_bytes(b"B")
    listing = f"{sha256(b'A')}  a.safetensors\n{sha256(b'B')}  sub/b.safetensors\n"
    assert weights_fingerprint(d) == sha256(listing.encode())
    (d / "sub" / "b.safetensors").rename(d / "sub" / "c.safetensors")
    assert weights_fingerprint(d) != sha256(listing.encode())


def test_the_signature_changes_when_the_file_is_replaced(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    f.write_bytes(b"one")
    before = weights_signature(f)
    assert weights_signature(f) == before
    tmp = tmp_path / "w.new"
    tmp.write_bytes(b"two")
    tmp.replace(f)  # how deployments swap weights
    assert weights_signature(f) != before


def test_a_missing_weights_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        weights_fingerprint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="holds no file"):
        weights_fingerprint(tmp_path / "empty")


def test_a_device_or_fifo_is_refused_instead_of_read_forever(tmp_path: Path) -> None:
    """Found by a new user: ``weights_path: /dev/zero`` hashed forever at 100 % CPU and
    the sidecar could not stop."""
    with pytest.raises(OSError, match="not a regular file"):
        weights_fingerprint(Path("/dev/zero"))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        weights_fingerprint(fifo)  # opening it would block until a writer came
    d = tmp_path / "d"
    d.mkdir()
    (d / "w.bin").write_bytes(b"x")
    (d / "zero").symlink_to("/dev/zero")  # skipped: not a regular file under a directory
    assert weights_fingerprint(d) == weights_fingerprint(_only(tmp_path, b"x"))


def _only(tmp: Path, data: bytes) -> Path:
    """A directory holding one file ``w.bin`` with ``data``."""
    d = tmp / "only"
    d.mkdir()
    (d / "w.bin").write_bytes(data)
    return d


def test_setting_stop_ends_a_hash_within_one_read(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (8 << 20))
    stop = threading.Event()
    stop.set()
    with pytest.raises(OSError, match="hashing stopped"):
        weights_fingerprint(big, stop)


def test_a_sidecar_hashing_huge_weights_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    fault_dir = tmp_path / "fault"
    fault_dir.mkdir()
    big = tmp_path / "big.bin"
    with big.open("wb") as f:  # sparse: 64 GiB that cost nothing to write
        f.truncate(64 << 30)
    with FaultServer(fault_dir) as fault:
        spec = write_spec(tmp_path / "m.yaml", fault.url, weights_path=str(big))
        side = SidecarProc(spec, "m", tmp_path)
        side.start()
        try:
            time.sleep(1.0)  # the hash is under way
            t0 = time.monotonic()
            os.killpg(side.pid, signal.SIGTERM)
            side._proc.wait(timeout=15)  # type: ignore[union-attr]
            took = time.monotonic() - t0
        finally:
            side.stop()
    assert took < 10, f"the sidecar took {took:.1f}s to stop while hashing"


# --- two sidecars, a real Prometheus -------------------------------------------------------


def _post(url: str) -> None:
    with _OPENER.open(urllib.request.Request(url, method="POST"), timeout=5) as resp:
        resp.read()


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with _OPENER.open(url, timeout=5) as resp:
        doc = json.loads(resp.read())
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def _wait(check: Callable[[], bool], timeout: float, what: Callable[[], str]) -> float:
    t0 = time.monotonic()
    while not check():
        assert time.monotonic() - t0 < timeout, what()
        time.sleep(0.2)
    return time.monotonic() - t0


class Fleet:
    """Two fault-server replicas of model ``m``, a sidecar in front of each with its own
    weights file, and a Prometheus evaluating the generated rules."""

    def __init__(self, tmp: Path, stack: ExitStack, weights: tuple[bytes, bytes]) -> None:
        prometheus = require_tool("prometheus")
        for i in range(2):
            (tmp / f"r{i}").mkdir(exist_ok=True)
        self.replicas = [stack.enter_context(FaultServer(tmp / f"r{i}")) for i in range(2)]
        self.weights = [tmp / f"r{i}" / "model.joblib" for i in range(2)]
        self.sidecars = []
        spec_path = tmp / "r0" / "monitor.yaml"
        for i, (replica, file) in enumerate(zip(self.replicas, self.weights, strict=True)):
            file.write_bytes(weights[i])
            path = write_spec(tmp / f"r{i}" / "monitor.yaml", replica.url, weights_path=str(file))
            data = yaml.safe_load(path.read_text())
            data["alerting"] = {"version_skew_minutes": SKEW_MINUTES}
            path.write_text(yaml.safe_dump(data))
            self.sidecars.append(stack.enter_context(SidecarProc(path, "m", tmp / f"r{i}")))
        spec = load_spec(spec_path)
        rules = tmp / "rules.yml"
        rules.write_text(to_yaml(build_rules(spec, time_scale=TIME_SCALE), "test"))
        self.prom_proc = stack.enter_context(
            PrometheusProcess(
                prometheus, tmp, rule_files=[rules],
                jobs={spec.alerting.sidecar_job: [f"127.0.0.1:{s.metrics_port}" for s in self.sidecars]},  # noqa: E501
            )
        )  # fmt: skip
        self.prom = self.prom_proc.url

    def skew_alerts(self) -> list[dict[str, Any]]:
        return _query(self.prom, f'ALERTS{{alertname="{c.ALERT_MODEL_VERSION_SKEW}"}}')

    def firing(self) -> bool:
        return any(a["metric"]["alertstate"] == "firing" for a in self.skew_alerts())

    def info(self) -> list[dict[str, str]]:
        return sorted(
            (r["metric"] for r in _query(self.prom, c.MODEL_INFO)),
            key=lambda lab: lab["instance"],
        )

    def diagnosis(self) -> str:
        return (
            f"info={self.info()}\nalerts={self.skew_alerts()}\n"
            f"sidecars={[s.scrape().series(c.MODEL_INFO) for s in self.sidecars]}\n"
            f"prometheus log:\n{self.prom_proc.log_tail(15)}"
        )

    def agree(self, version: str, fingerprint: str) -> bool:
        got = [(lab["version"], lab.get(c.LABEL_FINGERPRINT, "")) for lab in self.info()]
        return got == [(version, fingerprint)] * 2


APPROVED = b"approved weights v7"


@contextmanager
def fleet(tmp: Path, weights: tuple[bytes, bytes] = (APPROVED, APPROVED)) -> Iterator[Fleet]:
    with ExitStack() as stack:
        yield Fleet(tmp, stack, weights)


@pytest.mark.timeout(120)
def test_replicas_on_two_versions_fire_model_version_skew_and_agreeing_again_resolves_it(
    tmp_path: Path,
) -> None:
    approved = sha256(APPROVED)
    with fleet(tmp_path) as f:
        # Same version, same weights: the alert stays silent for well past its for:.
        _wait(lambda: f.agree("7", approved), 20, f.diagnosis)
        time.sleep(2 * FOR_S + 2)
        assert f.skew_alerts() == [], f.diagnosis()

        # Replica 1 rolls out version 8 with new weights; replica 0 stays on 7.
        new = tmp_path / "r1" / "model.new"
        new.write_bytes(b"weights v8")
        new.replace(f.weights[1])
        _post(f"{f.replicas[1].url}/admin/version/8")
        took = _wait(f.firing, 30, f.diagnosis)
        assert took >= FOR_S - 1.5, f"fired after {took:.1f}s, before its for: of {FOR_S}s"
        (alert,) = f.skew_alerts()
        assert alert["metric"]["model"] == "m"
        assert alert["metric"][c.LABEL_SEVERITY] == c.SEVERITY_TICKET
        assert float(alert["value"][1]) == 1
        # The sidecar re-hashed the weights when the version changed.
        info = {lab["version"]: lab[c.LABEL_FINGERPRINT] for lab in f.info()}
        assert info == {"7": approved, "8": sha256(b"weights v8")}

        # The rollout completes: both on 8, same weights; the alert resolves.
        new = tmp_path / "r0" / "model.new"
        new.write_bytes(b"weights v8")
        new.replace(f.weights[0])
        _post(f"{f.replicas[0].url}/admin/version/8")
        _wait(lambda: f.agree("8", sha256(b"weights v8")), 20, f.diagnosis)
        _wait(lambda: f.skew_alerts() == [], 20, f.diagnosis)


@pytest.mark.timeout(120)
def test_the_same_version_with_different_weights_fires_model_version_skew(tmp_path: Path) -> None:
    """Replica 1's weights differ (a bad copy) while both report version 7: only the
    fingerprint tells them apart."""
    bad = APPROVED.replace(b"v", b"w")  # one flipped bit: 'v' 0x76, 'w' 0x77
    with fleet(tmp_path, (APPROVED, bad)) as f:
        took = _wait(f.firing, 30, f.diagnosis)
        versions = {lab["version"] for lab in f.info()}
        fingerprints = {lab[c.LABEL_FINGERPRINT] for lab in f.info()}
    assert versions == {"7"}
    assert fingerprints == {sha256(APPROVED), sha256(bad)}
    assert took >= FOR_S - 1.5
