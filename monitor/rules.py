"""Prometheus recording and alerting rules generated from the spec, and their promtool tests.

Pure functions of a validated :class:`~monitor.spec.MonitorSpec`: nothing here reads or
writes a file (``monitor/generate.py`` renders the dicts as YAML). Every metric, label,
recording-rule and alert name comes from :mod:`monitor.conventions`.

SLIs (one set of rules per ``slos[]`` entry, labels ``model`` and ``slo``)

* **availability**: bad = requests whose ``outcome`` is in ``ERROR_OUTCOMES``
  (server_error, timeout, unreachable); valid = every request of the model except
  ``client_cancelled``. A client that hangs up says nothing about whether the model would
  have answered: counting it as good hides an outage whose clients give up before the
  sidecar's read timeout, counting it as bad charges the budget for impatient clients.
  Such hangs show in the latency SLI instead, which counts every request with the time
  until it ended. Requests for a model the spec does not name (``model="other"``) never
  count: every selector names the SLO's model.
* **latency**: bad = requests slower than ``threshold_seconds`` =
  ``_count - _bucket{le="<threshold>"}`` of ``mlmon_request_duration_seconds``, every
  outcome (a fast 502 is an availability problem; a slow 504 is both).

Zero traffic (case C22): every ratio divides by ``(denominator > 0)``, so a window
without requests gives no sample, never NaN or Inf. The compliance-window ratio is a
ratio of sums (``sum_over_time`` of the recorded 5 m rates), so a quiet 5-minute slot
neither poisons it nor weighs as much as a busy one; sloth's mean of 5 m ratios does both.

Burn-rate alerts follow the SRE workbook's multi-window, multi-burn-rate recipe with
sloth's google-30d windows (:func:`burn_rate_windows`); the alert catalogue is
:data:`ALERTS`. ``time_scale`` divides every duration (range selectors, offsets,
``for:``) so an integration test can run the burn-rate alerts with short windows; rule
names keep their nominal windows (``ratio_rate5m`` reads ``[5s]`` at ``time_scale=60``).
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from prometheus_client.utils import floatToGoString

from monitor import conventions as c
from monitor.protocols import make_adapter
from monitor.spec import ModelSpec, MonitorSpec, SLOSpec

__all__ = [
    "ALERTS",
    "AlertDef",
    "BurnWindow",
    "alert_def",
    "build_rule_tests",
    "build_rules",
    "burn_rate_windows",
    "mitigation_for",
]


_DAY = 86_400
_RATE_WINDOW = 900
"""Range of the data-quality ratios (coverage, parse errors, capture drops): 15 m, as
``alerting.*`` documents them."""
_EVENT_WINDOW = 600
"""Range in which one increase of an event counter (XID, ECC, canary fail) keeps its
alert firing: 10 m, long enough to be delivered, short enough to resolve."""
_ABSENT_WINDOW = 300
"""No sample of a model's telemetry for this long (then ``for``) is 'telemetry missing'."""
_MODEL_INFO_LOOKBACK = 3600
"""How far back SidecarDown looks for the model a dead target served."""


# --------------------------------------------------------------------------- burn rates


@dataclass(frozen=True)
class BurnWindow:
    """One row of the multi-window, multi-burn-rate table.

    The alert fires when the error ratio over both ``long`` and ``short`` exceeds
    ``factor * (1 - objective)``: at that burn rate ``budget_share`` of the window's
    error budget is spent within ``long``.
    """

    severity: str
    """``page`` or ``ticket``."""
    long: int
    """Long window, seconds."""
    short: int
    """Short window, seconds (long / 12: it makes the alert reset soon after the burn stops)."""
    budget_share: float
    """Share of the whole window's error budget spent within ``long`` at the threshold."""
    factor: float
    """Burn rate = budget_share x SLO window / long window (14.4 for 2 % in 1 h of 30 d)."""


# Source: the SRE workbook, "Alerting on SLOs" (https://sre.google/workbook/alerting-on-slos/),
# table of recommended multiwindow, multi-burn-rate parameters: page on 2 % of the budget in
# 1 h and on 5 % in 6 h, ticket on 10 % in 3 d, short windows 1/12 of the long ones. Sloth's
# internal/alert/windows/google-30d.yaml (v0.16.0, "Numbers obtained from" the same page) adds
# the ticket row 10 % in 1 d with a 2 h short window; we use sloth's four rows. The factors
# are computed from the SLO window, never hard-coded: 14.4/6/3/1 for 30 d, 13.44/5.6/2.8/0.93
# for 28 d.
_BURN_TABLE: tuple[tuple[str, int, int, float], ...] = (
    (c.SEVERITY_PAGE, 3600, 300, 0.02),
    (c.SEVERITY_PAGE, 6 * 3600, 1800, 0.05),
    (c.SEVERITY_TICKET, _DAY, 2 * 3600, 0.10),
    (c.SEVERITY_TICKET, 3 * _DAY, 6 * 3600, 0.10),
)


def burn_rate_windows(window_seconds: int) -> list[BurnWindow]:
    """The burn-rate rows for an SLO window of ``window_seconds``.

    A row whose long window exceeds the SLO window is left out (a 3 d look-back says
    nothing about a 1 d objective).
    """
    return [
        BurnWindow(sev, long, short, share, share * window_seconds / long)
        for sev, long, short, share in _BURN_TABLE
        if long <= window_seconds
    ]


# --------------------------------------------------------------------------- the catalogue


@dataclass(frozen=True)
class AlertDef:
    """One alert of the catalogue.

    ``summary`` and ``description`` are Prometheus templates (``{{ $labels.model }}``,
    ``{{ $value | humanizePercentage }}``) in which ``@{name}`` fields are filled from the
    spec when the rules are built (``@{for}`` is the rendered ``for:``).
    """

    name: str
    severity: str
    summary: str
    description: str
    for_: str
    """A duration (``5m``, ``0s``) or a spec-derived one: ``3 x drift.schedule_seconds``,
    ``alerting.version_skew_minutes``."""
    why_for: str
    """Why this ``for:``."""


_PAGE, _TICKET, _INFO = c.SEVERITY_PAGE, c.SEVERITY_TICKET, c.SEVERITY_INFO
_DRIFT_FOR = "3 x drift.schedule_seconds"
_SKEW_FOR = "alerting.version_skew_minutes"

ALERTS: tuple[AlertDef, ...] = (
    AlertDef(
        c.ALERT_SIDECAR_DOWN,
        _TICKET,
        "Prometheus cannot scrape sidecar {{ $labels.instance }}",
        "Scrapes of {{ $labels.instance }} (job {{ $labels.job }}) have failed for @{for}: "
        "the sidecar is down, restarting or unreachable from Prometheus. The alerts of the "
        "model it fronts are blind meanwhile, and clients sent through it fail.",
        "5m",
        "A restart or a rescheduled pod takes a minute or two; 5 m ignores those.",
    ),
    AlertDef(
        c.ALERT_SIDECAR_ABSENT,
        _TICKET,
        "No sidecar target of job {{ $labels.job }} is discovered",
        "Prometheus has had no target in job {{ $labels.job }} for @{for}: service "
        "discovery or the scrape config lost the sidecars, so no model alert can fire.",
        "10m",
        "Service discovery settles within minutes after a deploy; 10 m ignores that.",
    ),
    AlertDef(
        c.ALERT_MODEL_TELEMETRY_MISSING,
        _PAGE,
        "No telemetry from model {{ $labels.model }}",
        "Prometheus has stored no sample of @{metric} for model {{ $labels.model }} for "
        "@{silence}: no sidecar of the model is scraped. Its SLO and data-quality "
        "alerts cannot fire, and any that resolved may have resolved only because their "
        "series went stale (case C23).",
        "5m",
        "Added to the 5 m absence window, 10 m without a sample; it also keeps a fresh "
        "Prometheus from paging before its first scrape.",
    ),
    AlertDef(
        c.ALERT_UPSTREAM_NOT_READY,
        _TICKET,
        "Model server behind {{ $labels.instance }} is not ready",
        "The model server of {{ $labels.model }} behind sidecar {{ $labels.instance }} has "
        "failed its readiness probe for @{for}; the sidecar reports itself not ready, so "
        "load balancers should route around it. If it serves traffic anyway, "
        "ErrorBudgetBurn will page.",
        "5m",
        "Loading a model takes a few minutes after a restart or a rollout.",
    ),
    AlertDef(
        c.ALERT_ERROR_BUDGET_BURN,
        _PAGE,
        "Model {{ $labels.model }} is burning its {{ $labels.slo }} error budget fast",
        "Model {{ $labels.model }} fails requests (server_error, timeout, unreachable) fast "
        "enough to spend @{spend} of the @{window} error budget of its {{ $labels.slo }} SLO "
        "(@{objective} of requests succeed): the error ratio is above @{conditions}.@{note}",
        "2m",
        "The short windows already confirm the burn; 2 m more rides out one bad scrape.",
    ),
    AlertDef(
        c.ALERT_ERROR_BUDGET_BURN,
        _TICKET,
        "Model {{ $labels.model }} is steadily burning its {{ $labels.slo }} error budget",
        "Model {{ $labels.model }} fails requests (server_error, timeout, unreachable) fast "
        "enough to spend @{spend} of the @{window} error budget of its {{ $labels.slo }} SLO "
        "(@{objective} of requests succeed): the error ratio is above @{conditions}.@{note}",
        "15m",
        "Slow burns need no haste; 15 m keeps a ratio hovering at the threshold of the 2 h "
        "and 6 h short windows from opening and closing tickets, and is small against 1 d.",
    ),
    AlertDef(
        c.ALERT_LATENCY_BUDGET_BURN,
        _PAGE,
        "Model {{ $labels.model }} is burning its {{ $labels.slo }} latency budget fast",
        "Model {{ $labels.model }} answers too many requests slower than @{threshold} to "
        "spend @{spend} of the @{window} error budget of its {{ $labels.slo }} SLO "
        "(@{objective} of requests within @{threshold}): the slow ratio is above "
        "@{conditions}.@{note}",
        "2m",
        "The short windows already confirm the burn; 2 m more rides out one bad scrape.",
    ),
    AlertDef(
        c.ALERT_LATENCY_BUDGET_BURN,
        _TICKET,
        "Model {{ $labels.model }} is steadily burning its {{ $labels.slo }} latency budget",
        "Model {{ $labels.model }} answers too many requests slower than @{threshold} to "
        "spend @{spend} of the @{window} error budget of its {{ $labels.slo }} SLO "
        "(@{objective} of requests within @{threshold}): the slow ratio is above "
        "@{conditions}.@{note}",
        "15m",
        "Slow burns need no haste; 15 m keeps a ratio hovering at the threshold of the 2 h "
        "and 6 h short windows from opening and closing tickets, and is small against 1 d.",
    ),
    AlertDef(
        c.ALERT_LATENCY_HISTOGRAM_SATURATED,
        _TICKET,
        "Latency histogram of model {{ $labels.model }} is saturated",
        "{{ $value | humanizePercentage }} of the requests of model {{ $labels.model }} took "
        "longer than the top finite latency bucket (@{top}) over @{window} (threshold "
        "@{threshold}): every percentile above that share reads exactly @{top} (case C20), "
        "so latency panels understate. Latency SLOs read their own bucket and are unaffected.",
        "15m",
        "A bucket layout problem is permanent; 15 m ignores a burst of slow requests.",
    ),
    AlertDef(
        c.ALERT_FEATURE_COVERAGE_LOW,
        _TICKET,
        "Feature {{ $labels.feature }} of model {{ $labels.model }} is often unusable",
        "Only {{ $value | humanizePercentage }} of the values of feature "
        "{{ $labels.feature }} sent to model {{ $labels.model }} over @{window} were present "
        "and valid (floor @{threshold}); the rest were missing, null, of the wrong type, out "
        "of range or unseen categories. The model is predicting from imputed or bad inputs.",
        "15m",
        "With the 15 m rate window, 30 m of bad data before a ticket; a short burst from "
        "one client does not open one.",
    ),
    AlertDef(
        c.ALERT_UNEXPECTED_FEATURES,
        _INFO,
        "Model {{ $labels.model }} receives inputs that are not spec features",
        "Requests to model {{ $labels.model }} have carried input names that the spec does "
        "not declare in every @{window} for @{for}: a client sends new or renamed fields, "
        "or the spec is behind the model's schema.",
        "15m",
        "One stray request is not a schema change; 15 m of them is.",
    ),
    AlertDef(
        c.ALERT_PAYLOAD_PARSE_ERRORS,
        _TICKET,
        "Sidecar cannot parse inference requests of model {{ $labels.model }}",
        "{{ $value | humanizePercentage }} of the inference requests to model "
        "{{ $labels.model }} over @{window} could not be parsed by the sidecar (threshold "
        "@{threshold}). They reached the model untouched, but their features are not counted, "
        "so coverage and drift no longer describe all the traffic.",
        "5m",
        "The ratio is already over 15 m; 5 m more ignores one misbehaving client's burst.",
    ),
    AlertDef(
        c.ALERT_CAPTURE_DROPPING_ROWS,
        _TICKET,
        "Capture of model {{ $labels.model }} is dropping rows",
        "{{ $value | humanizePercentage }} of the rows sampled for capture by model "
        "{{ $labels.model }} over @{window} never reached the store (queue full or write "
        "error; retention deletions do not count), threshold @{threshold}. The drift job "
        "sees a biased sample of the traffic.",
        "5m",
        "The ratio is already over 15 m; 5 m more ignores a single slow disk flush.",
    ),
    AlertDef(
        c.ALERT_DATASET_DRIFT_DETECTED,
        _TICKET,
        "Inputs of model {{ $labels.model }} have drifted from the reference",
        "At least @{drift_share} of the features of model {{ $labels.model }} drifted from "
        "the reference data in every drift run for @{for}: the traffic no longer looks like "
        "the data the model was trained on.",
        _DRIFT_FOR,
        "Three schedules: the verdict held over about three consecutive runs, not one "
        "unlucky sample.",
    ),
    AlertDef(
        c.ALERT_FEATURE_DRIFT,
        _TICKET,
        "Feature {{ $labels.feature }} of model {{ $labels.model }} has drifted",
        "Feature {{ $labels.feature }} of model {{ $labels.model }} has drifted from the "
        "reference data in every drift run for @{for}.",
        _DRIFT_FOR,
        "Three schedules: with many features some test positive by chance in any one run.",
    ),
    AlertDef(
        c.ALERT_DRIFT_JOB_STALE,
        _TICKET,
        "Drift job of model {{ $labels.model }} has not succeeded recently",
        "The last successful drift run of model {{ $labels.model }} was "
        "{{ $value | humanizeDuration }} ago, more than three schedules (@{threshold}). Drift "
        "verdicts and model quality are frozen at old values, and their alerts cannot fire.",
        "5m",
        "The age only grows; 5 m tolerates a run that ends just after the deadline.",
    ),
    AlertDef(
        c.ALERT_DRIFT_JOB_FAILING,
        _TICKET,
        "Drift runs of model {{ $labels.model }} are failing",
        "Drift runs of model {{ $labels.model }} failed within the last @{window}. The job "
        "keeps the last good values, so drift panels look normal while they age.",
        "0s",
        "A failed run is a discrete event that does not fix itself; the increase window of "
        "three schedules keeps the alert active long enough to be delivered.",
    ),
    AlertDef(
        c.ALERT_MODEL_QUALITY_LOW,
        _TICKET,
        "Quality of model {{ $labels.model }} is below its floor",
        "The {{ $labels.metric }} of model {{ $labels.model }} on labelled traffic is "
        '{{ $value | printf "%.4g" }}, below the floor @{threshold}, for @{for}.',
        _DRIFT_FOR,
        "Quality is recomputed by the drift job; three schedules are three runs that agree.",
    ),
    AlertDef(
        c.ALERT_MODEL_VERSION_SKEW,
        _TICKET,
        "Replicas of model {{ $labels.model }} serve different versions",
        "Replicas of model {{ $labels.model }} have reported {{ $value }} different versions "
        "(or weight fingerprints) for @{for}: a rollout is stuck, or a replica runs an old or "
        "unapproved model.",
        _SKEW_FOR,
        "A rolling update mixes versions for a few minutes by design; the spec says how long.",
    ),
    AlertDef(
        c.ALERT_CANARY_FAILING,
        _PAGE,
        "Canary answers of replica {{ $labels.replica }} of model {{ $labels.model }} are wrong",
        "Golden-set canary requests to replica {{ $labels.replica }} of model "
        "{{ $labels.model }} got outputs outside tolerance within the last @{window}: the "
        "replica answers 200 with wrong numbers (corrupted weights, a bad GPU, a wrong "
        "version).",
        "0s",
        "A deterministic model never fails its golden set by chance; the first failure is "
        "the signal.",
    ),
    AlertDef(
        c.ALERT_GPU_DOWN,
        _PAGE,
        "GPU {{ $labels.gpu }} on {{ $labels.instance }} is not answering",
        "NVML has not answered for GPU {{ $labels.gpu }} ({{ $labels.name }} "
        "{{ $labels.uuid }}) on {{ $labels.instance }} for @{for}: the GPU is lost, hung or "
        "fell off the bus (case C19). Models on it fail or return garbage.",
        "2m",
        "Case C19: a hung read is retried every scrape; 2 m of failures is not a blip.",
    ),
    AlertDef(
        c.ALERT_GPU_EXPORTER_DOWN,
        _TICKET,
        "Prometheus cannot scrape GPU exporter {{ $labels.instance }}",
        "Scrapes of {{ $labels.instance }} (job {{ $labels.job }}) have failed for @{for}: "
        "the GPU alerts of that node are blind.",
        "5m",
        "A restart or a rescheduled pod takes a minute or two; 5 m ignores those.",
    ),
    AlertDef(
        c.ALERT_GPU_XID_ERRORS,
        _TICKET,
        "GPU {{ $labels.gpu }} on {{ $labels.instance }} reported XID {{ $labels.xid }}",
        "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }} reported XID "
        "error {{ $labels.xid }} within the last @{window}.",
        "0s",
        "An XID is a discrete driver event; the 10 m increase window keeps it active long "
        "enough to be delivered.",
    ),
    AlertDef(
        c.ALERT_GPU_UNCORRECTABLE_ECC,
        _PAGE,
        "GPU {{ $labels.gpu }} on {{ $labels.instance }} had uncorrectable ECC errors",
        "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }} reported "
        "uncorrectable ECC memory errors within the last @{window}: data in GPU memory was "
        "corrupted, and answers computed from it may be wrong.",
        "0s",
        "One uncorrectable error is already corrupted memory; waiting adds nothing.",
    ),
    AlertDef(
        c.ALERT_GPU_THROTTLING,
        _TICKET,
        "GPU {{ $labels.gpu }} on {{ $labels.instance }} is throttled ({{ $labels.reason }})",
        "GPU {{ $labels.gpu }} on {{ $labels.instance }} has been throttled for "
        "{{ $labels.reason }} for @{for}: its clocks are held down, so inference is slower.",
        "10m",
        "Short throttling under a load spike is normal; 10 m is sustained.",
    ),
    AlertDef(
        c.ALERT_GPU_MEMORY_NEAR_FULL,
        _TICKET,
        "GPU {{ $labels.gpu }} on {{ $labels.instance }} is nearly out of memory",
        "GPU {{ $labels.gpu }} on {{ $labels.instance }} has used "
        "{{ $value | humanizePercentage }} of its memory for @{for} (threshold "
        "@{threshold}): larger batches or a second model will fail to allocate.",
        "15m",
        "Memory follows batch sizes up and down; 15 m is a level, not a peak.",
    ),
    AlertDef(
        c.ALERT_MITIGATION_FAILING,
        _TICKET,
        "Mitigation {{ $labels.policy }} failed ({{ $labels.action }})",
        "Action {{ $labels.action }} of mitigation policy {{ $labels.policy }} failed within "
        "the last @{window}: the automated fix did not happen, and the alert it answers "
        "still needs a person (the mitigator also escalates to the pager).",
        "0s",
        "A failed action is a discrete event; the 10 m increase window keeps it active long "
        "enough to be delivered.",
    ),
)
"""Every alert the generator can emit, in rule-file order; one entry per name and
severity (the burn-rate alerts have a page and a ticket)."""


def alert_def(name: str, severity: str | None = None) -> AlertDef:
    """The catalogue entry of ``name`` (and ``severity`` for the burn-rate alerts).

    Raises:
        KeyError: no such alert.
    """
    for a in ALERTS:
        if a.name == name and severity in (None, a.severity):
            return a
    raise KeyError(f"no alert {name!r}" + (f" with severity {severity!r}" if severity else ""))


_SPEC_FOR: dict[str, Callable[[MonitorSpec], float]] = {
    _DRIFT_FOR: lambda spec: 3 * spec.drift.schedule_seconds,
    _SKEW_FOR: lambda spec: spec.alerting.version_skew_minutes * 60,
}
_REAL_TIME_FOR: frozenset[str] = frozenset({_DRIFT_FOR})
"""``for:`` durations that ``time_scale`` leaves alone: the drift job runs on its real
schedule whatever the rules' scale, so "every run for 3 schedules" must not shrink below
one run (150 ms at time_scale=60 fired on any single chance verdict)."""


def _for_seconds(a: AlertDef, spec: MonitorSpec) -> float:
    if a.for_ in _SPEC_FOR:
        return _SPEC_FOR[a.for_](spec)
    return _parse_duration(a.for_)


class _Params(string.Template):
    """``@{name}`` fields: ``$`` and ``{{ }}`` belong to Prometheus' templates."""

    delimiter = "@"


# --------------------------------------------------------------------------- PromQL pieces


_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1))


def _duration(seconds: float) -> str:
    """A Prometheus duration in one integer unit: ``30d``, ``90m``, ``5s``, ``42857ms``."""
    if seconds <= 0:
        return "0s"
    ms = max(1, round(seconds * 1000))
    for unit, size in _UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: every integer is a whole number of ms")


def _parse_duration(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", value)
    if m is None:
        raise ValueError(f"{value!r}: not a duration like 5m")
    return int(m[1]) * dict(_UNITS)[m[2]] / 1000


def _num(x: float) -> str:
    """A PromQL number without float noise (``1 - 0.999`` is ``0.001``)."""
    return f"{x:.12g}"


def _pct(x: float) -> str:
    return f"{x * 100:.4g}%"


@dataclass(frozen=True)
class _M:
    """A label matcher other than equality."""

    op: str
    value: str


def _one_of(values: Iterable[str]) -> _M:
    return _M("=~", "|".join(re.escape(v) for v in values))


def _none_of(values: Iterable[str]) -> _M:
    return _M("!~", "|".join(re.escape(v) for v in values))


def _not(value: str) -> _M:
    return _M("!=", value)


def _quote(value: str) -> str:
    if "\\" in value and "`" not in value:
        return f"`{value}`"  # a raw string: regex escapes stay readable
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _sel(metric: str, matchers: Mapping[str, str | _M] | None = None) -> str:
    """A series selector ``metric{a="b", c=~"d|e"}``, matchers in the given order."""
    parts = []
    for name, m in (matchers or {}).items():
        op, value = ("=", m) if isinstance(m, str) else (m.op, m.value)
        parts.append(f"{name}{op}{_quote(value)}")
    return f"{metric}{{{', '.join(parts)}}}" if parts else metric


def _le(model: ModelSpec, seconds: float) -> str:
    """The ``le`` label value of a bucket as the sidecar writes it (``0.25``, ``60.0``)."""
    bound = next(b for b in model.latency_buckets if math.isclose(b, seconds))
    return str(floatToGoString(bound))


def _coverage_groups(spec: MonitorSpec, model: ModelSpec) -> list[tuple[float, list[str]]]:
    """The model's features grouped by coverage floor, in spec order of first use."""
    groups: dict[float, list[str]] = {}
    for f in model.features:
        floor = spec.alerting.min_coverage if f.min_coverage is None else f.min_coverage
        groups.setdefault(floor, []).append(f.name)
    return list(groups.items())


def _inference_routes(model: ModelSpec) -> list[str]:
    """Route templates whose POSTs the sidecar parses as inference requests."""
    adapter = make_adapter(model)
    out = []
    for template in adapter.templates:
        if template == c.ROUTE_UNMATCHED:
            continue
        path = re.sub(
            r"\{(\w+)\}", lambda m: model.route_name if m[1] == "model" else "x", template
        )
        if adapter.match("POST", path).inference:
            out.append(template)
    return out


# --------------------------------------------------------------------------- the builder


class _Builder:
    def __init__(self, spec: MonitorSpec, time_scale: float) -> None:
        if not time_scale > 0:
            raise ValueError("time_scale must be > 0")
        self.spec = spec
        self.scale = time_scale

    def d(self, seconds: float) -> str:
        """A duration of the rules, divided by ``time_scale``."""
        return _duration(seconds / self.scale)

    def alert(
        self,
        name: str,
        expr: str,
        labels: Mapping[str, str] | None = None,
        *,
        severity: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        a = alert_def(name, severity)
        seconds = _for_seconds(a, self.spec)
        for_ = _duration(seconds) if a.for_ in _REAL_TIME_FOR else self.d(seconds)
        fill = {k: str(v) for k, v in params.items()} | {"for": for_}
        return {
            "alert": a.name,
            "expr": expr,
            "for": for_,
            "labels": {c.LABEL_SEVERITY: a.severity, **(labels or {})},
            "annotations": {
                "summary": _Params(a.summary).substitute(fill),
                "description": _Params(a.description).substitute(fill),
            },
        }

    # -- SLOs -----------------------------------------------------------------------

    def slo_group(self, slo: SLOSpec) -> dict[str, Any]:
        model = self.spec.model(slo.model)
        m = c.LABEL_MODEL
        by = f"sum by ({m})"
        ids = {m: slo.model, c.LABEL_SLO: slo.name}
        budget = _num(1 - slo.objective)
        # Inference calls only: health checks, metadata and unmatched paths sent
        # through the sidecar would otherwise dilute the SLI.
        routes = _inference_routes(model)
        scope: dict[str, str | _M] = {m: slo.model}
        if routes:
            scope[c.LABEL_ROUTE] = _one_of(routes)

        if slo.threshold_seconds is None:
            bad_sel = _sel(c.REQUESTS_TOTAL, scope | {c.LABEL_OUTCOME: _one_of(c.ERROR_OUTCOMES)})
            valid_sel = _sel(
                c.REQUESTS_TOTAL, scope | {c.LABEL_OUTCOME: _not(c.OUTCOME_CLIENT_CANCELLED)}
            )

            def bad(w: str) -> str:
                # No error series yet (a healthy model) must read 0, not "no data".
                return f"{by} (rate({bad_sel}[{w}]))\nor\n0 * {by} (rate({valid_sel}[{w}]))"

            def total(w: str) -> str:
                return f"{by} (rate({valid_sel}[{w}]))"
        else:
            count_sel = _sel(f"{c.REQUEST_DURATION_SECONDS}_count", scope)
            fast_sel = _sel(
                f"{c.REQUEST_DURATION_SECONDS}_bucket",
                scope | {c.LABEL_LE: _le(model, slo.threshold_seconds)},
            )

            def bad(w: str) -> str:
                return f"{by} (rate({count_sel}[{w}]))\n-\n{by} (rate({fast_sel}[{w}]))"

            def total(w: str) -> str:
                return f"{by} (rate({count_sel}[{w}]))"

        bad5m = _sel(c.SLO_BAD_EVENTS_RATE5M, ids)
        events5m = _sel(c.SLO_EVENTS_RATE5M, ids)
        ratio = {w: _sel(name, ids) for w, name in c.SLO_ERROR_RATIO.items()}
        window = self.d(slo.window_seconds)
        rules: list[dict[str, Any]] = [
            {"record": c.SLO_OBJECTIVE, "expr": f"vector({_num(slo.objective)})", "labels": ids},
            {"record": c.SLO_ERROR_BUDGET, "expr": f"vector({budget})", "labels": ids},
            {"record": c.SLO_BAD_EVENTS_RATE5M, "expr": bad(self.d(300)), "labels": ids},
            {"record": c.SLO_EVENTS_RATE5M, "expr": total(self.d(300)), "labels": ids},
            {
                "record": c.SLO_ERROR_RATIO["5m"],
                "expr": f"{bad5m}\n/\n({events5m} > 0)",
                "labels": ids,
            },
        ]
        for nominal in c.SLO_RATIO_WINDOWS[1:]:
            rw = self.d(_parse_duration(nominal))
            rules.append(
                {
                    "record": c.SLO_ERROR_RATIO[nominal],
                    "expr": f"(\n{bad(rw)}\n)\n/\n({total(rw)} > 0)",
                    "labels": ids,
                }
            )
        rules += [
            {
                # A ratio of sums over the window: quiet slots add nothing (case C22).
                "record": c.SLO_ERROR_RATIO_WINDOW,
                "expr": f"sum_over_time({bad5m}[{window}])\n/\n"
                f"(sum_over_time({events5m}[{window}]) > 0)",
                "labels": ids,
            },
            {
                "record": c.SLO_ERROR_BUDGET_REMAINING,
                "expr": f"1 - {_sel(c.SLO_ERROR_RATIO_WINDOW, ids)} / {budget}",
                "labels": ids,
            },
            {
                "record": c.SLO_CURRENT_BURN_RATE,
                "expr": f"{ratio['5m']} / {budget}",
                "labels": ids,
            },
        ]

        name = c.ALERT_ERROR_BUDGET_BURN
        if slo.threshold_seconds is not None:
            name = c.ALERT_LATENCY_BUDGET_BURN
        windows = burn_rate_windows(slo.window_seconds)
        for severity in (c.SEVERITY_PAGE, c.SEVERITY_TICKET):
            rows = [w for w in windows if w.severity == severity]
            if not rows:
                continue
            parts = []
            for w in rows:
                thr = f"({_num(round(w.factor, 4))} * {budget})"
                long, short = ratio[_duration(w.long)], ratio[_duration(w.short)]
                parts.append(f"(\n  {long} > {thr}\nand\n  {short} > {thr}\n)")
            rules.append(
                self.alert(
                    name,
                    "\nor\n".join(parts),
                    ids,
                    severity=severity,
                    spend=" or ".join(
                        f"{_pct(w.budget_share)} within {self.d(w.long)}" for w in rows
                    ),
                    conditions=", or ".join(
                        f"{_num(round(w.factor, 4))}x the budget rate over "
                        f"{self.d(w.long)} and {self.d(w.short)}"
                        for w in rows
                    ),
                    window=slo.window,
                    objective=_pct(slo.objective),
                    threshold=f"{slo.threshold_seconds:g}s" if slo.threshold_seconds else "",
                    note=f" {slo.description}" if slo.description else "",
                )
            )
        return {"name": f"{self.spec.service}-slo-{slo.model}-{slo.name}", "rules": rules}

    # -- one model --------------------------------------------------------------------

    def model_group(self, model: ModelSpec) -> dict[str, Any]:
        name = model.name
        m = c.LABEL_MODEL
        lm = {m: name}
        by = f"sum by ({m})"
        rules: list[dict[str, Any]] = []

        upstream = _sel(c.UPSTREAM_UP, lm)
        rules.append(
            self.alert(
                c.ALERT_MODEL_TELEMETRY_MISSING,
                f"absent_over_time({upstream}[{self.d(_ABSENT_WINDOW)}])",
                lm,
                metric=c.UPSTREAM_UP,
                silence=self.d(
                    _ABSENT_WINDOW
                    + _for_seconds(alert_def(c.ALERT_MODEL_TELEMETRY_MISSING), self.spec)
                ),
            )
        )
        rules.append(self.alert(c.ALERT_UPSTREAM_NOT_READY, f"{upstream} == 0", lm))

        top = _le(model, model.latency_buckets[-1])
        saturation = self.spec.alerting.max_latency_saturation_ratio
        dur = c.REQUEST_DURATION_SECONDS
        w5 = self.d(300)
        rules.append(
            {
                "record": c.LATENCY_SATURATION_RATIO,
                "expr": f"1 - {by} (rate({_sel(dur + '_bucket', lm | {c.LABEL_LE: top})}[{w5}]))"
                f"\n/\n({by} (rate({_sel(dur + '_count', lm)}[{w5}])) > 0)",
                "labels": dict(lm),
            }
        )
        rules.append(
            self.alert(
                c.ALERT_LATENCY_HISTOGRAM_SATURATED,
                f"{_sel(c.LATENCY_SATURATION_RATIO, lm)} > {_num(saturation)}",
                lm,
                top=f"{model.latency_buckets[-1]:g}s",
                window=w5,
                threshold=_pct(saturation),
            )
        )

        w15 = self.d(_RATE_WINDOW)
        groups = _coverage_groups(self.spec, model)
        for threshold, features in groups:
            # One rule per floor, one alert per feature (``by feature``).
            fl: dict[str, str | _M] = {m: name}
            static = dict(lm)
            if len(features) == 1:
                fl[c.LABEL_FEATURE] = static[c.LABEL_FEATURE] = features[0]
            elif len(groups) > 1:
                fl[c.LABEL_FEATURE] = _one_of(features)
            byf = f"sum by ({m}, {c.LABEL_FEATURE})"
            present = _sel(c.FEATURE_VALUES_TOTAL, fl | {c.LABEL_STATE: c.STATE_PRESENT})
            values = _sel(c.FEATURE_VALUES_TOTAL, fl)
            rules.append(
                self.alert(
                    c.ALERT_FEATURE_COVERAGE_LOW,
                    f"{byf} (rate({present}[{w15}]))\n/\n({byf} (rate({values}[{w15}])) > 0)\n"
                    f"< {_num(threshold)}",
                    static,
                    window=w15,
                    threshold=_pct(threshold),
                )
            )
        if model.features:
            rules.append(
                self.alert(
                    c.ALERT_UNEXPECTED_FEATURES,
                    f"{by} (increase({_sel(c.UNEXPECTED_FEATURES_TOTAL, lm)}[{w5}])) > 0",
                    lm,
                    window=w5,
                )
            )

        routes = _inference_routes(model)
        if routes:
            t = self.spec.alerting.max_payload_error_ratio
            infer = _sel(c.REQUESTS_TOTAL, {m: name, c.LABEL_ROUTE: _one_of(routes)})
            rules.append(
                self.alert(
                    c.ALERT_PAYLOAD_PARSE_ERRORS,
                    f"{by} (rate({_sel(c.PAYLOAD_ERRORS_TOTAL, lm)}[{w15}]))\n/\n"
                    f"({by} (rate({infer}[{w15}])) > 0)\n> {_num(t)}",
                    lm,
                    window=w15,
                    threshold=_pct(t),
                )
            )

        if model.capture is not None:
            t = self.spec.alerting.max_capture_drop_ratio
            # Retention deletes committed rows by design (max_bytes); only losses count.
            lost = _sel(c.CAPTURE_DROPPED_ROWS_TOTAL, lm | {c.LABEL_REASON: _not(c.DROP_RETENTION)})
            dropped = f"{by} (rate({lost}[{w15}]))"
            written = f"{by} (rate({_sel(c.CAPTURE_ROWS_TOTAL, lm)}[{w15}]))"
            rules.append(
                self.alert(
                    c.ALERT_CAPTURE_DROPPING_ROWS,
                    f"{dropped}\n/\n(({written} + {dropped}) > 0)\n> {_num(t)}",
                    lm,
                    window=w15,
                    threshold=_pct(t),
                )
            )

        if model.features:
            rules += self.drift_rules(model)
        for metric_name, floor in sorted(model.quality_min.items()):
            ql = {m: name, c.LABEL_METRIC: metric_name}
            rules.append(
                self.alert(
                    c.ALERT_MODEL_QUALITY_LOW,
                    f"min by ({m}, {c.LABEL_METRIC}) ({_sel(c.MODEL_QUALITY, ql)}) < {_num(floor)}",
                    ql,
                    threshold=f"{floor:g}",
                )
            )

        versions = (
            f"count by ({m}, {c.LABEL_VERSION}, {c.LABEL_FINGERPRINT}) ({_sel(c.MODEL_INFO, lm)})"
        )
        rules.append(self.alert(c.ALERT_MODEL_VERSION_SKEW, f"count by ({m}) ({versions}) > 1", lm))
        w10 = self.d(_EVENT_WINDOW)
        canary_fail = _sel(c.CANARY_CHECKS_TOTAL, {m: name, c.LABEL_RESULT: c.CANARY_FAIL})
        rules.append(
            self.alert(
                c.ALERT_CANARY_FAILING,
                self.counter_increased(canary_fail, _EVENT_WINDOW, (m, c.LABEL_REPLICA)),
                lm,
                window=w10,
            )
        )
        return {"name": f"{self.spec.service}-model-{name}", "rules": rules}

    def drift_rules(self, model: ModelSpec) -> list[dict[str, Any]]:
        m = c.LABEL_MODEL
        lm = {m: model.name}
        drift = self.spec.drift
        stale_after = 3 * drift.schedule_seconds
        failing_window = 3 * drift.schedule_seconds
        # The last success is read over a long range, not as an instant vector: when the
        # drift job's target disappears its series goes stale, and an instant query would
        # silently resolve the alert (case C23). The range outlasts the threshold, which
        # time_scale leaves alone: the drift job runs on its real schedule.
        lookback = _duration(max(_DAY / self.scale, 2 * stale_after))
        last_success = _sel(c.DRIFT_LAST_SUCCESS_TIMESTAMP_SECONDS, lm)
        failures = _sel(c.DRIFT_RUNS_TOTAL, {m: model.name, c.LABEL_RESULT: c.DRIFT_RESULT_FAILURE})
        # A run without a verdict (too few rows: a quiet hour) exports no verdict, and its
        # series goes stale; the last verdict holds for two schedules, so one quiet run
        # neither resolves a firing drift alert nor restarts its for:. Real time, like for:.
        hold = _duration(2 * drift.schedule_seconds)
        dataset = f"last_over_time({_sel(c.DATASET_DRIFT_DETECTED, lm)}[{hold}])"
        feature = f"last_over_time({_sel(c.DRIFT_DETECTED, lm)}[{hold}])"
        return [
            self.alert(
                c.ALERT_DATASET_DRIFT_DETECTED,
                f"max by ({m}) ({dataset}) == 1",
                lm,
                drift_share=_pct(drift.drift_share),
            ),
            self.alert(
                c.ALERT_FEATURE_DRIFT,
                f"max by ({m}, {c.LABEL_FEATURE}) ({feature}) == 1",
                lm,
            ),
            self.alert(
                c.ALERT_DRIFT_JOB_STALE,
                f"time() - max by ({m}) (max_over_time({last_success}[{lookback}]))\n"
                f"> {_num(stale_after)}",
                lm,
                threshold=_duration(stale_after),
            ),
            self.alert(
                c.ALERT_DRIFT_JOB_FAILING,
                self.counter_increased(failures, failing_window, (m,)),
                lm,
                window=self.d(failing_window),
            ),
        ]

    def counter_increased(self, sel: str, window: float, by: Sequence[str] | None) -> str:
        """The counter went up within ``window``, including a series born already above 0.

        ``increase()`` needs two samples of a series, so a counter created lazily at its
        first event (``{result="fail"} 1``) never shows an increase. The second branch
        catches series that are above 0 now and did not exist ``window`` ago while their
        target was being scraped (so a Prometheus restart or a new target does not count).
        """
        w = self.d(window)
        inc = f"increase({sel}[{w}])"
        born = (
            f"({sel} unless {sel} offset {w})\n"
            f"  and on ({c.LABEL_JOB}, {c.LABEL_INSTANCE}) ({c.UP} offset {w} == 1)"
        )
        if by is None:
            return f"{inc} > 0\nor\n(\n  {born}\n) > 0"
        grouping = f"sum by ({', '.join(by)})"
        return f"{grouping} ({inc}) > 0\nor\n{grouping} (\n  {born}\n) > 0"

    # -- fleet-wide -------------------------------------------------------------------

    def sidecar_group(self) -> dict[str, Any]:
        job = self.spec.alerting.sidecar_job
        up = _sel(c.UP, {c.LABEL_JOB: job})
        info = _sel(c.MODEL_INFO, {c.LABEL_JOB: job})
        target = f"{c.LABEL_JOB}, {c.LABEL_INSTANCE}"
        # The model a dead target served, from its last hour of mlmon_model_info, so that
        # Alertmanager can inhibit that model's other alerts; a target never scraped
        # successfully has none and fires without it.
        down = (
            f"({up} == 0)\n"
            f"  * on ({target}) group_left ({c.LABEL_MODEL})\n"
            f"  max by ({target}, {c.LABEL_MODEL}) "
            f"(max_over_time({info}[{self.d(_MODEL_INFO_LOOKBACK)}]))\n"
            f"or on ({target})\n"
            f"{up} == 0"
        )
        return {
            "name": f"{self.spec.service}-sidecar",
            "rules": [
                self.alert(c.ALERT_SIDECAR_DOWN, down),
                self.alert(c.ALERT_SIDECAR_ABSENT, f"absent({up})"),
            ],
        }

    def gpu_group(self) -> dict[str, Any]:
        a = self.spec.alerting
        w10 = self.d(_EVENT_WINDOW)
        uncorrected = _sel(c.GPU_ECC_ERRORS_TOTAL, {c.LABEL_ERROR_TYPE: c.ECC_UNCORRECTED})
        throttled = _sel(c.GPU_THROTTLE_REASON, {c.LABEL_REASON: _one_of(c.THROTTLE_THERMAL_POWER)})
        used, total = c.GPU_MEMORY_USED_BYTES, c.GPU_MEMORY_TOTAL_BYTES
        return {
            "name": f"{self.spec.service}-gpu",
            "rules": [
                # A machine without a driver or GPU exports gpu_up 0 with a reason: not a failure.
                self.alert(
                    c.ALERT_GPU_DOWN,
                    f"{_sel(c.GPU_UP, {c.LABEL_REASON: _none_of(c.GPU_ABSENT_REASONS)})} == 0",
                ),
                self.alert(
                    c.ALERT_GPU_EXPORTER_DOWN, f"{_sel(c.UP, {c.LABEL_JOB: a.gpu_job})} == 0"
                ),
                self.alert(
                    c.ALERT_GPU_XID_ERRORS,
                    self.counter_increased(c.GPU_XID_ERRORS_TOTAL, _EVENT_WINDOW, None),
                    window=w10,
                ),
                # Aggregate ECC counts persist across reboots, so a new series is no event:
                # increase() only.
                self.alert(
                    c.ALERT_GPU_UNCORRECTABLE_ECC,
                    f"max without ({c.LABEL_SCOPE}) (increase({uncorrected}[{w10}])) > 0",
                    window=w10,
                ),
                self.alert(c.ALERT_GPU_THROTTLING, f"{throttled} == 1"),
                self.alert(
                    c.ALERT_GPU_MEMORY_NEAR_FULL,
                    f"{used} / ({total} > 0) > {_num(a.gpu_memory_max_ratio)}",
                    threshold=_pct(a.gpu_memory_max_ratio),
                ),
            ],
        }

    def mitigation_group(self) -> dict[str, Any]:
        failures = _sel(c.MITIGATION_ACTIONS_TOTAL, {c.LABEL_OUTCOME: c.MITIGATION_FAILURE})
        return {
            "name": f"{self.spec.service}-mitigation",
            "rules": [
                self.alert(
                    c.ALERT_MITIGATION_FAILING,
                    self.counter_increased(
                        failures, _EVENT_WINDOW, (c.LABEL_POLICY, c.LABEL_ACTION)
                    ),
                    window=self.d(_EVENT_WINDOW),
                )
            ],
        }


def mitigation_for(spec: MonitorSpec, labels: Mapping[str, str]) -> str | None:
    """The first spec mitigation policy whose ``match`` fits an alert's static labels.

    ``labels`` holds ``alertname`` and the rule's labels. A matcher value is equality, or
    a full regex match when it starts with ``~``; a label the alert does not set reads as
    ``""`` (Alertmanager's semantics). Only labels known when the rules are generated can
    match: ``alertname``, ``severity``, ``model``, ``slo``, ``feature``, ``metric``.
    """
    for policy in spec.mitigations:
        if all(
            re.fullmatch(want[1:], labels.get(key, ""))
            if want.startswith("~")
            else labels.get(key, "") == want
            for key, want in policy.match.items()
        ):
            return policy.name
    return None


def _stamp(groups: list[dict[str, Any]], spec: MonitorSpec) -> None:
    """Cross-cutting alert policy in one pass: runbook links and mitigation labels."""
    for group in groups:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            rule["annotations"]["runbook_url"] = c.runbook_url(spec.alerting.runbook_base_url, name)
            if name == c.ALERT_MITIGATION_FAILING:
                continue  # never let a failing mitigation trigger another one
            policy = mitigation_for(spec, {c.LABEL_ALERTNAME: name, **rule["labels"]})
            if policy is not None:
                rule["labels"][c.LABEL_MITIGATION] = policy


def build_rules(spec: MonitorSpec, *, time_scale: float = 1.0) -> dict[str, Any]:
    """The Prometheus rule file (``{"groups": [...]}``) of ``spec``.

    Groups in order: one per SLO (recording rules, then its burn-rate alerts), one per
    model (telemetry, latency saturation, data quality, drift, quality, versions,
    canary), then the sidecar targets, GPUs and mitigations. Deterministic: spec order,
    no timestamps; rule keys in the order ``record``/``alert``, ``expr``, ``for``,
    ``labels``, ``annotations``.

    Args:
        time_scale: divides every duration of the rules (range selectors, offsets,
            ``for:``), e.g. 60 turns 5m into 5s for a test that cannot wait an hour.
            Thresholds compared with ``time()`` (three drift schedules) keep their
            value: the drift job runs on its real schedule.

    Raises:
        ValueError: ``time_scale`` is not positive.
    """
    b = _Builder(spec, time_scale)
    groups = [b.slo_group(slo) for slo in spec.slos]
    groups += [b.model_group(model) for model in spec.models]
    groups += [b.sidecar_group(), b.gpu_group(), b.mitigation_group()]
    _stamp(groups, spec)
    return _fresh({"groups": groups})


def _fresh(obj: Any) -> Any:
    """A copy sharing no dict or list, so a YAML dump has no ``&id001`` anchors."""
    if isinstance(obj, dict):
        return {k: _fresh(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fresh(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- promtool tests
#
# Every alert gets a test that fires it and one that just misses it, with the exact labels
# and rendered annotations it fires with. promtool compares floats exactly, so where a test
# names a value (case C22's budget, C20's share, a $value in a description) the inputs make
# every rate an exact integer (_Tests.exact) and the expected value is the one IEEE division
# Prometheus does. Thresholds are approached from both sides by whole numbers over a whole
# base, never by a float that might round across them.

_EVAL = "1m"
_SIDECAR_INSTANCE = "sidecar-0:9400"
_GPU_INSTANCE = "gpu-node-0:9400"
_GPU_LABELS = {
    c.LABEL_GPU: "0",
    c.LABEL_UUID: "GPU-5f1b2c3d-0000-4000-8000-000000000000",
    c.LABEL_GPU_NAME: "NVIDIA H100 80GB HBM3",
}
_DRIFT_JOB_INSTANCE = "drift-0:9400"
_CANARY_JOB = "model-canary"
_MITIGATOR_JOB = "model-mitigator"

_Point = float | str | None
"""A sample: a number, ``None`` (no sample) or ``"stale"`` (a staleness marker)."""


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 2**53 else repr(float(v))


def _values(points: Sequence[_Point]) -> str:
    """promtool's expanding notation for one sample a minute (``0+60x30 _x4 stale``)."""
    tokens: list[str] = []
    i = 0
    while i < len(points):
        p = points[i]
        if p is None or isinstance(p, str):
            j = i
            while j < len(points) and points[j] == p:
                j += 1
            if p is None:
                tokens.append(f"_x{j - i}" if j - i > 1 else "_")
            else:
                tokens += [p] * (j - i)
            i = j
            continue
        j = i
        nxt = points[i + 1] if i + 1 < len(points) else None
        if isinstance(nxt, int | float):
            step = nxt - p
            j = i + 1
            while j + 1 < len(points):
                q = points[j + 1]
                if not isinstance(q, int | float) or q - points[j] != step:  # type: ignore[operator]
                    break
                j += 1
        if j - i >= 2:
            sign = "+" if step >= 0 else "-"
            tokens.append(f"{_fmt(p)}{sign}{_fmt(abs(step))}x{j - i}")
            i = j + 1
        else:
            tokens.append(_fmt(p))
            i += 1
    return " ".join(tokens)


def _series(metric: str, labels: Mapping[str, str], points: Sequence[_Point]) -> dict[str, str]:
    return {"series": _sel(metric, dict(labels)), "values": _values(points)}


def _counter(per_minute: Callable[[int], float], minutes: int, start: int = 0) -> list[_Point]:
    """A counter from minute ``start`` (absent before) to ``minutes``; rises by
    ``per_minute(m)`` between minute m-1 and m."""
    out: list[_Point] = [None] * start
    total = 0.0
    for m in range(start, minutes + 1):
        if m > start:
            total += per_minute(m)
        out.append(total)
    return out


def _gauge(value: Callable[[int], _Point], minutes: int) -> list[_Point]:
    return [value(m) for m in range(minutes + 1)]


def _const(value: _Point) -> Callable[[int], _Point]:
    return lambda m: value


def _switch(minute: int, before: _Point, after: _Point) -> Callable[[int], _Point]:
    """``before`` until ``minute``, ``after`` from it on."""
    return lambda m: after if m >= minute else before


def _minutes(seconds: float) -> int:
    return math.ceil(seconds / 60)


def _go_duration(v: float) -> str:
    """Prometheus' ``humanizeDuration`` for values of at least a second."""
    if v == 0:
        return "0s"
    sign, v = ("-", -v) if v < 0 else ("", v)
    n = int(v)
    s, mins, hours, days = n % 60, n // 60 % 60, n // 3600 % 24, n // 86400
    if days:
        return f"{sign}{days}d {hours}h {mins}m {s}s"
    if hours:
        return f"{sign}{hours}h {mins}m {s}s"
    if mins:
        return f"{sign}{mins}m {s}s"
    return f"{sign}{v:.4g}s"


_TEMPLATE = re.compile(r"\{\{ (.*?) \}\}")


def _render(template: str, labels: Mapping[str, str], value: float | None) -> str:
    """Expand the template forms the catalogue uses, as Prometheus does."""

    def expand(m: re.Match[str]) -> str:
        expr = m[1]
        if expr.startswith("$labels."):
            return labels.get(expr[len("$labels.") :], "")
        if value is None:
            raise ValueError(f"{template!r} needs a value")
        if expr == "$value":
            return _fmt(value)
        if expr == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        if expr == "$value | humanizeDuration":
            return _go_duration(value)
        if expr == '$value | printf "%.4g"':
            return f"{value:.4g}"
        raise ValueError(f"template form not supported by the test generator: {expr!r}")

    return _TEMPLATE.sub(expand, template)


class _Tests:
    def __init__(self, spec: MonitorSpec) -> None:
        self.spec = spec
        self.rules = [r for g in build_rules(spec)["groups"] for r in g["rules"]]
        self.tests: list[dict[str, Any]] = []
        a = spec.alerting
        self.sidecar = {c.LABEL_JOB: a.sidecar_job, c.LABEL_INSTANCE: _SIDECAR_INSTANCE}
        self.gpu_target = {c.LABEL_JOB: a.gpu_job, c.LABEL_INSTANCE: _GPU_INSTANCE}
        self.drift_target = {c.LABEL_JOB: a.drift_job, c.LABEL_INSTANCE: _DRIFT_JOB_INSTANCE}

    # -- helpers ----------------------------------------------------------------------

    def rule(self, name: str, **static: str) -> dict[str, Any]:
        for r in self.rules:
            if r.get("alert") == name and all(r["labels"].get(k) == v for k, v in static.items()):
                return r
        raise KeyError(f"no rule {name} {static}")

    def expect(
        self, rule: dict[str, Any], labels: Mapping[str, str], value: float | None = None
    ) -> dict[str, Any]:
        """The exp_alerts entry of ``rule`` for an expression result with ``labels``."""
        return {
            "exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": {
                k: _render(v, labels, value) for k, v in rule["annotations"].items()
            },
        }

    def add(
        self,
        name: str,
        series: list[dict[str, str]],
        *,
        alert: str | None = None,
        at: int = 0,
        expect: list[dict[str, Any]] | None = None,
        exprs: list[dict[str, Any]] | None = None,
    ) -> None:
        test: dict[str, Any] = {"name": name, "interval": _EVAL, "input_series": series}
        if alert is not None:
            test["alert_rule_test"] = [
                {"alertname": alert, "eval_time": f"{at}m", "exp_alerts": expect or []}
            ]
        if exprs:
            test["promql_expr_test"] = exprs
        self.tests.append(test)

    def up(self, target: Mapping[str, str], minutes: int) -> dict[str, str]:
        return _series(c.UP, target, _gauge(lambda m: 1, minutes))

    def exact(
        self,
        metric: str,
        labels: Mapping[str, str],
        count: Callable[[int], int],
        minutes: int,
        unit: int = 60,
    ) -> list[dict[str, str]]:
        """Counters rising by ``unit * count(m)`` in minute m, whose rates are exact.

        Prometheus computes ``rate()`` as increase x (1 / range seconds), which rounds
        unless the increase is the range times a power of two. So the count is spread
        over replicas (``instance`` label) by its binary digits: replica b rises by
        ``unit * 2**b`` in the minutes where bit b of the count is set. With ``unit`` 60
        (a steady rate of ``count`` per second) or the window's seconds (one step per
        window), every rate is 0 or a power of two, and every sum of them an exact integer.
        """
        counts = [count(m) for m in range(minutes + 1)]
        if not any(counts):
            return [_series(metric, labels, _counter(lambda m: 0, minutes))]
        out = []
        for b in range(max(n.bit_length() for n in counts)):
            if any(n >> b & 1 for n in counts):
                replica = {c.LABEL_INSTANCE: f"sidecar-{b}:9400"}

                def rise(m: int, b: int = b) -> float:
                    return unit * ((counts[m] >> b & 1) << b)

                out.append(_series(metric, {**labels, **replica}, _counter(rise, minutes)))
        return out

    def request_labels(self, model: ModelSpec, outcome: str) -> dict[str, str]:
        code = {c.OUTCOME_OK: "200", c.OUTCOME_SERVER_ERROR: "500"}.get(outcome, "200")
        return {
            **self.sidecar,
            c.LABEL_MODEL: model.name,
            c.LABEL_VERSION: "1",
            c.LABEL_ROUTE: (_inference_routes(model) or [c.ROUTE_UNMATCHED])[0],
            c.LABEL_CODE: code,
            c.LABEL_OUTCOME: outcome,
        }

    # -- SLOs -------------------------------------------------------------------------

    def slo_traffic(
        self, slo: SLOSpec, good: Callable[[int], float], bad: Callable[[int], float], minutes: int
    ) -> list[dict[str, str]]:
        """Series giving ``bad`` bad and ``good`` good events per minute."""
        model = self.spec.model(slo.model)
        if slo.threshold_seconds is None:
            req = c.REQUESTS_TOTAL
            return [
                _series(req, self.request_labels(model, c.OUTCOME_OK), _counter(good, minutes)),
                _series(
                    req, self.request_labels(model, c.OUTCOME_SERVER_ERROR), _counter(bad, minutes)
                ),
            ]
        labels = {**self.sidecar, c.LABEL_MODEL: model.name, c.LABEL_VERSION: "1"}
        labels |= {c.LABEL_ROUTE: (_inference_routes(model) or [c.ROUTE_UNMATCHED])[0]}
        labels |= {c.LABEL_OUTCOME: c.OUTCOME_OK}
        dur = c.REQUEST_DURATION_SECONDS
        le = {c.LABEL_LE: _le(model, slo.threshold_seconds)}
        return [
            _series(f"{dur}_bucket", labels | le, _counter(good, minutes)),
            _series(f"{dur}_count", labels, _counter(lambda m: good(m) + bad(m), minutes)),
        ]

    def slo_tests(self, slo: SLOSpec) -> None:
        name = (
            c.ALERT_ERROR_BUDGET_BURN
            if slo.threshold_seconds is None
            else c.ALERT_LATENCY_BUDGET_BURN
        )
        budget = float(_num(1 - slo.objective))
        # SLOs reading the same series (same model and SLI) see the same traffic.
        siblings = [
            s
            for s in self.spec.slos
            if s.model == slo.model and s.threshold_seconds == slo.threshold_seconds
        ]

        def threshold(severity: str, s: SLOSpec = slo) -> float:
            """The lowest error ratio that fires ``severity`` of ``s`` when it is constant."""
            b = float(_num(1 - s.objective))
            rows = [w for w in burn_rate_windows(s.window_seconds) if w.severity == severity]
            return min(float(_num(round(w.factor, 4))) * b for w in rows)

        per_minute = 1_000_000

        def steady(
            ratio: float, minutes: int, burn_until: int | None = None
        ) -> tuple[list[dict[str, str]], float]:
            bad_n = round(ratio * per_minute)
            until = minutes if burn_until is None else burn_until

            def bad(m: int) -> float:
                return bad_n if m <= until else 0

            return self.slo_traffic(
                slo, lambda m: per_minute - bad(m), bad, minutes
            ), bad_n / per_minute

        def firing(ratio_page: float, ratio_ticket: float) -> list[dict[str, Any]]:
            out = []
            for s in siblings:
                ids = {c.LABEL_MODEL: s.model, c.LABEL_SLO: s.name}
                for sev, r in ((c.SEVERITY_PAGE, ratio_page), (c.SEVERITY_TICKET, ratio_ticket)):
                    if r > threshold(sev, s):
                        out.append(self.expect(self.rule(name, severity=sev, **ids), ids))
            return out

        what = "errors" if slo.threshold_seconds is None else "slow requests"
        ratio = min(20 * budget, 1.0)
        series, actual = steady(ratio, 20)
        self.add(
            f"{name} {slo.model}/{slo.name}: {what} at {_pct(actual)} of requests for 20 minutes "
            "page and open a ticket.",
            series,
            alert=name,
            at=20,
            expect=firing(actual, actual),
        )
        series, actual = steady(0.9 * threshold(c.SEVERITY_PAGE), 20)
        self.add(
            f"{name} {slo.model}/{slo.name}: {what} at 90% of the lowest page threshold "
            "do not page.",
            series,
            alert=name,
            at=20,
            expect=firing(actual, actual),
        )
        series, actual = steady(0.9 * threshold(c.SEVERITY_TICKET), 20)
        self.add(
            f"{name} {slo.model}/{slo.name}: {what} at 90% of the lowest ticket threshold "
            "open no ticket.",
            series,
            alert=name,
            at=20,
            expect=firing(actual, actual),
        )
        series, actual = steady(ratio, 50, burn_until=20)
        self.add(
            f"{name} {slo.model}/{slo.name}: the page resets 30 minutes after the burn stops "
            "(short windows), the ticket stays.",
            series,
            alert=name,
            at=50,
            expect=firing(0.0, actual * 20 / 50),
        )
        if slo.threshold_seconds is None:
            self.c22(slo, budget, alone=len(siblings) == 1)

    def c22(self, slo: SLOSpec, budget: float, *, alone: bool) -> None:
        """Case C22: 5-minute windows (errors, total) (1, 400), (0, 0), (0, 200), (0, 400),
        (0, 0), (1, 400), objective 99 %. Each count arrives as a step of 300 x count (so
        the 5 m rate is the count, see :meth:`exact`), and the counts are scaled by the
        SLO's budget against the case's 1 %, so the window SLI is budget / 7 and the
        remaining budget the case's 6/7 = 0.857 whatever the objective."""
        errors = (1, 0, 0, 0, 0, 1)
        totals = (400, 0, 200, 400, 0, 400)
        q = Fraction(_num(budget)) * 100  # errors : total scale, 1 for a 99 % objective
        e_scale, n_scale = q.numerator, q.denominator
        step = {5 * i + 1: i for i in range(6)}  # each window's counts arrive in its first minute

        def bad(m: int) -> int:
            return e_scale * errors[step[m]] if m in step else 0

        def good(m: int) -> int:
            return n_scale * totals[step[m]] - e_scale * errors[step[m]] if m in step else 0

        ids = {c.LABEL_MODEL: slo.model, c.LABEL_SLO: slo.name}
        model = self.spec.model(slo.model)
        series = [
            *self.exact(c.REQUESTS_TOTAL, self.request_labels(model, c.OUTCOME_OK), good, 40, 300),
            *self.exact(
                c.REQUESTS_TOTAL, self.request_labels(model, c.OUTCOME_SERVER_ERROR), bad, 40, 300
            ),
        ]
        # At 35m every step has been seen by five 1-minute evaluations of the 5m rates.
        sli = (5 * 2 * e_scale) / (5 * 1400 * n_scale)
        sli_10m = (5 * e_scale) / (5 * 400 * n_scale)
        labels = f'{{{c.LABEL_MODEL}="{slo.model}", {c.LABEL_SLO}="{slo.name}"}}'
        exprs: list[dict[str, Any]] = [
            {  # a 5-minute window without traffic has no ratio: no NaN, no Inf
                "expr": _sel(c.SLO_ERROR_RATIO["5m"], ids),
                "eval_time": "8m",
                "exp_samples": [],
            },
            {
                "expr": _sel(c.SLO_ERROR_BUDGET_REMAINING, ids),
                "eval_time": "8m",
                "exp_samples": [
                    {"labels": c.SLO_ERROR_BUDGET_REMAINING + labels, "value": 1 - sli_10m / budget}
                ],
            },
            {
                "expr": _sel(c.SLO_ERROR_RATIO_WINDOW, ids),
                "eval_time": "35m",
                "exp_samples": [{"labels": c.SLO_ERROR_RATIO_WINDOW + labels, "value": sli}],
            },
            {
                "expr": _sel(c.SLO_ERROR_BUDGET_REMAINING, ids),
                "eval_time": "35m",
                "exp_samples": [
                    {"labels": c.SLO_ERROR_BUDGET_REMAINING + labels, "value": 1 - sli / budget}
                ],
            },
        ]
        if not alone:
            # Another availability SLO of the model with a tighter budget may rightly burn.
            self.add(
                f"Case C22 {slo.model}/{slo.name}: windows without traffic record no ratio, the "
                "window SLI is a ratio of sums and the budget is never NaN.",
                series,
                exprs=exprs,
            )
            return
        self.add(
            f"Case C22 {slo.model}/{slo.name}: windows without traffic record no ratio, the "
            "window SLI is a ratio of sums, the budget is never NaN and nothing fires.",
            series,
            alert=c.ALERT_ERROR_BUDGET_BURN,
            at=35,
            expect=[],
            exprs=exprs,
        )

    # -- one model --------------------------------------------------------------------

    def fire_and_miss(
        self,
        rule: dict[str, Any],
        labels: Mapping[str, str],
        cases: tuple[int | None, int],
        base: int,
        fire: tuple[str, list[dict[str, str]]] | None,
        miss: tuple[str, list[dict[str, str]]],
    ) -> None:
        """A ratio alert's pair of tests: ``(name, series)`` that fires with the value
        ``cases[0] / base`` (skipped when no ratio can fire), and a near miss at 30m."""
        if fire is not None and cases[0] is not None:
            self.add(
                fire[0],
                fire[1],
                alert=rule["alert"],
                at=30,
                expect=[self.expect(rule, labels, cases[0] / base)],
            )
        self.add(miss[0], miss[1], alert=rule["alert"], at=30)

    def ratio_cases(
        self, threshold: float, *, below: bool, base: int = 1000
    ) -> tuple[int | None, int]:
        """(firing numerator, near-miss numerator) over ``base`` for a ratio threshold.

        ``below``: the alert fires under the threshold (coverage). The near miss sits on
        the threshold itself or just inside it; None: no ratio can fire.
        """
        if below:
            fire = math.floor(threshold * base / 2) if threshold * base >= 2 else None
            if fire is not None and not fire / base < threshold:
                fire = None
            miss = min(base, math.ceil(round(threshold * base, 9)))
            assert not miss / base < threshold
            return fire, miss
        fire_n = max(math.floor(threshold * base) + 1, round(2 * threshold * base))
        fire_or_none = min(fire_n, base) if min(fire_n, base) / base > threshold else None
        miss = math.floor(round(threshold * base, 9))
        assert not miss / base > threshold
        return fire_or_none, miss

    def model_tests(self, model: ModelSpec) -> None:
        self.telemetry_tests(model)
        self.saturation_tests(model)
        self.coverage_tests(model)
        self.payload_tests(model)
        self.capture_tests(model)
        if model.features:
            self.drift_tests(model)
        self.quality_tests(model)
        self.skew_tests(model)
        self.canary_tests(model)

    def telemetry_tests(self, model: ModelSpec) -> None:
        """Case C23's companion alert and the upstream's readiness."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        sc = self.sidecar
        up_labels = {**sc, **lm}
        rule = self.rule(c.ALERT_MODEL_TELEMETRY_MISSING, model=name)
        others = [  # every other model reports, so only this one can be missing
            _series(c.UPSTREAM_UP, {**sc, c.LABEL_MODEL: m.name}, _gauge(_const(1), 25))
            for m in self.spec.models
            if m.name != name
        ]
        gone = _series(c.UPSTREAM_UP, up_labels, _gauge(lambda m: 1 if m <= 5 else None, 25))
        self.add(
            f"{rule['alert']} {name}: the sidecar's series stop at 5m; at 25m the model has "
            "been silent long enough.",
            [gone, *others],
            alert=rule["alert"],
            at=25,
            expect=[self.expect(rule, lm)],
        )
        late = _series(c.UPSTREAM_UP, up_labels, _gauge(lambda m: 1 if m <= 15 else None, 25))
        self.add(
            f"{rule['alert']} {name}: series that stopped 10 minutes ago are not missing yet.",
            [late, *others],
            alert=rule["alert"],
            at=25,
        )
        rule = self.rule(c.ALERT_UPSTREAM_NOT_READY, model=name)
        for start, fires in ((10, True), (16, False)):
            s = _series(c.UPSTREAM_UP, up_labels, _gauge(_switch(start, 1, 0), 20))
            self.add(
                f"{rule['alert']} {name}: not ready for {20 - start} minutes "
                + ("fires." if fires else "does not fire yet."),
                [s],
                alert=rule["alert"],
                at=20,
                expect=[self.expect(rule, up_labels)] if fires else [],
            )

    def saturation_tests(self, model: ModelSpec) -> None:
        """Case C20: the share of requests above the top finite bucket."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        sc = self.sidecar
        rule = self.rule(c.ALERT_LATENCY_HISTOGRAM_SATURATED, model=name)
        top = _le(model, model.latency_buckets[-1])
        dur = c.REQUEST_DURATION_SECONDS
        hist = {**sc, **lm, c.LABEL_VERSION: "1", c.LABEL_ROUTE: "/", c.LABEL_OUTCOME: c.OUTCOME_OK}

        def histogram(within: int, total: int) -> list[dict[str, str]]:
            return [
                *self.exact(f"{dur}_bucket", hist | {c.LABEL_LE: top}, lambda m: within, 30),
                *self.exact(f"{dur}_bucket", hist | {c.LABEL_LE: "+Inf"}, lambda m: total, 30),
                *self.exact(f"{dur}_count", hist, lambda m: total, 30),
            ]

        share = 1 - 2 / 100
        self.add(
            f"Case C20 {name}: 98 of 100 requests per second above the top bucket give a "
            "saturation share of 0.98 and fire.",
            histogram(2, 100),
            alert=rule["alert"],
            at=30,
            expect=[self.expect(rule, lm, share)],
            exprs=[
                {
                    "expr": _sel(c.LATENCY_SATURATION_RATIO, lm),
                    "eval_time": "30m",
                    "exp_samples": [
                        {
                            "labels": f'{c.LATENCY_SATURATION_RATIO}{{{c.LABEL_MODEL}="{name}"}}',
                            "value": share,
                        }
                    ],
                }
            ],
        )
        self.add(
            f"{rule['alert']} {name}: 0.5% of requests above the top bucket stays silent.",
            histogram(199, 200),
            alert=rule["alert"],
            at=30,
        )

    def coverage_tests(self, model: ModelSpec) -> None:
        """Feature coverage (the first feature of each floor's rule) and unexpected inputs."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        sc = self.sidecar
        coverage_rules = [
            r
            for r in self.rules
            if r.get("alert") == c.ALERT_FEATURE_COVERAGE_LOW and r["labels"][c.LABEL_MODEL] == name
        ]
        for rule, (t, features) in zip(
            coverage_rules, _coverage_groups(self.spec, model), strict=True
        ):
            feature = features[0]
            fl = {**lm, c.LABEL_FEATURE: feature}
            fire, miss = self.ratio_cases(t, below=True, base=100)

            def coverage(
                present: int, total: int = 100, fl: dict[str, str] = fl
            ) -> list[dict[str, str]]:
                values = c.FEATURE_VALUES_TOTAL
                return [
                    *self.exact(
                        values, {**sc, **fl, c.LABEL_STATE: c.STATE_PRESENT}, lambda m: present, 30
                    ),
                    *self.exact(
                        values,
                        {**sc, **fl, c.LABEL_STATE: c.STATE_MISSING},
                        lambda m: total - present,
                        30,
                    ),
                ]

            self.fire_and_miss(
                rule,
                fl,
                (fire, miss),
                100,
                None
                if fire is None
                else (
                    f"{rule['alert']} {name}/{feature}: coverage {fire}% under the floor "
                    f"{_pct(t)} fires.",
                    coverage(fire),
                ),
                (
                    f"{rule['alert']} {name}/{feature}: coverage {miss}% at or above the floor "
                    f"{_pct(t)} stays silent.",
                    coverage(miss),
                ),
            )
            self.add(
                f"{rule['alert']} {name}/{feature}: no traffic is no coverage problem.",
                coverage(0, 0),
                alert=rule["alert"],
                at=30,
            )

        if model.features:
            rule = self.rule(c.ALERT_UNEXPECTED_FEATURES, model=name)
            for label, per in (
                ("every minute", lambda m: 1),
                ("once", lambda m: 1 if m == 10 else 0),
            ):
                s = _series(c.UNEXPECTED_FEATURES_TOTAL, {**sc, **lm}, _counter(per, 30))
                self.add(
                    f"{rule['alert']} {name}: unexpected inputs {label} "
                    + ("fire." if label == "every minute" else "stay silent."),
                    [s],
                    alert=rule["alert"],
                    at=30,
                    expect=[self.expect(rule, lm)] if label == "every minute" else [],
                )

    def payload_tests(self, model: ModelSpec) -> None:
        """Unparseable inference requests."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        sc = self.sidecar
        routes = _inference_routes(model)
        if routes:
            rule = self.rule(c.ALERT_PAYLOAD_PARSE_ERRORS, model=name)
            fire, miss = self.ratio_cases(self.spec.alerting.max_payload_error_ratio, below=False)

            def payload(errors: int) -> list[dict[str, str]]:
                pe = {
                    **sc,
                    **lm,
                    c.LABEL_PROTOCOL: model.protocol,
                    c.LABEL_REASON: c.PAYLOAD_INVALID_JSON,
                }
                return [
                    *self.exact(
                        c.REQUESTS_TOTAL,
                        self.request_labels(model, c.OUTCOME_OK),
                        lambda m: 1000,
                        30,
                    ),
                    *self.exact(c.PAYLOAD_ERRORS_TOTAL, pe, lambda m: errors, 30),
                ]

            self.fire_and_miss(
                rule,
                lm,
                (fire, miss),
                1000,
                None
                if fire is None
                else (
                    f"{rule['alert']} {name}: {fire} of 1000 inference requests unparseable fire.",
                    payload(fire),
                ),
                (
                    f"{rule['alert']} {name}: {miss} of 1000 inference requests unparseable, at "
                    "the threshold, stay silent.",
                    payload(miss),
                ),
            )

    def capture_tests(self, model: ModelSpec) -> None:
        """Rows lost before the capture store (retention does not count)."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        sc = self.sidecar
        if model.capture is not None:
            rule = self.rule(c.ALERT_CAPTURE_DROPPING_ROWS, model=name)
            fire, miss = self.ratio_cases(self.spec.alerting.max_capture_drop_ratio, below=False)

            def capture(dropped: int, retention: int = 0) -> list[dict[str, str]]:
                drops = c.CAPTURE_DROPPED_ROWS_TOTAL
                return [
                    *self.exact(c.CAPTURE_ROWS_TOTAL, {**sc, **lm}, lambda m: 1000 - dropped, 30),
                    *self.exact(
                        drops,
                        {**sc, **lm, c.LABEL_REASON: c.DROP_QUEUE_FULL},
                        lambda m: dropped,
                        30,
                    ),
                    *self.exact(
                        drops,
                        {**sc, **lm, c.LABEL_REASON: c.DROP_RETENTION},
                        lambda m: retention,
                        30,
                    ),
                ]

            self.fire_and_miss(
                rule,
                lm,
                (fire, miss),
                1000,
                None
                if fire is None
                else (
                    f"{rule['alert']} {name}: {fire} of 1000 sampled rows lost (queue full) fire.",
                    capture(fire),
                ),
                (
                    f"{rule['alert']} {name}: {miss} of 1000 rows dropped plus many deleted by "
                    "retention stay silent.",
                    capture(miss, retention=5000),
                ),
            )

    def quality_tests(self, model: ModelSpec) -> None:
        """Model quality floors from delayed labels."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        for metric_name, floor in sorted(model.quality_min.items()):
            ql = {**lm, c.LABEL_METRIC: metric_name}
            rule = self.rule(c.ALERT_MODEL_QUALITY_LOW, model=name, metric=metric_name)
            at = _minutes(_for_seconds(alert_def(rule["alert"]), self.spec)) + 5
            labels = {**self.drift_target, **ql}
            if floor > 0:
                low = floor / 2
                self.add(
                    f"{rule['alert']} {name}/{metric_name}: {low:g}, under the floor, fires.",
                    [_series(c.MODEL_QUALITY, labels, _gauge(_const(low), at))],
                    alert=rule["alert"],
                    at=at,
                    expect=[self.expect(rule, ql, low)],
                )
            self.add(
                f"{rule['alert']} {name}/{metric_name}: exactly the floor {floor:g} stays silent.",
                [_series(c.MODEL_QUALITY, labels, _gauge(_const(floor), at))],
                alert=rule["alert"],
                at=at,
            )

    def skew_tests(self, model: ModelSpec) -> None:
        """Replicas serving different versions."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        sc = self.sidecar
        rule = self.rule(c.ALERT_MODEL_VERSION_SKEW, model=name)
        grace = _for_seconds(alert_def(rule["alert"]), self.spec)
        at = _minutes(grace) + 5
        r1 = {**sc, **lm, c.LABEL_INSTANCE: "sidecar-1:9400"}

        def info(version: str, labels: Mapping[str, str], since: int = 0) -> dict[str, str]:
            points = _gauge(lambda m: 1 if m >= since else None, at)
            return _series(c.MODEL_INFO, {**labels, c.LABEL_VERSION: version}, points)

        self.add(
            f"{rule['alert']} {name}: replicas on versions 1 and 2 for longer than the grace fire.",
            [info("1", {**sc, **lm}), info("2", r1)],
            alert=rule["alert"],
            at=at,
            expect=[self.expect(rule, lm, 2)],
        )
        rollout = at - math.floor(grace / 60) + 1
        old = _gauge(lambda m: 1 if m < rollout else ("stale" if m == rollout else None), at)
        self.add(
            f"{rule['alert']} {name}: a rollout that mixes versions for less than the grace "
            "stays silent.",
            [
                info("1", {**sc, **lm}),
                info("2", r1, since=rollout),
                _series(c.MODEL_INFO, {**r1, c.LABEL_VERSION: "1"}, old),
            ],
            alert=rule["alert"],
            at=at,
        )

    def canary_tests(self, model: ModelSpec) -> None:
        """Golden-set canary failures."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        rule = self.rule(c.ALERT_CANARY_FAILING, model=name)
        target = {c.LABEL_JOB: _CANARY_JOB, c.LABEL_INSTANCE: "canary-0:9400"}
        cl = {**lm, c.LABEL_REPLICA: "http://10.0.0.7:8080"}
        self.event_tests(
            rule,
            c.CANARY_CHECKS_TOTAL,
            {**target, **cl},
            {c.LABEL_RESULT: c.CANARY_FAIL},
            {c.LABEL_RESULT: c.CANARY_PASS},
            target,
            cl,
            f"a golden-set check of {name}",
        )

    def drift_tests(self, model: ModelSpec) -> None:
        """Drift verdicts held for three schedules, and the drift job's health."""
        name = model.name
        lm = {c.LABEL_MODEL: name}
        dt = self.drift_target
        drift_for = _for_seconds(alert_def(c.ALERT_DATASET_DRIFT_DETECTED), self.spec)
        at = _minutes(drift_for) + 5
        held = math.floor(drift_for / 60) - 1  # minutes a near miss holds its verdict
        feature = model.features[0].name
        for alert, metric_name, labels in (
            (c.ALERT_DATASET_DRIFT_DETECTED, c.DATASET_DRIFT_DETECTED, lm),
            (c.ALERT_FEATURE_DRIFT, c.DRIFT_DETECTED, {**lm, c.LABEL_FEATURE: feature}),
        ):
            rule = self.rule(alert, model=name)
            self.add(
                f"{alert} {name}: drift in every run for {at} minutes fires.",
                [_series(metric_name, {**dt, **labels}, _gauge(lambda m: 1, at))],
                alert=alert,
                at=at,
                expect=[self.expect(rule, labels)],
            )
            gap = 2  # minute the verdict goes stale, then absent for one schedule
            quiet = _minutes(self.spec.drift.schedule_seconds)

            def with_quiet_run(m: int, gap: int = gap, quiet: int = quiet) -> _Point:
                if m == gap:
                    return "stale"
                return None if gap < m < gap + quiet else 1

            self.add(
                f"{alert} {name}: one run without a verdict (too few rows) in {at} minutes of "
                "drift neither resolves it nor restarts its for:.",
                [_series(metric_name, {**dt, **labels}, _gauge(with_quiet_run, at))],
                alert=alert,
                at=at,
                expect=[self.expect(rule, labels)],
            )
            self.add(
                f"{alert} {name}: drift for {max(held, 0)} minutes, less than three schedules, "
                "stays silent.",
                [
                    _series(
                        metric_name,
                        {**dt, **labels},
                        _gauge(_switch(at - max(held, 0), 0, 1), at),
                    )
                ],
                alert=alert,
                at=at,
            )

        schedule = self.spec.drift.schedule_seconds
        rule = self.rule(c.ALERT_DRIFT_JOB_STALE, model=name)
        at = _minutes(3 * schedule) + 5 + 2
        ts = c.DRIFT_LAST_SUCCESS_TIMESTAMP_SECONDS
        self.add(
            f"Case C23 {rule['alert']} {name}: the last success at 0s and the drift job's "
            "target gone since 5m still fire (no silent resolve).",
            [_series(ts, {**dt, **lm}, _gauge(lambda m: 0 if m <= 5 else None, at))],
            alert=rule["alert"],
            at=at,
            expect=[self.expect(rule, lm, at * 60)],
        )
        self.add(
            f"{rule['alert']} {name}: a success every schedule stays silent.",
            [
                _series(
                    ts, {**dt, **lm}, _gauge(lambda m: math.floor(m * 60 / schedule) * schedule, at)
                )
            ],
            alert=rule["alert"],
            at=at,
        )
        rule = self.rule(c.ALERT_DRIFT_JOB_FAILING, model=name)
        self.event_tests(
            rule,
            c.DRIFT_RUNS_TOTAL,
            {**dt, **lm},
            {c.LABEL_RESULT: c.DRIFT_RESULT_FAILURE},
            {c.LABEL_RESULT: c.DRIFT_RESULT_SUCCESS},
            dt,
            lm,
            f"a drift run of {name}",
            window=3 * schedule,
        )

    def event_tests(
        self,
        rule: dict[str, Any],
        metric_name: str,
        labels: Mapping[str, str],
        bad: Mapping[str, str],
        good: Mapping[str, str],
        target: Mapping[str, str],
        result_labels: Mapping[str, str],
        what: str,
        window: float = _EVENT_WINDOW,
    ) -> None:
        """Tests of an alert on ``increase(counter{bad}) > 0`` (see counter_increased)."""
        alert = rule["alert"]
        at = _minutes(window) + 15
        event = at - 2
        up = self.up(target, at)
        ok = _series(metric_name, {**labels, **good}, _counter(lambda m: 1, at))
        self.add(
            f"{alert}: {what} failing again (counter 2 -> 3) fires.",
            [
                up,
                ok,
                _series(metric_name, {**labels, **bad}, _gauge(_switch(event, 2, 3), at)),
            ],
            alert=alert,
            at=at,
            expect=[self.expect(rule, result_labels)],
        )
        born = _gauge(_switch(event, None, 1.0), at)
        self.add(
            f"{alert}: {what} failing for the first time (series born at 1) fires.",
            [up, ok, _series(metric_name, {**labels, **bad}, born)],
            alert=alert,
            at=at,
            expect=[self.expect(rule, result_labels)],
        )
        self.add(
            f"{alert}: {what} that failed long ago (counter flat at 1) stays silent.",
            [up, ok, _series(metric_name, {**labels, **bad}, _gauge(_const(1), at))],
            alert=alert,
            at=at,
        )

    # -- fleet-wide -------------------------------------------------------------------

    def sidecar_tests(self) -> None:
        job = self.spec.alerting.sidecar_job
        rule = self.rule(c.ALERT_SIDECAR_DOWN)
        model = self.spec.models[0].name
        known = self.sidecar
        unknown = {c.LABEL_JOB: job, c.LABEL_INSTANCE: "sidecar-9:9400"}
        self.add(
            f"{rule['alert']}: a target down for 10 minutes fires, with the model it served "
            "when known.",
            [
                _series(c.UP, known, _gauge(lambda m: 1 if m < 10 else 0, 20)),
                _series(
                    c.MODEL_INFO,
                    {**known, c.LABEL_MODEL: model, c.LABEL_VERSION: "1"},
                    _gauge(lambda m: 1 if m < 10 else None, 20),
                ),
                _series(c.UP, unknown, _gauge(lambda m: 0, 20)),
            ],
            alert=rule["alert"],
            at=20,
            expect=[
                self.expect(rule, {**known, c.LABEL_MODEL: model}),
                self.expect(rule, unknown),
            ],
        )
        self.add(
            f"{rule['alert']}: a target down for 4 minutes does not fire yet.",
            [_series(c.UP, known, _gauge(lambda m: 1 if m < 16 else 0, 20))],
            alert=rule["alert"],
            at=20,
        )
        rule = self.rule(c.ALERT_SIDECAR_ABSENT)
        self.add(
            f"{rule['alert']}: no target of job {job} for 15 minutes fires.",
            [],
            alert=rule["alert"],
            at=15,
            expect=[self.expect(rule, {c.LABEL_JOB: job})],
        )
        self.add(
            f"{rule['alert']}: a target that is down is still a target.",
            [_series(c.UP, known, _gauge(lambda m: 0, 15))],
            alert=rule["alert"],
            at=15,
        )

    def gpu_tests(self) -> None:
        gt = self.gpu_target
        gpu = {**gt, **_GPU_LABELS}
        no_driver = _series(
            c.GPU_UP, {**gt, c.LABEL_REASON: c.GPU_REASON_NO_DRIVER}, _gauge(lambda m: 0, 15)
        )
        rule = self.rule(c.ALERT_GPU_DOWN)
        self.add(
            f"Case C19 {rule['alert']}: NVML failing for 5 minutes fires; a node without a "
            "driver does not.",
            [_series(c.GPU_UP, gpu, _gauge(lambda m: 1 if m < 10 else 0, 15)), no_driver],
            alert=rule["alert"],
            at=15,
            expect=[self.expect(rule, gpu)],
        )
        self.add(
            f"{rule['alert']}: NVML failing for one minute does not fire.",
            [_series(c.GPU_UP, gpu, _gauge(lambda m: 1 if m < 14 else 0, 15)), no_driver],
            alert=rule["alert"],
            at=15,
        )
        rule = self.rule(c.ALERT_GPU_EXPORTER_DOWN)
        for start, fires in ((10, True), (16, False)):
            self.add(
                f"{rule['alert']}: exporter down for {20 - start} minutes "
                + ("fires." if fires else "does not fire yet."),
                [_series(c.UP, gt, _gauge(_switch(start, 1, 0), 20))],
                alert=rule["alert"],
                at=20,
                expect=[self.expect(rule, gt)] if fires else [],
            )

        rule = self.rule(c.ALERT_GPU_XID_ERRORS)
        at = _minutes(_EVENT_WINDOW) + 15
        xid13, xid79 = {**gpu, c.LABEL_XID: "13"}, {**gpu, c.LABEL_XID: "79"}
        self.add(
            f"{rule['alert']}: an XID counter going 2 -> 3 and a new XID series born at 1 "
            "both fire.",
            [
                self.up(gt, at),
                _series(c.GPU_XID_ERRORS_TOTAL, xid13, _gauge(_switch(at - 2, 2, 3), at)),
                _series(c.GPU_XID_ERRORS_TOTAL, xid79, _gauge(_switch(at - 2, None, 1), at)),
            ],
            alert=rule["alert"],
            at=at,
            expect=[self.expect(rule, xid13), self.expect(rule, xid79)],
        )
        self.add(
            f"{rule['alert']}: an XID seen long ago (counter flat) stays silent.",
            [self.up(gt, at), _series(c.GPU_XID_ERRORS_TOTAL, xid79, _gauge(_const(1), at))],
            alert=rule["alert"],
            at=at,
        )

        rule = self.rule(c.ALERT_GPU_UNCORRECTABLE_ECC)
        ecc = {**gpu, c.LABEL_SCOPE: c.ECC_VOLATILE}
        unc = {**ecc, c.LABEL_ERROR_TYPE: c.ECC_UNCORRECTED}
        cor = {**ecc, c.LABEL_ERROR_TYPE: c.ECC_CORRECTED}
        self.add(
            f"{rule['alert']}: one uncorrectable error fires.",
            [_series(c.GPU_ECC_ERRORS_TOTAL, unc, _gauge(_switch(at - 2, 0, 1), at))],
            alert=rule["alert"],
            at=at,
            expect=[self.expect(rule, {**gpu, c.LABEL_ERROR_TYPE: c.ECC_UNCORRECTED})],
        )
        self.add(
            f"{rule['alert']}: corrected errors stay silent.",
            [
                _series(c.GPU_ECC_ERRORS_TOTAL, unc, _gauge(_const(0), at)),
                _series(c.GPU_ECC_ERRORS_TOTAL, cor, _counter(lambda m: 5, at)),
            ],
            alert=rule["alert"],
            at=at,
        )

        rule = self.rule(c.ALERT_GPU_THROTTLING)
        thermal = {**gpu, c.LABEL_REASON: c.THROTTLE_HW_THERMAL}
        idle = {**gpu, c.LABEL_REASON: c.THROTTLE_GPU_IDLE}
        self.add(
            f"{rule['alert']}: thermal throttling for 15 minutes fires.",
            [_series(c.GPU_THROTTLE_REASON, thermal, _gauge(lambda m: 1 if m >= 5 else 0, 20))],
            alert=rule["alert"],
            at=20,
            expect=[self.expect(rule, thermal)],
        )
        self.add(
            f"{rule['alert']}: thermal throttling for 9 minutes, or idle clocks all along, "
            "stay silent.",
            [
                _series(c.GPU_THROTTLE_REASON, thermal, _gauge(lambda m: 1 if m >= 11 else 0, 20)),
                _series(c.GPU_THROTTLE_REASON, idle, _gauge(lambda m: 1, 20)),
            ],
            alert=rule["alert"],
            at=20,
        )

        rule = self.rule(c.ALERT_GPU_MEMORY_NEAR_FULL)
        t = self.spec.alerting.gpu_memory_max_ratio
        total = 80 * 2**30
        near_full = math.floor(total * (1 + t) / 2)
        if near_full / total > t:
            self.add(
                f"{rule['alert']}: memory {near_full / total:.4g} used for 20 minutes fires.",
                [
                    _series(c.GPU_MEMORY_USED_BYTES, gpu, _gauge(lambda m: near_full, 20)),
                    _series(c.GPU_MEMORY_TOTAL_BYTES, gpu, _gauge(lambda m: total, 20)),
                ],
                alert=rule["alert"],
                at=20,
                expect=[self.expect(rule, gpu, near_full / total)],
            )
        self.add(
            f"{rule['alert']}: memory used at the threshold stays silent.",
            [
                _series(c.GPU_MEMORY_USED_BYTES, gpu, _gauge(lambda m: math.floor(total * t), 20)),
                _series(c.GPU_MEMORY_TOTAL_BYTES, gpu, _gauge(lambda m: total, 20)),
            ],
            alert=rule["alert"],
            at=20,
        )

    def mitigation_tests(self) -> None:
        rule = self.rule(c.ALERT_MITIGATION_FAILING)
        target = {c.LABEL_JOB: _MITIGATOR_JOB, c.LABEL_INSTANCE: "mitigator-0:9500"}
        pl = {c.LABEL_POLICY: "shift-to-fallback", c.LABEL_ACTION: "sidecar"}
        self.event_tests(
            rule,
            c.MITIGATION_ACTIONS_TOTAL,
            {**target, **pl},
            {c.LABEL_OUTCOME: c.MITIGATION_FAILURE},
            {c.LABEL_OUTCOME: c.MITIGATION_SUCCESS},
            target,
            pl,
            "a mitigation action",
        )


def build_rule_tests(spec: MonitorSpec, rule_file: str) -> dict[str, Any]:
    """promtool unit tests (``promtool test rules``) of ``build_rules(spec)`` saved as
    ``rule_file`` (a path relative to the test file).

    Every alert is shown firing on the right input, with its exact labels and rendered
    annotations, and silent on a near miss; case C22 (zero traffic) and C20 (histogram
    saturation) are checked as exact values.
    """
    t = _Tests(spec)
    for slo in spec.slos:
        t.slo_tests(slo)
    for model in spec.models:
        t.model_tests(model)
    t.sidecar_tests()
    t.gpu_tests()
    t.mitigation_tests()
    return _fresh({"rule_files": [rule_file], "evaluation_interval": _EVAL, "tests": t.tests})
