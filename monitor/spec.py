"""``monitor.yaml``: the one spec every part of the project is generated from.

The file is parsed once (:func:`load_spec`) into the typed models below
(pydantic v2, ``extra="forbid"``, so a typo is an error, never ignored). Every
field documents its unit and default where it is declared. Problems are
reported as ``field.path: reason`` lines, e.g.
``models[0].features[2].max: must be > min``.

Schema version: ``apiVersion: monitor/v1``.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from monitor import conventions as c
from monitor.errors import MonitorError, SpecError

__all__ = [
    "API_VERSION",
    "CanarySpec",
    "CaptureSpec",
    "FeatureSpec",
    "ModelSpec",
    "MonitorSpec",
    "OutputSpec",
    "TimeoutSpec",
    "TracingSpec",
    "load_spec",
    "parse_spec",
]

API_VERSION = "monitor/v1"

_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.\-]{0,62}$")
Protocol = Literal["v2", "v1", "tfserving", "mlflow", "openai", "json"]
Category = str | int | float | bool


_RESERVED_COLUMNS = frozenset({"timestamp", "request_id", "prediction"})
"""Column names of the capture store that features may not take."""


#: A YAML boolean (true/false, or YAML 1.1's yes/no unquoted). Strict: a quoted "yes"
#: or a 1 is a mistake to name, not a value to guess at.
Bool = Annotated[bool, Strict()]


#: A day in seconds: the upper bound of timeouts (a larger one is a typo, not a plan).
DAY = 86_400


class _Model(BaseModel):
    # allow_inf_nan=False: .inf or .nan is never a sensible setting (a timeout of .inf,
    # a max of .nan that compares false with everything); name it instead
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "must start with a letter or '_' and hold only letters, digits, '_', '.', '-' "
            "(at most 63 characters)"
        )
    return value


class FeatureSpec(_Model):
    """One model input feature, in the column order of a positional input."""

    name: str
    """Feature name as sent by clients (a named input, record key or column)."""
    type: Literal["numerical", "categorical"] = "numerical"
    """``numerical`` (a finite number) or ``categorical`` (a scalar from a set)."""
    min: float | None = None
    """Inclusive lower bound of a numerical feature; below it counts ``out_of_range``."""
    max: float | None = None
    """Inclusive upper bound of a numerical feature; above it counts ``out_of_range``."""
    categories: list[Category] | None = None
    """Known values of a categorical feature; any other counts ``unseen_category``."""
    pii: Bool = False
    """Personal data: counted for coverage but never written to the capture store."""
    required: Bool = True
    """Whether clients must send it (optional features may be ``missing`` by design)."""
    min_coverage: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """Coverage (present share) below this alerts; default ``alerting.min_coverage``."""
    description: str = ""
    """Free text shown in reports and dashboards."""
    drift_method: str | None = None
    """Drift method of this feature (evidently name: ``ks``, ``psi``, ...); default
    ``drift.method``, else evidently's choice."""
    drift_threshold: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Threshold of this feature's drift method; default ``drift.threshold``, else the
    method's evidently default."""

    _drift_method = field_validator("drift_method")(
        classmethod(lambda cls, v: _check_drift_method(v))
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v in _RESERVED_COLUMNS:
            raise ValueError(f"{v!r} is reserved for a capture-store column; rename the feature")
        return _check_name(v)

    @field_validator("max")
    @classmethod
    def _max_above_min(cls, v: float | None, info: ValidationInfo) -> float | None:
        lo = info.data.get("min")
        if v is not None and lo is not None and not v > lo:
            raise ValueError("must be > min")
        return v

    @field_validator("min", "max")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("categories")
    @classmethod
    def _categories(cls, v: list[Category] | None) -> list[Category] | None:
        if v is not None:
            if not v:
                raise ValueError("must not be empty (omit it to accept any value)")
            if len({str(x) for x in v}) != len(v):
                raise ValueError("must not repeat a value")
        return v

    @model_validator(mode="after")
    def _type_fields(self) -> FeatureSpec:
        if self.type == "categorical" and (self.min is not None or self.max is not None):
            raise ValueError(f"feature {self.name!r}: min/max apply to numerical features only")
        if self.type == "numerical" and self.categories is not None:
            raise ValueError(
                f"feature {self.name!r}: categories apply to categorical features only"
            )
        if self.drift_method in c.DRIFT_NUMERICAL_ONLY_METHODS and self.type == "categorical":
            raise ValueError(
                f"feature {self.name!r}: drift_method {self.drift_method!r} needs a "
                "numerical feature"
            )
        if self.drift_method in c.DRIFT_CATEGORICAL_ONLY_METHODS and self.type == "numerical":
            raise ValueError(
                f"feature {self.name!r}: drift_method {self.drift_method!r} needs a "
                "categorical feature"
            )
        return self


def _check_drift_method(v: str | None) -> str | None:
    if v is not None and v not in c.DRIFT_METHODS:
        raise ValueError(f"unknown drift method {v!r}; known: {', '.join(c.DRIFT_METHODS)}")
    return v


class LabelSpec(_Model):
    """Where delayed ground-truth labels arrive, for model quality."""

    path: Path
    """Parquet or CSV file with columns ``request_id``, ``label``, ``timestamp``."""
    task: Literal["classification", "regression"] | None = None
    """Model task; default classification when the first output is categorical,
    else regression."""
    positive_label: str | None = None
    """Positive class of a binary classifier (default the larger label, e.g. ``1``)."""


class OutputSpec(_Model):
    """One model output tracked as a prediction metric."""

    name: str
    """Output name (V2 output tensor name, a key of a record prediction), or ``*`` for
    the first/only output of the response."""
    type: Literal["numerical", "categorical"] = "numerical"
    """``numerical``: observed in ``mlmon_prediction_value``; ``categorical``: counted in
    ``mlmon_predictions_total`` by class."""
    classes: list[Category] | None = None
    """Declared classes of a categorical output; others are counted as ``other``.
    Required for categorical outputs (label values must be bounded)."""
    buckets: list[float] | None = None
    """Histogram buckets of a numerical output; default 0.1 .. 1.0 in steps of 0.1."""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return v if v == "*" else _check_name(v)

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v: list[float] | None) -> list[float] | None:
        if v is not None:
            _check_buckets(v)
        return v

    @field_validator("classes")
    @classmethod
    def _unique_classes(cls, v: list[Category] | None) -> list[Category] | None:
        if v is not None and len({str(x) for x in v}) != len(v):
            raise ValueError("must not repeat a class")
        return v

    @model_validator(mode="after")
    def _classes(self) -> OutputSpec:
        if self.type == "categorical" and not self.classes:
            raise ValueError(f"output {self.name!r}: categorical outputs need 'classes'")
        if self.type == "numerical" and self.classes is not None:
            raise ValueError(f"output {self.name!r}: classes apply to categorical outputs only")
        if self.type == "categorical" and self.buckets is not None:
            raise ValueError(f"output {self.name!r}: buckets apply to numerical outputs only")
        return self


def _check_buckets(v: list[float]) -> None:
    if not v:
        raise ValueError("must not be empty")
    if any(not math.isfinite(b) for b in v):
        raise ValueError("must be finite numbers (+Inf is added automatically)")
    if any(nxt <= cur for cur, nxt in itertools.pairwise(v)):
        raise ValueError("must be strictly increasing")


class CaptureSpec(_Model):
    """Sampled input capture for the drift job (Parquet files)."""

    dir: Path = Path("./capture")
    """Directory of the capture store; created when missing."""
    sample_rate: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Share of rows written, 0-1 (default 1.0: every row)."""
    max_bytes: Annotated[int, Field(gt=0, le=1 << 50)] = 1 << 30
    """Size bound in bytes of this model's capture files (default 1 GiB); oldest go first."""
    rotate_seconds: Annotated[float, Field(gt=0)] = 60.0
    """A file is closed after this many seconds (default 60)."""
    max_file_bytes: Annotated[int, Field(gt=0, le=1 << 40)] = 8 << 20
    """A file is closed once its buffered rows reach about this size in memory
    (default 8 MiB, about 30,000 rows of 30 features): the bound on the writer's
    buffer, so on the sidecar's RSS."""
    queue_rows: Annotated[int, Field(gt=0)] = 20_000
    """Rows that may wait for the writer (default 20,000, about 20 MB for 30 features;
    the writer drains 65-80k rows/s); beyond, rows are dropped and counted."""


class TimeoutSpec(_Model):
    """Upstream timeouts of the sidecar."""

    connect_seconds: Annotated[float, Field(gt=0, le=DAY)] = 5.0
    """TCP connect timeout in seconds (default 5); expiry answers 504."""
    client_header_seconds: Annotated[float, Field(gt=0, le=DAY)] = 30.0
    """A request head (request line and headers) must arrive within this many seconds
    of its first byte, or the client gets 408 and the connection closes (default 30 s;
    nginx's client_header_timeout is 60 s). Ends slowloris connections."""
    client_idle_seconds: Annotated[float, Field(gt=0, le=DAY)] = 75.0
    """A client connection with no request in progress and no bytes for this long is
    closed (default 75 s, nginx's keepalive_timeout); this also ends stalled request
    heads (slowloris)."""
    read_seconds: Annotated[float, Field(gt=0, le=DAY)] = 60.0
    """Longest wait for the upstream's response head or next body bytes (default 60 s);
    expiry answers 504 (or aborts a stream already under way)."""


class ControlSpec(_Model):
    """The sidecar's control API (routing, load shedding, quarantine), used by the mitigator."""

    token_file: Path | None = None
    """File holding the bearer token the control API requires."""
    token_env: str | None = None
    """Environment variable holding that token (instead of ``token_file``)."""
    state_file: Path | None = None
    """Where the control state survives restarts (default ``./sidecar-<model>.control.json``)."""

    @model_validator(mode="after")
    def _one_token(self) -> ControlSpec:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give token_file or token_env, not both")
        return self


class CanarySpec(_Model):
    """Golden-set canary of one model (``monitor canary run``): replay recorded requests
    to every replica and compare the answers with the recorded ones."""

    golden: Path
    """Golden file written by ``monitor canary record`` (requests and expected outputs);
    a relative path is relative to the working directory, as every path of the spec."""
    interval_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 30.0
    """Seconds between two checks of each replica (default 30)."""
    abs_tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-6
    """A numeric output passes when ``|actual - expected| <= abs_tolerance +
    rel_tolerance * |expected|`` (numpy's ``isclose`` rule; default 1e-6)."""
    rel_tolerance: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1e-4
    """Relative part of that rule (default 1e-4). Strings, booleans and integers (class
    outputs) must be equal."""
    timeout_seconds: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 10.0
    """Timeout of one golden request; expiry counts the check as ``error`` (default 10)."""

    @field_validator("golden")
    @classmethod
    def _golden(cls, v: Path) -> Path:
        if str(v) in ("", "."):
            raise ValueError("must name the golden file (monitor canary record --out)")
        return v


class ModelSpec(_Model):
    """One model server the sidecar sits in front of."""

    name: str
    """Model name: the ``model`` label everywhere, and the name in the upstream's routes
    unless ``upstream_name`` is set."""
    protocol: Protocol = "v2"
    """Wire protocol: v2 (Open Inference Protocol), v1 (KServe V1), tfserving, mlflow,
    openai, json (plain JSON records)."""
    upstream: str
    """Base URL of the model server, ``http://host:port``."""
    upstream_name: str | None = None
    """Model name in the upstream's routes when it differs from ``name``."""
    version: str | None = None
    """Served model version; when unset it is read from upstream metadata (v2, v1,
    tfserving) and otherwise reported as ``unknown``."""
    features: list[FeatureSpec] = []
    """Input features in column order of a 2-D tensor or positional row."""
    outputs: list[OutputSpec] = [OutputSpec(name="*")]
    """Outputs tracked as predictions (default: the first output, numerical)."""
    capture: CaptureSpec | None = None
    """Input capture; omitted = no capture."""
    latency_buckets: list[float] = list(c.DEFAULT_LATENCY_BUCKETS)
    """Request-duration histogram buckets in seconds (default 1 ms .. 60 s)."""
    timeouts: TimeoutSpec = TimeoutSpec()
    """Upstream timeouts."""
    health_path: str | None = None
    """Path probed for ``mlmon_upstream_up`` and ``/-/ready``; default per protocol
    (v2 ``/v2/health/ready``, v1/tfserving ``/v1/models/<name>``, mlflow ``/ping``,
    openai ``/v1/models``, json: any HTTP answer on ``/``)."""
    quality_min: dict[str, Annotated[float, Field(ge=0.0)]] = {}
    """Model quality floors by metric (``accuracy``, ``f1``, ``roc_auc``, ...), checked
    against ``mlmon_model_quality`` from delayed labels; e.g. ``{accuracy: 0.9}``."""
    probe_interval_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    """Seconds between readiness (and version) probes of the upstream (default 5)."""
    inference_paths: list[str] = ["/predict"]
    """json protocol only: paths whose POST bodies are inference requests."""
    inspect_max_bytes: Annotated[int, Field(gt=0)] = 8 << 20
    """Largest body parsed for metrics (default 8 MiB); larger bodies pass through
    uninspected and are counted in ``mlmon_payload_inspection_skipped_total``."""
    max_request_bytes: Annotated[int, Field(gt=0)] | None = None
    """When set, a request declaring a larger body is answered 413 by the sidecar."""
    baseline: Path | None = None
    """Reference data of the drift job: a Parquet or CSV file with one column per
    feature (the training set, or a sample of it)."""
    labels: LabelSpec | None = None
    """Delayed labels joined with captured predictions by request id (model quality)."""
    fallback_upstream: str | None = None
    """Base URL of a fallback model server (``http://host:port``): the control API can
    route a share of traffic, or all of it, there (mitigation ``shift to fallback``)."""
    control: ControlSpec | None = None
    """The sidecar's control API; omitted = disabled (404)."""
    replicas: list[Annotated[str, AfterValidator(lambda v: ModelSpec._upstream(v))]] = []
    """Base URLs (``http://host:port``) of every replica of the model server, checked one
    by one by the canary; default ``[upstream]``."""
    canary: CanarySpec | None = None
    """Golden-set canary; omitted = none."""
    weights_path: Path | None = None
    """The served weights (a file, or a directory whose every file is hashed) as the
    sidecar sees them: its sha256 is the ``fingerprint`` label of ``mlmon_model_info``,
    computed at start-up and when the version changes. Omitted = empty fingerprint."""
    gpu_metrics: Bool = True
    """Export the node's GPU health (``mlmon_gpu_*``, NVML) from this sidecar (default on;
    without an NVIDIA driver it exports ``mlmon_gpu_up{reason="no_driver"} 0``). Turn it
    off where a per-node ``monitor gpu-exporter`` runs, so GPUs are not exported twice."""

    @field_validator("fallback_upstream")
    @classmethod
    def _fallback(cls, v: str | None) -> str | None:
        return None if v is None else cls._upstream(v)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, v: list[str]) -> list[str]:
        dup = sorted({u for u in v if v.count(u) > 1})
        if dup:
            raise ValueError(f"must not repeat a replica; repeated: {', '.join(dup)}")
        return v

    _check = field_validator("name", "upstream_name")(
        classmethod(lambda cls, v: v if v is None else _check_name(v))
    )

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("must be an http:// URL with a host, e.g. http://127.0.0.1:8080")
        if parts.username is not None or parts.password is not None:
            # the proxy does not send them, and /-/ready and the logs show the upstream
            raise ValueError("must not carry credentials (user:password@): they would be shown")
        if re.search(r"\s", v):
            raise ValueError("must not contain whitespace")
        if parts.path not in ("", "/") or parts.query or parts.fragment or "#" in v:
            raise ValueError("must be a base URL without path, query or fragment")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        if port == 0:
            raise ValueError("bad port: 0 (give the port the model server listens on)")
        return v.rstrip("/")

    @field_validator("latency_buckets")
    @classmethod
    def _lat_buckets(cls, v: list[float]) -> list[float]:
        _check_buckets(v)
        if v[0] <= 0:
            raise ValueError("must be positive seconds")
        return v

    @field_validator("features")
    @classmethod
    def _unique_features(cls, v: list[FeatureSpec]) -> list[FeatureSpec]:
        seen: set[str] = set()
        for i, f in enumerate(v):
            if f.name in seen:
                raise ValueError(f"feature name {f.name!r} repeats (features[{i}])")
            seen.add(f.name)
        return v

    @field_validator("outputs")
    @classmethod
    def _unique_outputs(cls, v: list[OutputSpec]) -> list[OutputSpec]:
        names = [o.name for o in v]
        if len(set(names)) != len(names):
            raise ValueError("output names must not repeat")
        return v

    @field_validator("inference_paths")
    @classmethod
    def _inference_paths(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/") or any(ch in p for ch in "{}?#"):
                raise ValueError(f"{p!r}: must be a literal path starting with '/' (no query)")
        return v

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @property
    def replica_urls(self) -> list[str]:
        """``replicas``, or ``[upstream]`` when none are listed."""
        return list(self.replicas) or [self.upstream]

    @property
    def route_name(self) -> str:
        """Model name as it appears in the upstream's URL paths."""
        return self.upstream_name or self.name

    @property
    def upstream_host(self) -> str:
        """Host part of ``upstream``."""
        return urlsplit(self.upstream).hostname or "127.0.0.1"

    @property
    def upstream_port(self) -> int:
        """Port of ``upstream`` (80 when the URL names none)."""
        return urlsplit(self.upstream).port or 80


class TracingSpec(_Model):
    """OpenTelemetry tracing of proxied requests."""

    enabled: Bool = True
    """One span per proxied request, ``traceparent`` propagated upstream (default on)."""
    otlp_endpoint: str | None = None
    """OTLP/HTTP traces endpoint, e.g. ``http://127.0.0.1:4318/v1/traces``; unset = spans
    are made (for exemplars and propagation) but not exported."""
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    """Share of root traces sampled (parent-based: an incoming sampled parent is kept)."""


_DURATION_RE = re.compile(r"^([1-9][0-9]*)([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration_seconds(value: str) -> int:
    """Seconds in a Prometheus-style duration of one unit: ``30d``, ``4w``, ``12h``, ``90m``.

    Raises:
        ValueError: not of that form.
    """
    m = _DURATION_RE.match(value)
    if m is None:
        raise ValueError(f"{value!r}: expected a duration like 30d, 4w, 12h or 90m")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


class SLOSpec(_Model):
    """A service level objective of one model (SRE workbook, chapter 2).

    Availability SLO (no ``threshold_seconds``): the SLI is the share of requests
    whose outcome is not server_error, timeout or unreachable. Latency SLO: the
    share answered within ``threshold_seconds``.
    """

    name: str
    """SLO name, the ``slo`` label of its rules and alerts (e.g. ``availability``)."""
    model: str
    """The spec model it applies to."""
    objective: Annotated[float, Field(gt=0.0, lt=1.0)]
    """Target share of good requests, 0-1 exclusive (0.999 = 99.9 %). 1.0 is refused: it
    leaves no error budget, and burn rates divide by the budget (case C22)."""
    window: str = "30d"
    """Compliance window, a duration like ``30d`` or ``4w`` (default 30d); the burn-rate
    factors are computed from it."""
    threshold_seconds: Annotated[float, Field(gt=0)] | None = None
    """Latency SLO: requests slower than this are bad. Must be one of the model's
    ``latency_buckets`` (the SLI is read from the histogram buckets)."""
    description: str = ""
    """Free text for the alert descriptions."""

    _check = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))

    @field_validator("window")
    @classmethod
    def _window(cls, v: str) -> str:
        seconds = duration_seconds(v)
        if seconds < DAY:
            raise ValueError("must be at least 1d (burn-rate alerts look back up to 3d)")
        if seconds > 366 * DAY:
            # an error budget spent over years alerts on nothing; and Prometheus keeps
            # 15d of data by default, so even 90d needs longer retention
            raise ValueError("must be at most 366d (SLO windows are 7d to 90d in practice)")
        return v

    @property
    def window_seconds(self) -> int:
        """The compliance window in seconds."""
        return duration_seconds(self.window)


def parse_listen(value: str) -> tuple[str, int]:
    """Parse a listen address ``HOST:PORT`` (``[::1]:8000`` for IPv6; an empty host is
    ``0.0.0.0``; port 0 picks a free one).

    Raises:
        MonitorError: not of that form, or the port is not 0-65535 (the message names
            the value and gives an example).
    """
    host, sep, port = value.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if (
        not sep
        or not (port.isascii() and port.isdigit())
        or not 0 <= int(port) <= 65535
        or any(ch in host for ch in "/@ \t")
        or (":" in host and not bracketed)  # IPv6 needs brackets: [::1]:8000
    ):
        raise MonitorError(
            f"listen address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8000 or [::1]:8000"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


def _check_http_url(v: str | None) -> str | None:
    if v is None:
        return v
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{v!r}: must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{v!r}: bad port: {exc}") from None
    return v


_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class ReceiverSpec(_Model):
    """Where Alertmanager sends one severity. Give at least one destination."""

    webhook_url: str | None = None
    """A generic webhook (Alertmanager ``webhook_configs``)."""
    pagerduty_routing_key_file: str | None = None
    """File holding a PagerDuty Events v2 routing key (absolute path: Alertmanager
    reads it relative to its working directory)."""
    slack_api_url_file: str | None = None
    """File holding a Slack incoming-webhook URL (absolute path, as above)."""
    slack_channel: str | None = None
    """Slack channel, e.g. ``#ml-alerts``."""

    _url = field_validator("webhook_url")(classmethod(lambda cls, v: _check_http_url(v)))

    @model_validator(mode="after")
    def _some(self) -> ReceiverSpec:
        if not (self.webhook_url or self.pagerduty_routing_key_file or self.slack_api_url_file):
            raise ValueError("give webhook_url, pagerduty_routing_key_file or slack_api_url_file")
        if self.slack_channel and not self.slack_api_url_file:
            raise ValueError("slack_channel needs slack_api_url_file")
        return self


class AlertingSpec(_Model):
    """Thresholds and routing of the generated alerts (defaults documented per field)."""

    runbook_base_url: str = "docs/runbooks"
    """Base of every ``runbook_url``: ``<base>/<AlertName>.md`` (default the repo path)."""
    sidecar_job: str = "model-sidecar"
    """Prometheus ``job`` label of the sidecars' scrape config."""
    drift_job: str = "model-drift"
    """Prometheus ``job`` label of the drift job's scrape config."""
    gpu_job: str = "gpu-exporter"
    """Prometheus ``job`` label of ``monitor gpu-exporter``."""
    min_coverage: Annotated[float, Field(ge=0.0, le=1.0)] = 0.95
    """Feature coverage (present share over 15 m) below this alerts; per-feature
    ``min_coverage`` overrides it (default 0.95)."""
    max_payload_error_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    """Share of inference requests the sidecar cannot parse, over 15 m (default 1 %)."""
    max_latency_saturation_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    """Share of requests slower than the top finite latency bucket, over 5 m, above
    which ``LatencyHistogramSaturated`` fires (default 1 %; case C20)."""
    max_capture_drop_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    """Share of captured rows dropped, over 15 m (default 1 %)."""
    gpu_memory_max_ratio: Annotated[float, Field(gt=0.0, le=1.0)] = 0.95
    """GPU memory used over total above this for 15 m alerts (default 0.95)."""
    version_skew_minutes: Annotated[float, Field(gt=0)] = 10.0
    """Replicas of one model reporting more than one version this long alerts (default 10)."""
    pager: ReceiverSpec | None = None
    """Receiver of ``severity=page`` alerts; none = they are only shown in Alertmanager."""
    ticket: ReceiverSpec | None = None
    """Receiver of ``severity=ticket`` alerts."""
    mitigator_url: str | None = None
    """Webhook URL of ``monitor mitigator`` (``http://host:port/v1/alerts``); alerts that
    carry a ``mitigation`` label also go there."""
    _url = field_validator("mitigator_url")(classmethod(lambda cls, v: _check_http_url(v)))

    @model_validator(mode="after")
    def _mitigator(self) -> AlertingSpec:
        if self.mitigator_credentials_file and not self.mitigator_url:
            raise ValueError("mitigator_credentials_file needs mitigator_url")
        return self

    mitigator_credentials_file: str | None = None
    """File holding the bearer token Alertmanager sends to the mitigator; a relative
    path resolves against the directory of the generated alertmanager.yml."""


class DriftSpec(_Model):
    """Schedule and verdict rules of the drift job (evidently's defaults when unset)."""

    schedule_seconds: Annotated[float, Field(gt=0, le=7 * DAY)] = 300.0
    """Seconds between scheduled drift runs (default 300)."""
    window_seconds: Annotated[float, Field(gt=0, le=366 * DAY)] = 3600.0
    """Current window: the last this many seconds of captured rows (default 3600)."""
    min_rows: Annotated[int, Field(ge=1)] = 100
    """Fewer current rows than this: ``insufficient_data``, never a verdict (default 100)."""
    drift_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """Dataset drift when at least this share of features drift (evidently's default 0.5)."""
    method: str | None = None
    """Drift method for every feature (``ks``, ``psi``, ...); unset = evidently's choice."""
    threshold: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """Threshold for ``method``; unset = the method's evidently default."""
    engine: Literal["fast", "evidently", "spark"] = "fast"
    """Drift engine: ``fast`` (ours, default), ``evidently`` or ``spark``."""
    cache_dir: Path | None = None
    """Cache of baseline statistics (default ``$XDG_CACHE_HOME/monitor/drift``)."""
    out_dir: Path = Path("./drift-reports")
    """Where ``monitor drift serve`` writes ``<model>/drift.json`` and ``report.html``."""

    _method = field_validator("method")(classmethod(lambda cls, v: _check_drift_method(v)))


class MitigationSpec(_Model):
    """An automated mitigation policy (run by ``monitor mitigator``).

    The alert generator reads ``name`` and ``match``: alerts a policy matches carry
    ``mitigation: <name>`` and are routed to the mitigator too. ``action`` and
    ``revert`` are checked here (:func:`monitor.mitigator.policy.check_action`), so
    ``monitor validate`` names a bad type, op or parameter.
    """

    name: str
    """Policy name, the ``mitigation`` label value."""
    match: dict[str, str]
    """Alert label matchers: ``value`` is equality, ``~regex`` a full regex match."""
    action: dict[str, Any]
    """What to do (``type``: sidecar, http or command, with its parameters)."""
    revert: dict[str, Any] | None = None
    """How to undo it (same shape as ``action``)."""
    cooldown_seconds: Annotated[float, Field(ge=0, le=30 * DAY)] = 600.0
    """Minimum seconds between two runs of this policy (default 600)."""
    max_per_hour: Annotated[int, Field(ge=1)] | None = None
    """Rate limit of this policy (default none)."""
    revert_on_resolve: Bool = False
    """Undo the action when the alert resolves (default false)."""
    min_firing_seconds: Annotated[float, Field(ge=0)] = 0.0
    """Act only on alerts firing at least this long (from ``startsAt``; default 0)."""
    revert_hold_seconds: Annotated[float, Field(ge=0)] = 0.0
    """Seconds the alert must stay resolved before the revert (default 0)."""
    dry_run: Bool = False
    """Log and audit, but do not act (default false)."""

    _check = field_validator("name")(classmethod(lambda cls, v: _check_name(v)))

    @field_validator("action", "revert")
    @classmethod
    def _action(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        from monitor.mitigator.policy import ActionError, check_action

        if v is not None:
            try:
                check_action(v, "")
            except ActionError as exc:
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _revertible(self) -> MitigationSpec:
        from monitor.mitigator.policy import inverse

        if self.revert_on_resolve and self.revert is None and inverse(self.action) is None:
            raise ValueError(
                f"revert_on_resolve: a {self.action['type']} action has no automatic inverse; "
                "give a revert"
            )
        return self

    @field_validator("match")
    @classmethod
    def _match(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("must name at least one label (e.g. alertname)")
        for key, value in v.items():
            if not _LABEL_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a Prometheus label name")
            if value.startswith("~"):
                try:
                    re.compile(value[1:])
                except re.error as exc:
                    raise ValueError(f"{key}: bad regex {value[1:]!r}: {exc}") from None
        return v


class MitigatorSpec(_Model):
    """``monitor mitigator``: the Alertmanager webhook receiver that runs mitigations."""

    listen: str = "127.0.0.1:9500"
    """``HOST:PORT`` of the webhook (``POST /v1/alerts``) and ``/metrics``."""

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        try:
            parse_listen(v)
        except MonitorError as exc:
            raise ValueError(str(exc)) from None
        return v

    token_file: Path | None = None
    """File holding the bearer token Alertmanager must send (``alerting.mitigator_credentials_file``
    names the same file for the generated alertmanager.yml)."""
    token_env: str | None = None
    """Environment variable holding that token (instead of ``token_file``)."""
    store: str = "sqlite:///./mitigator.db"
    """``sqlite:///PATH`` (WAL; default ``./mitigator.db``) or ``postgresql://...`` for replicas."""
    prometheus_url: str | None = None
    """Prometheus to ask before a revert whether the alert's series still exist (case C23)."""
    max_actions_per_hour: Annotated[int, Field(ge=1)] = 30
    """Global rate limit over all policies (default 30)."""
    max_body_bytes: Annotated[int, Field(gt=0)] = 1 << 20
    """Larger webhook bodies are answered 413 (default 1 MiB)."""
    action_timeout_seconds: Annotated[float, Field(gt=0, le=DAY)] = 30.0
    """Timeout of one attempt of an action (default 30 s)."""
    retries: Annotated[int, Field(ge=0, le=100)] = 3
    """Retries of a failed attempt, with exponential backoff and jitter (default 3)."""
    escalation_url: str | None = None
    """Webhook paged when an action fails for good (default ``alerting.pager.webhook_url``)."""
    revert_check_interval_seconds: Annotated[float, Field(gt=0)] = 30.0
    """Seconds between two safety checks of a postponed revert (case C23; default 30).
    After 20 checks that still find the alert firing or its targets down, the revert
    fails and is escalated."""

    _urls = field_validator("prometheus_url", "escalation_url")(
        classmethod(lambda cls, v: _check_http_url(v))
    )

    @model_validator(mode="after")
    def _one_token(self) -> MitigatorSpec:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("give token_file or token_env, not both")
        return self

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                f"{v!r}: must be sqlite:///PATH (sqlite:////abs/path for an absolute "
                "one) or postgresql://..."
            )
        return v


class MonitorSpec(_Model):
    """The whole ``monitor.yaml``."""

    apiVersion: Literal["monitor/v1"]  # noqa: N815 - the YAML key
    """Schema version; only ``monitor/v1`` exists."""
    service: str
    """Service name, used in rule, alert and dashboard names."""
    models: list[ModelSpec]
    """The models monitored; names are unique."""
    tracing: TracingSpec = TracingSpec()
    """Tracing settings shared by every sidecar."""
    slos: list[SLOSpec] = []
    """Service level objectives; each generates burn-rate rules and alerts."""
    alerting: AlertingSpec = AlertingSpec()
    """Alert thresholds and Alertmanager routing."""
    drift: DriftSpec = DriftSpec()
    """Drift job schedule and verdict rules."""
    mitigations: list[MitigationSpec] = []
    """Automated mitigation policies."""
    mitigator: MitigatorSpec = MitigatorSpec()
    """Settings of ``monitor mitigator``."""

    _check = field_validator("service")(classmethod(lambda cls, v: _check_name(v)))

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[ModelSpec]) -> list[ModelSpec]:
        if not v:
            raise ValueError("must list at least one model")
        names = [m.name for m in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dup)}")
        if c.MODEL_OTHER in names:
            raise ValueError(f"{c.MODEL_OTHER!r} is reserved for unknown models")
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> MonitorSpec:
        models = {m.name: m for m in self.models}
        seen: set[tuple[str, str]] = set()
        for i, slo in enumerate(self.slos):
            model = models.get(slo.model)
            if model is None:
                raise ValueError(
                    f"slos[{i}].model: no model named {slo.model!r} (known: {', '.join(models)})"
                )
            if (slo.model, slo.name) in seen:
                raise ValueError(f"slos[{i}]: SLO {slo.name!r} of model {slo.model!r} repeats")
            seen.add((slo.model, slo.name))
            t = slo.threshold_seconds
            if t is not None and not any(math.isclose(t, b) for b in model.latency_buckets):
                raise ValueError(
                    f"slos[{i}].threshold_seconds: {t:g} is not a latency bucket of model "
                    f"{slo.model!r}; the latency SLI is read from the buckets, so use one of "
                    f"{', '.join(f'{b:g}' for b in model.latency_buckets)}"
                )
        names = [p.name for p in self.mitigations]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"mitigations: names must be unique; repeated: {', '.join(dup)}")
        controlled = [m.name for m in self.models if m.control is not None]
        for i, p in enumerate(self.mitigations):
            for key, action in (("action", p.action), ("revert", p.revert)):
                if action is None or action.get("type") != "sidecar":
                    continue
                named = action.get("model")
                if (named is not None and named not in controlled) or not controlled:
                    whose = f"model {named!r}" if named else "the alert's model"
                    raise ValueError(
                        f"mitigations[{i}].{key}: a sidecar action needs the control API of "
                        f"{whose}: set models[].control (its token file), or the action can "
                        "only fail"
                    )
        self._check_drift_method_fits()
        return self

    def _check_drift_method_fits(self) -> None:
        """``drift.method`` applies to every feature without its own ``drift_method``."""
        method = self.drift.method
        only = {
            **dict.fromkeys(c.DRIFT_NUMERICAL_ONLY_METHODS, "numerical"),
            **dict.fromkeys(c.DRIFT_CATEGORICAL_ONLY_METHODS, "categorical"),
        }
        if method not in only:
            return
        for i, m in enumerate(self.models):
            for j, f in enumerate(m.features):
                if f.drift_method is None and f.type != only[method]:
                    raise ValueError(
                        f"drift.method: {method!r} needs {only[method]} features, but "
                        f"models[{i}].features[{j}] ({f.name!r}) is {f.type}; give that feature "
                        f"its own drift_method, or choose a method for both types (psi, "
                        f"jensenshannon, kl_div, hellinger)"
                    )

    def model(self, name: str) -> ModelSpec:
        """Return the model named ``name``.

        Raises:
            SpecError: no model has that name (the message lists the names).
        """
        for m in self.models:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.models)
        raise SpecError([f"models: no model named {name!r} (known: {known})"])


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(root)"


_PATH_PREFIX = re.compile(r"^[A-Za-z_]\w*(\[\d+\])?(\.\w+(\[\d+\])?)*: ")


def _format_error(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; see docs/spec.md)"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    # Union members add their type name ("float", "str", ...) to the loc; drop them.
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and not p.isidentifier()))
    if not loc and _PATH_PREFIX.match(msg):
        return msg  # a cross-reference check names its own field path
    return f"{_format_loc(loc)}: {msg}"


def parse_spec(data: Any, source: str = "") -> MonitorSpec:
    """Validate already-loaded YAML data into a :class:`MonitorSpec`.

    Raises:
        SpecError: with one ``field.path: reason`` line per problem.
    """
    if not isinstance(data, dict):
        raise SpecError(["(root): must be a mapping with apiVersion, service and models"], source)
    try:
        return MonitorSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError([_format_error(e) for e in exc.errors()], source) from None


def load_spec(path: str | Path) -> MonitorSpec:
    """Read and validate a ``monitor.yaml``.

    Relative paths inside the spec (capture dirs) stay relative to the current
    working directory, as in the file.

    Raises:
        SpecError: the file is missing, is not YAML, or is invalid.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [f"(file): not UTF-8 text (byte {exc.start}); save monitor.yaml as UTF-8"], str(p)
        ) from None
    except OSError as exc:
        raise SpecError([f"(file): cannot read: {exc.strerror or exc}"], str(p)) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"(yaml): {where}{problem}"], str(p)) from None
    except RecursionError:
        raise SpecError(["(yaml): nested too deeply to be a monitor.yaml"], str(p)) from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise SpecError([f"(yaml): {exc}"], str(p)) from None
    return parse_spec(data, str(p))


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key repeated in one mapping is an error
    (PyYAML keeps the last value silently, hiding a typo'd override)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} repeats in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
