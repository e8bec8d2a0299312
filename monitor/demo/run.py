"""``monitor demo``: the whole loop on a real model server, in phases, with a summary.

1. train the approved model (version 2) and the previous version (1) on the
   breast-cancer data bundled with scikit-learn; write the drift baseline and the
   golden-set inputs (:mod:`monitor.demo.data`);
2. generate the rules, their promtool tests, the Alertmanager config and the Grafana
   dashboards from ``deploy/monitor.yaml`` (``monitor generate``) into ``OUT/generated``;
3. start, on 127.0.0.1: two MLServer replicas (primary: version 2; fallback:
   version 1), the sidecar, the mitigator, the drift job (``drift serve``), the
   golden-set canary, Prometheus and Alertmanager (:mod:`monitor.demo.stack`);
4. send real V2 requests through the sidecar in phases (:mod:`monitor.demo.traffic`):
   **healthy**; **shift** (a covariate shift: the same real rows re-weighted towards
   large tumours) until the drift job's DatasetDriftDetected fires; **fault** (the
   primary MLServer hangs: SIGSTOP) until the mitigator has shifted the traffic to
   the fallback; **recovery** (the primary answers again) until the page resolves
   and the mitigator shifts the traffic back;
5. print a live timeline read from Prometheus (:mod:`monitor.demo.timeline`);
6. print a summary (per incident: time to detect, time to mitigate), write
   ``summary.json``, the drift report (evidently's HTML) over the shifted window,
   and ``report.html`` (the key series over the run, and every dashboard panel
   rendered from the live Prometheus); stop every process it started; exit 0.

Without Prometheus or Alertmanager it says what is missing and how to get it, and
runs the rest (sidecar, traffic, drift job, canary) on fixed phase lengths.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monitor import conventions as c
from monitor.demo import stack as st
from monitor.demo.timeline import HEADER, Prometheus, Tick, queries, render, sample
from monitor.demo.traffic import Traffic
from monitor.errors import MonitorError
from monitor.modelserver import repo_root


@dataclass(frozen=True)
class Pace:
    """Phase lengths in seconds: ``min`` always, then until the phase's event, at most
    ``max``; ``hold`` after the event (so the timeline shows the effect)."""

    healthy: float
    shift_max: float
    fault_max: float
    recovery_max: float
    hold: float
    tick: float
    rate: float


FAST = Pace(healthy=10, shift_max=35, fault_max=35, recovery_max=60, hold=1.5, tick=2, rate=30)
FULL = Pace(healthy=40, shift_max=60, fault_max=60, recovery_max=120, hold=10, tick=3, rate=30)


@dataclass
class Incident:
    """One incident of the run: wall-clock unix seconds (None: did not happen)."""

    name: str
    started: float
    detected: float | None = None
    detected_by: str = ""
    mitigated: float | None = None
    mitigated_by: str = ""
    resolved: float | None = None
    reverted: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the durations from ``started``."""

        def since(t: float | None) -> float | None:
            return None if t is None else round(t - self.started, 2)

        return {
            "name": self.name,
            "started": self.started,
            "detected_by": self.detected_by,
            "mitigated_by": self.mitigated_by,
            "time_to_detect_seconds": since(self.detected),
            "time_to_mitigate_seconds": since(self.mitigated),
            "time_to_resolve_seconds": since(self.resolved),
            "time_to_revert_seconds": since(self.reverted),
        }


@dataclass
class DemoResult:
    """What the run measured (also written to ``summary.json``)."""

    out: Path
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)
    ticks: list[Tick] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    alerts: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """``alertname[severity]`` -> firing intervals (unix seconds), from Prometheus."""
    drift_runs: list[dict[str, Any]] = field(default_factory=list)
    """Every drift verdict of the run: ``{t, share, detected}`` from Prometheus."""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    coverage: dict[str, int] = field(default_factory=dict)
    """Bad values sent by the client and counted by the sidecar (``*_sent``, ``*_counted``)."""
    pids: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "out": str(self.out),
            "phases": self.phases,
            "ticks": [t.to_dict() for t in self.ticks],
            "incidents": [i.to_dict() for i in self.incidents],
            "actions": self.actions,
            "alerts": self.alerts,
            "drift_runs": self.drift_runs,
            "counts": self.counts,
            "coverage": self.coverage,
            "pids": self.pids,
            "missing": self.missing,
            "files": self.files,
        }


_T0 = [time.monotonic()]


def _say(msg: str) -> None:
    if msg.startswith("["):
        msg = f"{msg}  (+{time.monotonic() - _T0[0]:.0f} s)"
    print(msg, flush=True)


def run_demo(out_dir: Path | None = None, *, fast: bool = False) -> DemoResult:
    """Run the demo end to end (module docstring) and return what it measured.

    Args:
        out_dir: where everything goes (default: a new temp directory, kept).
        fast: shorter phases (about 90 s in all, for tests) instead of about 4 min.

    Raises:
        MonitorError: a process could not start (the message says why and how to fix
            it, e.g. ``make servers``).
    """
    from monitor.demo.data import prepare
    from monitor.generate import generate

    pace = FAST if fast else FULL
    out = _out_dir(out_dir)
    result = DemoResult(out=out.resolve())
    t_start = _T0[0] = time.monotonic()
    base_spec = repo_root() / "deploy" / "monitor.yaml"

    _say("[1/6] training the model (version 2) and its previous version (1) on the bundled "
         "breast-cancer data; baseline and golden set")  # fmt: skip
    data = prepare(out)
    _say(
        f"      held-out accuracy: v2 {data.primary.accuracy:.3f}, v1 {data.previous.accuracy:.3f}"
    )

    _say(f"[2/6] generating rules, promtool tests, Alertmanager config and dashboards from "
         f"{base_spec.relative_to(repo_root())}")  # fmt: skip
    gen = generate(base_spec, out / "generated")
    result.files["generated"] = str(out / "generated")
    _say(f"      {len(gen.written) + len(gen.unchanged)} files in {out / 'generated'}")

    tools, missing = st.find_tools()
    for m in missing:
        result.missing.append(m.tool)
        _say(f"      ! {m.tool} not found: {m.how}. Alerts, mitigations and the dashboards "
             "preview need it; the rest runs.")  # fmt: skip

    stack = st.Stack(
        out=out, data=data, base_spec=base_spec, tools=tools,
        time_scale=st.FAST_TIME_SCALE if fast else st.TIME_SCALE,
    )  # fmt: skip
    _say("[3/6] starting MLServer x2, sidecar, mitigator, drift job, canary"
         + ", Prometheus, Alertmanager" * (not missing) + " on 127.0.0.1")  # fmt: skip
    # SIGTERM must stop the processes too, as Ctrl-C does: they run in their own
    # process groups and would outlive the demo.
    previous = signal.signal(signal.SIGTERM, _terminate)
    stack.start(_say)
    result.pids = stack.pids()
    try:
        _say("      " + ", ".join(f"{n} (pid {p})" for n, p in result.pids.items()))
        _run_phases(stack, data, pace, result)
        _collect(stack, result)
        _reports(stack, result)
    finally:
        _say("[5/6] stopping every process the demo started")
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
    summary = out / "summary.json"
    summary.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    result.files["summary"] = str(summary)
    _say("[6/6] summary")
    _print_summary(result)
    _say(f"done in {time.monotonic() - t_start:.0f} s; everything is in {out}")
    return result


def _out_dir(out_dir: Path | None) -> Path:
    """A new temp directory, or ``out_dir`` created if needed; it must be empty: the
    files of an earlier run (its mitigator store, the sidecar's control state, the
    Prometheus data) would be read back and falsify this one.

    Raises:
        MonitorError: ``out_dir`` is not an empty directory, or cannot be created.
    """
    if out_dir is None:
        return Path(tempfile.mkdtemp(prefix="monitor-demo-"))
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise MonitorError(
                f"--out {out}: not empty (an earlier run's state would be read back); "
                "give a new directory, or leave --out out for a temp one"
            )
    except OSError as exc:
        raise MonitorError(f"--out {out}: {exc.strerror or exc}") from None
    return out


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _mitigator_actions(stack: st.Stack) -> list[dict[str, Any]]:
    import urllib.request

    req = urllib.request.Request(
        f"{stack.mitigator_url}/v1/actions?limit=100",
        headers={"Authorization": f"Bearer {stack.mitigator_token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return list(json.loads(resp.read())["actions"])
    except (OSError, ValueError, KeyError):
        return []


def _run_phases(stack: st.Stack, data: Any, pace: Pace, result: DemoResult) -> None:
    prom = Prometheus(stack.prometheus_url) if stack.prometheus_url else None
    slo = "availability"
    qs = queries(data.primary.name, slo)
    traffic = Traffic(stack.sidecar_url, data.primary.name, data, rate=pace.rate)
    labels_path = stack.out / "labels.csv"
    traffic.write_labels(labels_path)
    t0 = time.monotonic()
    result.incidents.append(Incident("covariate shift", 0.0))
    result.incidents.append(Incident("primary model server hangs", 0.0))
    drift, fault = result.incidents

    last = {"t": time.monotonic(), "ok": 0, "error": 0}
    latest: list[dict[str, Any]] = []  # the mitigator's audit log, read once per tick

    def tick(phase: str) -> Tick:
        traffic.write_labels(labels_path)
        row = sample(prom, qs, Tick(t=time.monotonic() - t0, phase=phase))
        if prom is None:  # the client's own counts: better than a row of dashes
            now = time.monotonic()
            ok = sum(n["ok"] for n in traffic.counts.values())
            err = sum(n["error"] for n in traffic.counts.values())
            sent = ok - last["ok"] + err - last["error"]
            row.rps = sent / max(1e-9, now - last["t"])
            row.error_ratio = (err - last["error"]) / sent if sent else None
            last.update(t=now, ok=ok, error=err)
        latest[:] = _mitigator_actions(stack)
        row.mitigations = sum(1 for a in latest if a["outcome"] == c.MITIGATION_SUCCESS)
        result.ticks.append(row)
        _say("      " + render(row))
        return row

    def phase(name: str, min_s: float, max_s: float, done: Any = None) -> None:
        traffic.phase = name
        begin = time.time()
        start = time.monotonic()
        event_at: float | None = None
        while True:
            time.sleep(max(0.0, pace.tick - (time.monotonic() - t0) % pace.tick))
            row = tick(name)
            elapsed = time.monotonic() - start
            if event_at is None and done is not None and done(row):
                event_at = time.monotonic()
            if elapsed >= min_s and (
                done is None or elapsed >= max_s or (
                    event_at is not None and time.monotonic() - event_at >= pace.hold
                )
            ):  # fmt: skip
                break
        result.phases[name] = (begin, time.time())

    def actions_done(kind: str) -> bool:
        """Whether a ``kind`` job succeeded, in the audit log read by this tick."""
        return any(
            a["kind"] == kind and a["state"] == "done" and a["outcome"] == c.MITIGATION_SUCCESS
            for a in latest
        )

    source = "from Prometheus" if prom else "from the client: no Prometheus, no alerts"
    _say(f"[4/6] traffic through the sidecar at about {pace.rate:.0f} requests/s, in phases "
         f"(timeline {source})")  # fmt: skip
    _say("      " + HEADER)
    traffic.start()
    try:
        phase("healthy", pace.healthy, pace.healthy)
        drift.started = time.time()
        phase(
            "shift", 0 if prom else pace.healthy, pace.shift_max if prom else pace.healthy,
            (lambda row: any(a.startswith(c.ALERT_DATASET_DRIFT_DETECTED) for a in row.alerts))
            if prom else None,
        )  # fmt: skip
        # The drift report of the shifted window is written while the demo goes on.
        shift = result.phases["shift"]
        report = threading.Thread(
            target=_drift_report, args=(stack, result, shift), name="drift-report", daemon=True
        )
        report.start()
        fault.started = time.time()
        stack.freeze_primary()
        phase("fault", 0 if prom else pace.healthy, pace.fault_max if prom else pace.healthy,
              (lambda row: actions_done("apply")) if prom else None)  # fmt: skip
        stack.thaw_primary()
        phase("recovery", 0 if prom else pace.healthy,
              pace.recovery_max if prom else pace.healthy,
              (lambda row: actions_done("revert")) if prom else None)  # fmt: skip
        report.join(60)
    finally:
        stack.thaw_primary()
        traffic.stop()
        traffic.write_labels(labels_path)
    result.counts = {p: dict(n) for p, n in traffic.counts.items()}
    counted = _sidecar_states(stack)
    for state, sent in sorted(traffic.bad_rows.items()):
        result.coverage[f"{state}_sent"] = sent
        result.coverage[f"{state}_counted"] = counted.get(state, 0)


def _sidecar_states(stack: st.Stack) -> dict[str, int]:
    """Feature values by state other than present, summed over features, from the sidecar."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{stack.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for smp in family.samples:
            if (
                smp.name == c.FEATURE_VALUES_TOTAL
                and smp.labels.get(c.LABEL_STATE) != c.STATE_PRESENT
            ):
                state = smp.labels[c.LABEL_STATE]
                out[state] = out.get(state, 0) + int(smp.value)
    return out


def _intervals(values: list[list[Any]], step: float) -> list[tuple[float, float]]:
    """Firing intervals from a range query's samples of ``ALERTS`` (value 1)."""
    out: list[tuple[float, float]] = []
    for t, _ in values:
        t = float(t)
        if out and t - out[-1][1] <= step * 1.5:
            out[-1] = (out[-1][0], t)
        else:
            out.append((t, t))
    return out


def _collect(stack: st.Stack, result: DemoResult) -> None:
    """Alert intervals, drift verdicts and mitigator actions of the run, then the incidents."""
    result.actions = _mitigator_actions(stack)
    drift, fault = result.incidents
    if not stack.prometheus_url:
        return
    prom = Prometheus(stack.prometheus_url)
    start = min(b for b, _ in result.phases.values()) - 5
    end = time.time()
    for series in prom.query_range('ALERTS{alertstate="firing"}', start, end, 1):
        m = series["metric"]
        key = f"{m.get('alertname')}[{m.get(c.LABEL_SEVERITY, '?')}]"
        result.alerts.setdefault(key, []).extend(_intervals(series["values"], 1))
    for series in prom.query_range(f"max({c.DATASET_DRIFT_SHARE})", start, end, 1):
        result.drift_runs = [{"t": float(t), "share": float(v)} for t, v in series["values"]]
    for series in prom.query_range(f"max({c.DATASET_DRIFT_DETECTED})", start, end, 1):
        detected = {float(t): v == "1" for t, v in series["values"]}
        for r in result.drift_runs:
            r["detected"] = detected.get(r["t"], False)

    # Detected = the notification reached the on-call person (the pager or ticket webhook).
    rx = stack.receiver
    drift.detected = rx.first("/ticket", c.ALERT_DATASET_DRIFT_DETECTED, drift.started)
    drift.detected_by = f"{c.ALERT_DATASET_DRIFT_DETECTED} ticket delivered"
    drift.mitigated_by = "none (a ticket: retrain or investigate the new subpopulation)"
    page = f"{c.ALERT_ERROR_BUDGET_BURN}[{c.SEVERITY_PAGE}]"
    # The mitigator may hear of the page before the pager does (its route waits less).
    heard = [
        float(a["created_at"]) for a in result.actions
        if a["kind"] == "apply" and float(a["created_at"]) >= fault.started
    ]  # fmt: skip
    paged = rx.first("/page", c.ALERT_ERROR_BUDGET_BURN, fault.started)
    fault.detected = min([t for t in (paged, *heard) if t is not None], default=None)
    fault.detected_by = f"{c.ALERT_ERROR_BUDGET_BURN} delivered by Alertmanager"
    ends = [e for k, ivs in result.alerts.items() if k == page for s, e in ivs
            if s >= fault.started]  # fmt: skip
    fault.resolved = max(ends) + 1 if ends else None
    for a in result.actions:
        if a["outcome"] != c.MITIGATION_SUCCESS or not a.get("finished_at"):
            continue
        if a["kind"] == "apply" and fault.mitigated is None:
            fault.mitigated = float(a["finished_at"])
            fault.mitigated_by = f"{a['policy']}: {a['detail']}"
        elif a["kind"] == "revert":
            fault.reverted = float(a["finished_at"])


def _drift_report(stack: st.Stack, result: DemoResult, shift: tuple[float, float]) -> None:
    """``monitor drift run`` over the shifted window, with evidently's HTML report."""
    from monitor.drift.job import RunOptions, run_once

    assert stack.spec is not None
    try:
        run_once(
            stack.spec,
            stack.data.primary.name,
            RunOptions(out=stack.out / "drift-report", since=shift[1] - shift[0], now=shift[1]),
        )
        result.files["drift_report"] = str(stack.out / "drift-report" / "report.html")
    except MonitorError as exc:
        _say(f"      drift report not written: {exc}")


def _reports(stack: st.Stack, result: DemoResult) -> None:
    """report.html with the key series and the dashboards."""
    from monitor.demo.report import write_report

    result.files.update(write_report(stack, result))


def _print_summary(result: DemoResult) -> None:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f} s"

    for inc in result.incidents:
        d = inc.to_dict()
        _say(f"      incident: {inc.name}")
        detect, mitigate = d["time_to_detect_seconds"], d["time_to_mitigate_seconds"]
        _say(f"        time to detect   {fmt(detect):>8}  ({inc.detected_by or '-'})")
        _say(f"        time to mitigate {fmt(mitigate):>8}  ({inc.mitigated_by or '-'})")
        if inc.resolved or inc.reverted:
            _say(f"        alert resolved   {fmt(d['time_to_resolve_seconds']):>8}; route "
                 f"reverted {fmt(d['time_to_revert_seconds'])}")  # fmt: skip
    healthy = result.phases.get("healthy")
    if healthy and result.alerts:
        during = sorted(
            k for k, ivs in result.alerts.items()
            if any(s <= healthy[1] and e >= healthy[0] for s, e in ivs)
        )  # fmt: skip
        _say(f"      alerts during the healthy phase: {', '.join(during) or 'none'}")
    cov = result.coverage
    if cov:
        _say(
            f"      feature coverage: the sidecar counted {cov.get('out_of_range_counted', 0)} "
            f"out-of-range values ({cov.get('out_of_range_sent', 0)} sent) and "
            f"{cov.get('null_counted', 0)} nulls ({cov.get('null_sent', 0)} sent)"
        )
    for name, n in result.counts.items():
        _say(f"      {name:<9} {n.get('ok', 0):5d} ok  {n.get('error', 0):5d} errors")
    for key, path in result.files.items():
        _say(f"      {key.replace('_', ' ')}: {path}")


def main(out_dir: Path | None, fast: bool) -> int:
    """CLI entry: run the demo, return the exit code."""
    try:
        run_demo(out_dir, fast=fast)
    except MonitorError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    return 0


__all__ = ["FAST", "FULL", "DemoResult", "Incident", "Pace", "main", "run_demo"]
