"""The sidecar's Prometheus metrics (names from :mod:`monitor.conventions`).

Built on ``prometheus_client`` with a registry seam (tests pass a fresh
``CollectorRegistry``). The hot path never calls ``.labels()`` twice for the
same label set: children are cached in plain dicts. Feature coverage is kept in
integer arrays owned by :class:`monitor.coverage.CoverageEvaluator` and exposed
by a custom collector, since it is the busiest counter (rows x features per
request).

Every label value comes from a bounded set: model and feature names from the
spec, route templates from the protocol adapter, outcomes and states from
``conventions`` (case C17).
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar
from prometheus_client.utils import floatToGoString

from monitor import conventions as c
from monitor.coverage import CoverageEvaluator, category_key
from monitor.payload import Predictions, Rows
from monitor.spec import ModelSpec, OutputSpec

__all__ = ["SidecarMetrics"]

UNKNOWN_VERSION = "unknown"


class _CoverageCollector(Collector):
    """Exposes ``mlmon_feature_values_total{model,feature,state}`` from the evaluator's counts."""

    def __init__(self, model: str, evaluator: CoverageEvaluator) -> None:
        self._model = model
        self._evaluator = evaluator

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily(
            c.FEATURE_VALUES_TOTAL,
            "Feature values seen in inference requests, one per row per spec feature, by state.",
            labels=[c.LABEL_MODEL, c.LABEL_FEATURE, c.LABEL_STATE],
        )
        for f, counts in zip(self._evaluator.features, self._evaluator.counts, strict=True):
            for state, n in zip(c.FEATURE_STATES, counts, strict=True):
                fam.add_metric([self._model, f.name, state], n)
        yield fam


EXEMPLAR_INTERVAL_SECONDS = 1.0
"""Shortest time between two exemplars of one histogram bucket."""


class _Series:
    """One label set of a histogram: per-bucket counts (not cumulative), the sum,
    and the last exemplar per bucket."""

    __slots__ = ("bounds", "counts", "exemplar_due", "exemplars", "sum")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.exemplars: list[Exemplar | None] = [None] * (len(bounds) + 1)
        self.exemplar_due = [0.0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, exemplar: Any = None, now: float = 0.0) -> None:
        """Observe ``value`` (le is inclusive: a value equal to a bound lands in it).

        ``exemplar``: a label dict, or a trace with ``trace_id_hex`` (then at most one
        exemplar per bucket per ``EXEMPLAR_INTERVAL_SECONDS`` of ``now``, a monotonic
        clock: a scrape shows one exemplar per bucket, so making one per request is
        wasted work, while a rare slow bucket still gets the first trace that lands
        in it).
        """
        i = bisect_left(self.bounds, value)
        self.counts[i] += 1
        self.sum += value
        if exemplar is None:
            return
        if type(exemplar) is dict:
            self.exemplars[i] = Exemplar(exemplar, value, time.time())
        elif now >= self.exemplar_due[i]:
            self.exemplar_due[i] = now + EXEMPLAR_INTERVAL_SECONDS
            self.exemplars[i] = Exemplar({"trace_id": exemplar.trace_id_hex}, value, time.time())


class _FastHistogram(Collector):
    """A histogram kept in plain ints and floats, for series every request touches.

    prometheus_client's children take a lock and validate exemplars on every
    call (about 1-1.5 us each); the sidecar updates these from its one
    event-loop thread, and a scrape runs on that same thread, so no lock is
    needed. The exposition is a standard histogram: cumulative buckets ending
    with ``+Inf`` equal to ``_count``, exemplars in OpenMetrics.
    """

    def __init__(
        self, name: str, documentation: str, labels: list[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.bounds = [float(b) for b in buckets]
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self.series: dict[tuple[str, ...], _Series] = {}

    def child(self, *labels: str) -> _Series:
        """The series of one label set (created on first use)."""
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = _Series(self.bounds)
        return s

    def collect(self) -> Iterable[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, s in sorted(self.series.items()):
            acc = 0
            buckets: list[Any] = []
            for le, n, ex in zip(self._les, s.counts, s.exemplars, strict=True):
                acc += n
                buckets.append((le, acc, ex) if ex is not None else (le, acc))
            fam.add_metric(list(labels), buckets, s.sum)
        yield fam


class _FastCounter(Collector):
    """A counter kept in a plain dict keyed by label values (see :class:`_FastHistogram`
    for why); key parts are turned into strings at scrape time."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.counts: dict[tuple[Any, ...], float] = {}

    def inc(self, key: tuple[Any, ...], amount: float = 1) -> None:
        """Add ``amount`` to the series of label values ``key``."""
        counts = self.counts
        counts[key] = counts.get(key, 0) + amount

    def collect(self) -> Iterable[CounterMetricFamily]:
        fam = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, n in sorted(self.counts.items()):
            fam.add_metric([str(x) for x in key], n)
        yield fam


class _InFlight(Collector):
    """``mlmon_inflight_requests{model}`` as a plain int."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.value = 0

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1

    def collect(self) -> Iterable[GaugeMetricFamily]:
        fam = GaugeMetricFamily(
            c.INFLIGHT_REQUESTS, "Requests being proxied now.", labels=[c.LABEL_MODEL]
        )
        fam.add_metric([self.model], self.value)
        yield fam


class SidecarMetrics:
    """All metrics of one sidecar (one model).

    Args:
        model: the model's spec.
        registry: where metrics register (default: a new ``CollectorRegistry``).
    """

    def __init__(self, model: ModelSpec, registry: CollectorRegistry | None = None) -> None:
        self.model = model
        self.name = model.name
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        L = c  # noqa: N806 - short alias for label constants
        self.requests = _FastCounter(
            c.REQUESTS_TOTAL,
            "Requests proxied to the model server, by route template, status code and outcome.",
            [L.LABEL_MODEL, L.LABEL_VERSION, L.LABEL_ROUTE, L.LABEL_CODE, L.LABEL_OUTCOME],
        )
        r.register(self.requests)
        self.duration = _FastHistogram(
            c.REQUEST_DURATION_SECONDS,
            "Time from the request head to the last response byte, in seconds.",
            [L.LABEL_MODEL, L.LABEL_VERSION, L.LABEL_ROUTE, L.LABEL_OUTCOME],
            model.latency_buckets,
        )
        r.register(self.duration)
        self.ttfb = Histogram(
            c.TIME_TO_FIRST_BYTE_SECONDS,
            "Streamed responses: time from the request head to the first body bytes, in seconds.",
            [L.LABEL_MODEL, L.LABEL_VERSION, L.LABEL_ROUTE],
            buckets=model.latency_buckets,
            registry=r,
        )
        self.inflight = _InFlight(self.name)
        r.register(self.inflight)
        self.upstream_up = Gauge(
            c.UPSTREAM_UP,
            "1 when the model server answered its last readiness probe, else 0.",
            [L.LABEL_MODEL],
            registry=r,
        ).labels(self.name)
        self.info = Gauge(
            c.MODEL_INFO,
            "Model version and weights fingerprint (sha256 of models[].weights_path; empty "
            "when unset or not yet computed) served behind this sidecar (always 1).",
            [L.LABEL_MODEL, L.LABEL_VERSION, L.LABEL_FINGERPRINT],
            registry=r,
        )
        sizes = []
        for name, doc in (
            (c.REQUEST_SIZE_BYTES, "Request body size in bytes."),
            (c.RESPONSE_SIZE_BYTES, "Response body size in bytes (inference routes)."),
        ):
            hist = _FastHistogram(name, doc, [L.LABEL_MODEL], c.SIZE_BUCKETS_BYTES)
            r.register(hist)
            sizes.append(hist.child(self.name))
        self.request_size, self.response_size = sizes
        self.rejected = Counter(
            c.REJECTED_REQUESTS_TOTAL,
            "Requests the sidecar answered itself without forwarding, by reason.",
            [L.LABEL_MODEL, L.LABEL_REASON],
            registry=r,
        )
        self.unexpected = Counter(
            c.UNEXPECTED_FEATURES_TOTAL,
            "Input values whose name is not a spec feature, one per row per name.",
            [L.LABEL_MODEL],
            registry=r,
        ).labels(self.name)
        self.payload_errors = Counter(
            c.PAYLOAD_ERRORS_TOTAL,
            "Inference payloads the sidecar could not read (they were forwarded untouched).",
            [L.LABEL_MODEL, L.LABEL_PROTOCOL, L.LABEL_REASON],
            registry=r,
        )
        self.inspection_skipped = Counter(
            c.PAYLOAD_INSPECTION_SKIPPED_TOTAL,
            "Inference payloads forwarded without inspection, by reason.",
            [L.LABEL_MODEL, L.LABEL_REASON],
            registry=r,
        )
        self.prediction_value = Histogram(
            c.PREDICTION_VALUE,
            "Numeric model outputs, one observation per row.",
            [L.LABEL_MODEL, L.LABEL_OUTPUT],
            buckets=_all_buckets(model.outputs),
            registry=r,
        )
        self.predictions = _FastCounter(
            c.PREDICTIONS_TOTAL,
            "Class outputs, one per row; classes outside the spec count as 'other'.",
            [L.LABEL_MODEL, L.LABEL_OUTPUT, L.LABEL_CLASS],
        )
        r.register(self.predictions)
        self.coverage = CoverageEvaluator(model.features)
        r.register(_CoverageCollector(self.name, self.coverage))

        # Control API state (routing, load shedding, quarantine): exported whether or
        # not the control API is enabled, so dashboards see the defaults.
        route_weight = Gauge(
            c.ROUTE_WEIGHT,
            "Share of new requests routed to each upstream (primary, fallback); sums to 1.",
            [L.LABEL_MODEL, L.LABEL_UPSTREAM],
            registry=r,
        )
        self.route_primary = route_weight.labels(self.name, c.UPSTREAM_PRIMARY)
        self.route_fallback = (
            route_weight.labels(self.name, c.UPSTREAM_FALLBACK)
            if model.fallback_upstream is not None
            else None
        )
        self.quarantined = Gauge(
            c.QUARANTINED,
            "1 while the control API quarantines this replica (/-/ready answers 503), else 0.",
            [L.LABEL_MODEL],
            registry=r,
        ).labels(self.name)
        self.concurrency_limit = Gauge(
            c.CONCURRENCY_LIMIT,
            "Most requests in flight before new ones are shed with 503; 0 = no limit.",
            [L.LABEL_MODEL],
            registry=r,
        ).labels(self.name)
        self.shed = Counter(
            c.REQUESTS_SHED_TOTAL,
            "Requests answered 503 by the sidecar because its concurrency limit was reached.",
            [L.LABEL_MODEL],
            registry=r,
        ).labels(self.name)
        self.set_control(0.0, None, False)

        if model.protocol == "openai":
            self.prompt_chars: Any = Histogram(
                c.LLM_PROMPT_CHARACTERS,
                "Prompt length in characters (all messages), one per request.",
                [L.LABEL_MODEL],
                buckets=(64, 256, 1024, 4096, 16384, 65536, 262144, 1048576),
                registry=r,
            ).labels(self.name)
            tokens = Counter(
                c.LLM_TOKENS_TOTAL,
                "Tokens reported in responses' usage, by kind (prompt, completion).",
                [L.LABEL_MODEL, L.LABEL_KIND],
                registry=r,
            )
            self.tokens = {
                k: tokens.labels(self.name, k) for k in (c.TOKENS_PROMPT, c.TOKENS_COMPLETION)
            }
            self.ttft: Any = Histogram(
                c.LLM_TIME_TO_FIRST_TOKEN_SECONDS,
                "Streamed completions: time from the request head to the first token, in seconds.",
                [L.LABEL_MODEL],
                buckets=model.latency_buckets,
                registry=r,
            ).labels(self.name)

        # Pre-create children so that rates and coverage ratios exist from the first scrape.
        for reason in c.PAYLOAD_REASONS:
            self.payload_errors.labels(self.name, model.protocol, reason)
        for reason in (c.SKIP_TOO_LARGE, c.SKIP_CONTENT_TYPE, c.SKIP_CONTENT_ENCODING):
            self.inspection_skipped.labels(self.name, reason)
        self.rejected.labels(self.name, c.REJECT_TOO_LARGE)

        self._outputs = {o.name: o for o in model.outputs}
        self._classes = {
            o.name: {category_key(x): str(x) for x in o.classes or ()} for o in model.outputs
        }
        self._dur_children: dict[tuple[str, str, str, str], _Series] = {}
        self._ttfb_children: dict[tuple[str, str, str], Any] = {}
        self._pred_children: dict[str, Any] = {}
        self.version = UNKNOWN_VERSION
        self.fingerprint = ""
        self.on_version_change: Callable[[str], None] | None = None
        """Called with the new version after :meth:`set_version` changed it (the sidecar
        recomputes the weights fingerprint then)."""
        self._set_info(model.version or UNKNOWN_VERSION, "")

    # -- version --------------------------------------------------------------
    def set_version(self, version: str) -> None:
        """Set the served version: ``mlmon_model_info`` shows only the current one.

        The old info series is removed, not left at 1 (a stale gauge would make a
        cross-replica version check see two versions; the kind of fault in C11).
        Counters keep their old-version series (counters never go down). A change
        calls :attr:`on_version_change`.
        """
        if version == self.version and self.info._metrics:
            return
        self._set_info(version, self.fingerprint)
        if self.on_version_change is not None:
            self.on_version_change(version)

    def set_fingerprint(self, fingerprint: str) -> None:
        """Set the weights fingerprint (hex sha256, or empty for unknown) of the info series."""
        if fingerprint != self.fingerprint:
            self._set_info(self.version, fingerprint)

    def _set_info(self, version: str, fingerprint: str) -> None:
        try:  # noqa: SIM105 - cheaper than contextlib.suppress
            self.info.remove(self.name, self.version, self.fingerprint)
        except KeyError:
            pass
        self.version = version
        self.fingerprint = fingerprint
        self.info.labels(self.name, version, fingerprint).set(1)

    def set_control(
        self, fallback_weight: float, concurrency_limit: int | None, quarantined: bool
    ) -> None:
        """Export the control state: route weights, concurrency limit (0 = none), quarantine."""
        fallback = self.route_fallback
        if fallback is None:
            self.route_primary.set(1.0)
        else:
            self.route_primary.set(1.0 - fallback_weight)
            fallback.set(fallback_weight)
        self.concurrency_limit.set(concurrency_limit or 0)
        self.quarantined.set(1 if quarantined else 0)

    # -- hot path -------------------------------------------------------------
    def observe_request(
        self,
        model: str,
        route: str,
        status: int,
        outcome: str,
        duration: float,
        exemplar: Any,
        now: float = 0.0,
    ) -> None:
        """Count one finished request and observe its duration (seconds).

        ``exemplar``: a label dict, a sampled trace (``trace_id_hex``), or None;
        ``now``: a monotonic clock for the per-bucket exemplar interval.
        """
        version = self.version if model == self.name else ""
        self.requests.inc((model, version, route, status, outcome))
        key = (model, version, route, outcome)
        series = self._dur_children.get(key)
        if series is None:
            series = self._dur_children[key] = self.duration.child(*key)
        series.observe(duration, exemplar, now)

    def observe_ttfb(self, model: str, route: str, seconds: float) -> None:
        """Observe the time to the response head of a streamed response (seconds)."""
        version = self.version if model == self.name else ""
        key = (model, version, route)
        child = self._ttfb_children.get(key)
        if child is None:
            child = self._ttfb_children[key] = self.ttfb.labels(model, version, route)
        child.observe(seconds)

    def observe_rows(self, rows: Rows) -> None:
        """Count feature coverage and unexpected features of one request's rows."""
        self.coverage.evaluate(rows)
        if rows.unexpected:
            self.unexpected.inc(rows.unexpected)
        if self.model.protocol == "openai":
            chars = rows.extra.get("prompt_characters")
            if chars is not None:
                self.prompt_chars.observe(chars)

    def observe_predictions(self, preds: Predictions) -> None:
        """Observe the declared outputs of one response (one value per row)."""
        outputs = preds.outputs
        for spec_name, spec in self._outputs.items():
            if spec_name == "*":
                if not outputs:
                    continue
                values = next(iter(outputs.values()))
                label = "prediction"
            else:
                values = outputs.get(spec_name)  # type: ignore[assignment]
                if values is None:
                    continue
                label = spec_name
            if spec.type == "numerical":
                hist = self._pred_child(label)
                for v in values:
                    t = type(v)
                    if (t is float or t is int) and v == v:
                        hist.observe(v)
            else:
                classes = self._classes[spec_name]
                inc = self.predictions.inc
                for v in values:
                    if isinstance(v, list) and len(v) == 1:
                        v = v[0]
                    cls = c.CLASS_OTHER
                    if _scalar(v):
                        cls = classes.get(category_key(v), c.CLASS_OTHER)
                    inc((self.name, label, cls))
        if preds.usage and self.model.protocol == "openai":
            for kind, n in preds.usage.items():
                child = self.tokens.get(kind)
                if child is not None and n > 0:
                    child.inc(n)

    def _pred_child(self, output: str) -> Any:
        child = self._pred_children.get(output)
        if child is None:
            child = self._pred_children[output] = self.prediction_value.labels(self.name, output)
        return child


def _scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool))


def _all_buckets(outputs: list[OutputSpec]) -> list[float]:
    # One histogram family must have one bucket layout; with several numerical
    # outputs the union of their buckets is used.
    merged: set[float] = set()
    for o in outputs:
        if o.type == "numerical":
            merged.update(o.buckets or c.DEFAULT_PREDICTION_BUCKETS)
    return sorted(merged) or list(c.DEFAULT_PREDICTION_BUCKETS)
