"""Every metric, label and route name the project emits, in one place.

Rules, dashboards, the sidecar and the docs import these constants and never
retype a name (the pattern of sloth's ``pkg/common/conventions``). Metric names
follow the Prometheus naming guide (``practices/naming.md``): base units
(``_seconds``, ``_bytes``), ``_total`` only on counters, ``_ratio`` for 0-1
values, no colons (those are reserved for recording rules).
"""

from __future__ import annotations

from typing import Final

NAMESPACE: Final = "mlmon"
"""Prefix of every metric the project exports."""


def metric(name: str) -> str:
    """Return the fully qualified metric name ``mlmon_<name>``."""
    return f"{NAMESPACE}_{name}"


# --- label names -------------------------------------------------------------
# Avoid names that clash with target labels (``service``, ``env``, ``job``,
# ``instance``) and the reserved ``le`` / ``quantile`` (exposition rule 7).
LABEL_MODEL: Final = "model"
LABEL_VERSION: Final = "version"
LABEL_CODE: Final = "code"
LABEL_OUTCOME: Final = "outcome"
LABEL_ROUTE: Final = "route"
LABEL_FEATURE: Final = "feature"
LABEL_STATE: Final = "state"
LABEL_PROTOCOL: Final = "protocol"
LABEL_REASON: Final = "reason"
LABEL_OUTPUT: Final = "output"
LABEL_CLASS: Final = "class"
LABEL_KIND: Final = "kind"

# --- sidecar: RED ------------------------------------------------------------
REQUESTS_TOTAL: Final = metric("requests_total")
REQUEST_DURATION_SECONDS: Final = metric("request_duration_seconds")
TIME_TO_FIRST_BYTE_SECONDS: Final = metric("time_to_first_byte_seconds")
INFLIGHT_REQUESTS: Final = metric("inflight_requests")
UPSTREAM_UP: Final = metric("upstream_up")
MODEL_INFO: Final = metric("model_info")
REQUEST_SIZE_BYTES: Final = metric("request_size_bytes")
RESPONSE_SIZE_BYTES: Final = metric("response_size_bytes")
REJECTED_REQUESTS_TOTAL: Final = metric("rejected_requests_total")

# --- sidecar: data quality ---------------------------------------------------
FEATURE_VALUES_TOTAL: Final = metric("feature_values_total")
UNEXPECTED_FEATURES_TOTAL: Final = metric("unexpected_features_total")
PAYLOAD_ERRORS_TOTAL: Final = metric("payload_errors_total")
PAYLOAD_INSPECTION_SKIPPED_TOTAL: Final = metric("payload_inspection_skipped_total")
PREDICTION_VALUE: Final = metric("prediction_value")
PREDICTIONS_TOTAL: Final = metric("predictions_total")

# --- sidecar: LLM (OpenAI-compatible) ------------------------------------------
LLM_PROMPT_CHARACTERS: Final = metric("llm_prompt_characters")
LLM_TOKENS_TOTAL: Final = metric("llm_tokens_total")
LLM_TIME_TO_FIRST_TOKEN_SECONDS: Final = metric("llm_time_to_first_token_seconds")

# --- sidecar: capture ------------------------------------------------------
CAPTURE_ROWS_TOTAL: Final = metric("capture_rows_total")
CAPTURE_DROPPED_ROWS_TOTAL: Final = metric("capture_dropped_rows_total")
CAPTURE_FILES_TOTAL: Final = metric("capture_files_total")
CAPTURE_STORE_BYTES: Final = metric("capture_store_bytes")

# --- label values ------------------------------------------------------------
OUTCOME_OK: Final = "ok"
OUTCOME_CLIENT_ERROR: Final = "client_error"
OUTCOME_SERVER_ERROR: Final = "server_error"
OUTCOME_TIMEOUT: Final = "timeout"
OUTCOME_UNREACHABLE: Final = "unreachable"
OUTCOME_CLIENT_CANCELLED: Final = "client_cancelled"
OUTCOMES: Final = (
    OUTCOME_OK,
    OUTCOME_CLIENT_ERROR,
    OUTCOME_SERVER_ERROR,
    OUTCOME_TIMEOUT,
    OUTCOME_UNREACHABLE,
    OUTCOME_CLIENT_CANCELLED,
)
ERROR_OUTCOMES: Final = (OUTCOME_SERVER_ERROR, OUTCOME_TIMEOUT, OUTCOME_UNREACHABLE)
"""Outcomes that count against the availability SLI (the error budget)."""


def outcome_for_status(status: int) -> str:
    """Outcome of an answered request by HTTP status: 1xx-3xx ok, 4xx client_error,
    5xx server_error (timeouts, unreachable upstreams and cancellations are set
    by the proxy, which knows them)."""
    if status >= 500:
        return OUTCOME_SERVER_ERROR
    if status >= 400:
        return OUTCOME_CLIENT_ERROR
    return OUTCOME_OK


STATE_PRESENT: Final = "present"
STATE_MISSING: Final = "missing"
STATE_NULL: Final = "null"
STATE_WRONG_TYPE: Final = "wrong_type"
STATE_OUT_OF_RANGE: Final = "out_of_range"
STATE_UNSEEN_CATEGORY: Final = "unseen_category"
FEATURE_STATES: Final = (
    STATE_PRESENT,
    STATE_MISSING,
    STATE_NULL,
    STATE_WRONG_TYPE,
    STATE_OUT_OF_RANGE,
    STATE_UNSEEN_CATEGORY,
)
"""Feature coverage of a feature = present / sum over all states."""

PAYLOAD_INVALID_JSON: Final = "invalid_json"
PAYLOAD_INVALID_SHAPE: Final = "invalid_shape"
PAYLOAD_INVALID_CSV: Final = "invalid_csv"
PAYLOAD_REASONS: Final = (PAYLOAD_INVALID_JSON, PAYLOAD_INVALID_SHAPE, PAYLOAD_INVALID_CSV)

SKIP_TOO_LARGE: Final = "too_large"
SKIP_CONTENT_TYPE: Final = "content_type"
SKIP_CONTENT_ENCODING: Final = "content_encoding"

DROP_QUEUE_FULL: Final = "queue_full"
DROP_RETENTION: Final = "retention"
DROP_WRITE_ERROR: Final = "write_error"

REJECT_TOO_LARGE: Final = "too_large"

MODEL_OTHER: Final = "other"
"""``model`` label value for requests addressed to a model the spec does not name (C17)."""
CLASS_OTHER: Final = "other"
"""``class`` label value for a predicted class outside the spec's declared classes."""
ROUTE_UNMATCHED: Final = "unmatched"
"""``route`` label value for any path that matches no route template (C17)."""

TOKENS_PROMPT: Final = "prompt"
TOKENS_COMPLETION: Final = "completion"

# --- defaults ----------------------------------------------------------------
DEFAULT_LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25,
    0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
)  # fmt: skip
"""Seconds. Cover 1 ms to 30 s with room above (case C20: the top finite bucket
must sit well above the latency SLO, or ``histogram_quantile`` pins at it)."""

SIZE_BUCKETS_BYTES: Final = tuple(float(4**i * 256) for i in range(12))
"""256 B to 1 GiB in powers of four."""

DEFAULT_PREDICTION_BUCKETS: Final = tuple(round(i * 0.1, 1) for i in range(1, 11))
"""Prediction histogram buckets for scores and probabilities in [0, 1]."""

DEFAULT_SIDECAR_LISTEN: Final = "127.0.0.1:8000"
DEFAULT_METRICS_LISTEN: Final = "127.0.0.1:9400"

# --- drift job (issue 3) -------------------------------------------------------
LABEL_METHOD: Final = "method"
LABEL_DATASET: Final = "dataset"
LABEL_RESULT: Final = "result"
LABEL_METRIC: Final = "metric"

DRIFT_SCORE: Final = metric("drift_score")
DRIFT_DETECTED: Final = metric("drift_detected")
"""Gauge 0/1 per ``{model, feature}``: the feature drifted in the last run."""
DRIFT_THRESHOLD: Final = metric("drift_threshold")
DATASET_DRIFT_SHARE: Final = metric("dataset_drift_share")
DATASET_DRIFT_DETECTED: Final = metric("dataset_drift_detected")
"""Gauge 0/1 per ``{model}``: the share of drifted features reached ``drift.drift_share``."""
DRIFT_ROWS: Final = metric("drift_rows")
DRIFT_RUNS_TOTAL: Final = metric("drift_runs_total")
"""Counter per ``{model, result}``; ``result`` is ``success`` or ``failure``."""
DRIFT_LAST_SUCCESS_TIMESTAMP_SECONDS: Final = metric("drift_last_success_timestamp_seconds")
DRIFT_RUN_DURATION_SECONDS: Final = metric("drift_run_duration_seconds")
MODEL_QUALITY: Final = metric("model_quality")
"""Gauge per ``{model, metric}`` (accuracy, f1, roc_auc, mae, ...) from delayed labels."""
MODEL_QUALITY_ROWS: Final = metric("model_quality_rows")

DRIFT_MISSING_RATIO: Final = metric("drift_missing_ratio")
"""Gauge per ``{model, feature, dataset}``: share of null values in the window (C02)."""
DRIFT_NONFINITE_RATIO: Final = metric("drift_nonfinite_ratio")
"""Gauge per ``{model, feature, dataset}``: share of +/-inf values, left out of the tests (C07)."""
DRIFT_UNSEEN_CATEGORY_RATIO: Final = metric("drift_unseen_category_ratio")
"""Gauge per ``{model, feature}``: share of current values in categories the reference
lacks (C04)."""
DRIFT_FEATURE_STATUS: Final = metric("drift_feature_status")
"""Gauge 1 per ``{model, feature, status, reason}``: why a feature has no score (or ``ok``)."""
DRIFT_REFERENCE_INFO: Final = metric("drift_reference_info")
"""Gauge 1 per ``{model, sha256}``: the baseline the last run compared against."""
LABEL_STATUS: Final = "status"
LABEL_SHA256: Final = "sha256"

DRIFT_METHODS: Final = (
    "chisquare",
    "ed",
    "hellinger",
    "jensenshannon",
    "kl_div",
    "ks",
    "mannw",
    "psi",
    "t_test",
    "wasserstein",
    "z",
)
"""Drift methods by evidently name (``monitor.drift.methods.METHODS`` implements them)."""
DRIFT_NUMERICAL_ONLY_METHODS: Final = ("ed", "ks", "mannw", "t_test", "wasserstein")
DRIFT_CATEGORICAL_ONLY_METHODS: Final = ("chisquare", "z")

DATASET_REFERENCE: Final = "reference"
DATASET_CURRENT: Final = "current"
DRIFT_RESULT_SUCCESS: Final = "success"
DRIFT_RESULT_FAILURE: Final = "failure"

# --- GPU health (issue 7; dcgm-exporter field names in docs/metrics.md) ----------
LABEL_GPU: Final = "gpu"
"""GPU index as NVML numbers it (``"0"``)."""
LABEL_UUID: Final = "uuid"
LABEL_GPU_NAME: Final = "name"
"""Product name, e.g. ``NVIDIA H100 80GB HBM3``."""
LABEL_XID: Final = "xid"
LABEL_ERROR_TYPE: Final = "error_type"
LABEL_SCOPE: Final = "scope"

GPU_UP: Final = metric("gpu_up")
"""1 when the last NVML read of the GPU succeeded; 0 on a timeout or error (then no other
series of that GPU is exported), or, with a ``reason`` and no ``gpu``, without a driver."""
GPU_UTILIZATION_RATIO: Final = metric("gpu_utilization_ratio")
GPU_MEMORY_UTILIZATION_RATIO: Final = metric("gpu_memory_utilization_ratio")
GPU_MEMORY_USED_BYTES: Final = metric("gpu_memory_used_bytes")
GPU_MEMORY_TOTAL_BYTES: Final = metric("gpu_memory_total_bytes")
GPU_TEMPERATURE_CELSIUS: Final = metric("gpu_temperature_celsius")
GPU_POWER_WATTS: Final = metric("gpu_power_watts")
GPU_POWER_LIMIT_WATTS: Final = metric("gpu_power_limit_watts")
GPU_SM_CLOCK_HERTZ: Final = metric("gpu_sm_clock_hertz")
GPU_MEMORY_CLOCK_HERTZ: Final = metric("gpu_memory_clock_hertz")
GPU_THROTTLE_REASON: Final = metric("gpu_throttle_reason")
"""Gauge 0/1 per ``{gpu, reason}``: the clock-event (throttle) reason is active now."""
GPU_ECC_ERRORS_TOTAL: Final = metric("gpu_ecc_errors_total")
"""Counter per ``{gpu, error_type, scope}``: corrected | uncorrected, volatile | aggregate."""
GPU_RETIRED_PAGES: Final = metric("gpu_retired_pages")
"""Gauge per ``{gpu, error_type}``: pages retired for corrected (multiple single-bit) or
uncorrected (double-bit) ECC errors (pre-Ampere GPUs; Ampere and later remap rows)."""
GPU_REMAPPED_ROWS: Final = metric("gpu_remapped_rows")
"""Gauge per ``{gpu, error_type}``: memory rows remapped for corrected or uncorrected errors."""
GPU_XID_ERRORS_TOTAL: Final = metric("gpu_xid_errors_total")
"""Counter per ``{gpu, xid}``, one per NVML XID event (two identical XIDs count twice)."""
GPU_PCIE_REPLAY_TOTAL: Final = metric("gpu_pcie_replay_total")
GPU_NVLINK_ERRORS_TOTAL: Final = metric("gpu_nvlink_errors_total")
GPU_NVML_ERRORS_TOTAL: Final = metric("gpu_nvml_errors_total")
"""Counter per ``{gpu, error}``: NVML calls that failed or timed out (``gpu`` empty for
calls that concern no one GPU: init, device count, the XID event loop)."""
GPU_ROW_REMAP_PENDING: Final = metric("gpu_row_remap_pending")
"""Gauge 0/1: a row remapping waits for the next GPU reset (NVML ``isPending``)."""
GPU_ROW_REMAP_FAILURE: Final = metric("gpu_row_remap_failure")
"""Gauge 0/1: a row remapping failed; the GPU needs service (NVML ``failureOccurred``)."""
LABEL_ERROR: Final = "error"
"""NVML error name in snake case (``gpu_is_lost``, ``timeout``, ``unknown``, ...)."""

DEFAULT_GPU_EXPORTER_LISTEN: Final = "127.0.0.1:9835"
"""``monitor gpu-exporter``'s default; dcgm-exporter's 9400 is the sidecar's metrics port."""
DEFAULT_NVML_TIMEOUT_SECONDS: Final = 2.0
"""Bound on one GPU's NVML reads per scrape (case C19's "e.g. 2 s")."""

GPU_REASON_NO_DRIVER: Final = "no_driver"
GPU_REASON_NO_DEVICE: Final = "no_device"
GPU_ABSENT_REASONS: Final = (GPU_REASON_NO_DRIVER, GPU_REASON_NO_DEVICE)
"""``mlmon_gpu_up{reason}`` values of a machine without GPUs: not a GPU failure."""

THROTTLE_SW_THERMAL: Final = "sw_thermal"
THROTTLE_HW_THERMAL: Final = "hw_thermal"
THROTTLE_SW_POWER_CAP: Final = "sw_power_cap"
THROTTLE_HW_POWER_BRAKE: Final = "hw_power_brake"
THROTTLE_HW_SLOWDOWN: Final = "hw_slowdown"
THROTTLE_SYNC_BOOST: Final = "sync_boost"
THROTTLE_GPU_IDLE: Final = "gpu_idle"
THROTTLE_APPLICATIONS_CLOCKS: Final = "applications_clocks"
THROTTLE_DISPLAY_CLOCKS: Final = "display_clocks"
THROTTLE_THERMAL_POWER: Final = (
    THROTTLE_SW_THERMAL,
    THROTTLE_HW_THERMAL,
    THROTTLE_SW_POWER_CAP,
    THROTTLE_HW_POWER_BRAKE,
)
"""Throttle reasons that cost throughput because of heat or power (NVML
``clocksEventReason*``); idle, sync boost and application clocks are not alarming."""

ECC_CORRECTED: Final = "corrected"
ECC_UNCORRECTED: Final = "uncorrected"
ECC_VOLATILE: Final = "volatile"
ECC_AGGREGATE: Final = "aggregate"

NVLINK_REPLAY: Final = "replay"
NVLINK_RECOVERY: Final = "recovery"
NVLINK_CRC_FLIT: Final = "crc_flit"
NVLINK_CRC_DATA: Final = "crc_data"
"""``error_type`` values of ``mlmon_gpu_nvlink_errors_total`` (NVML
``NVML_NVLINK_ERROR_DL_*``), summed over the GPU's links."""

# --- golden-set canary and model versions (issue 7) ----------------------------
LABEL_REPLICA: Final = "replica"
LABEL_FINGERPRINT: Final = "fingerprint"

CANARY_CHECKS_TOTAL: Final = metric("canary_checks_total")
"""Counter per ``{model, replica, result}``; ``result`` is ``pass``, ``fail`` or ``error``."""
CANARY_MAX_ABS_ERROR: Final = metric("canary_max_abs_error")
CANARY_LAST_SUCCESS_TIMESTAMP_SECONDS: Final = metric("canary_last_success_timestamp_seconds")

DEFAULT_CANARY_LISTEN: Final = "127.0.0.1:9402"
"""``monitor canary run --metrics-listen`` default (drift serve has 9401)."""

CANARY_PASS: Final = "pass"
CANARY_FAIL: Final = "fail"
CANARY_ERROR: Final = "error"

# --- mitigator and sidecar control (issue 6) -----------------------------------
LABEL_POLICY: Final = "policy"
LABEL_ACTION: Final = "action"
LABEL_UPSTREAM: Final = "upstream"

MITIGATION_ACTIONS_TOTAL: Final = metric("mitigation_actions_total")
"""Counter per ``{policy, action, outcome}``; ``outcome`` is ``success``, ``failure`` or
``dry_run``."""
MITIGATION_ACTION_DURATION_SECONDS: Final = metric("mitigation_action_duration_seconds")
WEBHOOK_NOTIFICATIONS_TOTAL: Final = metric("webhook_notifications_total")
WEBHOOK_DUPLICATES_TOTAL: Final = metric("webhook_duplicates_total")
WEBHOOK_TRUNCATED_ALERTS_TOTAL: Final = metric("webhook_truncated_alerts_total")
"""Counter: alerts Alertmanager left out of notifications (``truncatedAlerts``)."""
MITIGATION_JOBS_PENDING: Final = metric("mitigation_jobs_pending")
MITIGATOR_STORE_UP: Final = metric("mitigator_store_up")
MITIGATION_SKIPPED: Final = "skipped"
"""``outcome`` of a job that a cooldown, a rate limit or a removed policy kept from running."""
ROUTE_WEIGHT: Final = metric("route_weight")
"""Gauge per ``{model, upstream}``: share of new requests the sidecar routes to the
``primary`` or ``fallback`` upstream (sums to 1; only ``primary`` without a fallback)."""
QUARANTINED: Final = metric("quarantined")
"""Gauge 0/1 per ``{model}``: the control API quarantined the replica (``/-/ready`` 503)."""
REQUESTS_SHED_TOTAL: Final = metric("requests_shed_total")
"""Counter per ``{model}``: requests answered 503 by the sidecar's concurrency limit."""
CONCURRENCY_LIMIT: Final = metric("concurrency_limit")
"""Gauge per ``{model}``: the control API's concurrency limit; 0 when there is none."""
UPSTREAM_PRIMARY: Final = "primary"
UPSTREAM_FALLBACK: Final = "fallback"

MITIGATION_SUCCESS: Final = "success"
MITIGATION_FAILURE: Final = "failure"
MITIGATION_DRY_RUN: Final = "dry_run"

# --- Prometheus target labels and metrics ----------------------------------------
LABEL_JOB: Final = "job"
LABEL_INSTANCE: Final = "instance"
LABEL_LE: Final = "le"
UP: Final = "up"
"""Prometheus' own per-target scrape health series."""

# --- alerts --------------------------------------------------------------------
LABEL_ALERTNAME: Final = "alertname"
LABEL_SEVERITY: Final = "severity"
LABEL_SLO: Final = "slo"
LABEL_MITIGATION: Final = "mitigation"
"""Alert label naming the spec's mitigation policy that handles the alert."""

SEVERITY_PAGE: Final = "page"
SEVERITY_TICKET: Final = "ticket"
SEVERITY_INFO: Final = "info"
SEVERITIES: Final = (SEVERITY_PAGE, SEVERITY_TICKET, SEVERITY_INFO)
"""``page``: wake someone now; ``ticket``: fix within working hours; ``info``: context
shown with other alerts, routed nowhere by itself."""

ALERT_SIDECAR_DOWN: Final = "SidecarDown"
ALERT_SIDECAR_ABSENT: Final = "SidecarAbsent"
ALERT_MODEL_TELEMETRY_MISSING: Final = "ModelTelemetryMissing"
ALERT_UPSTREAM_NOT_READY: Final = "UpstreamNotReady"
ALERT_ERROR_BUDGET_BURN: Final = "ErrorBudgetBurn"
ALERT_LATENCY_BUDGET_BURN: Final = "LatencyBudgetBurn"
ALERT_LATENCY_HISTOGRAM_SATURATED: Final = "LatencyHistogramSaturated"
ALERT_FEATURE_COVERAGE_LOW: Final = "FeatureCoverageLow"
ALERT_UNEXPECTED_FEATURES: Final = "UnexpectedFeatures"
ALERT_PAYLOAD_PARSE_ERRORS: Final = "PayloadParseErrors"
ALERT_CAPTURE_DROPPING_ROWS: Final = "CaptureDroppingRows"
ALERT_DATASET_DRIFT_DETECTED: Final = "DatasetDriftDetected"
ALERT_FEATURE_DRIFT: Final = "FeatureDrift"
ALERT_DRIFT_JOB_STALE: Final = "DriftJobStale"
ALERT_DRIFT_JOB_FAILING: Final = "DriftJobFailing"
ALERT_MODEL_QUALITY_LOW: Final = "ModelQualityLow"
ALERT_MODEL_VERSION_SKEW: Final = "ModelVersionSkew"
ALERT_CANARY_FAILING: Final = "CanaryFailing"
ALERT_GPU_DOWN: Final = "GPUDown"
ALERT_GPU_EXPORTER_DOWN: Final = "GPUExporterDown"
ALERT_GPU_XID_ERRORS: Final = "GPUXidErrors"
ALERT_GPU_UNCORRECTABLE_ECC: Final = "GPUUncorrectableECC"
ALERT_GPU_THROTTLING: Final = "GPUThrottling"
ALERT_GPU_MEMORY_NEAR_FULL: Final = "GPUMemoryNearFull"
ALERT_MITIGATION_FAILING: Final = "MitigationFailing"


def runbook_url(base: str, alertname: str) -> str:
    """``<base>/<AlertName>.md``: the runbook of an alert (``docs/runbooks`` in this repo)."""
    return f"{base.rstrip('/')}/{alertname}.md"


# --- recording rules (``level:metric:operations``; labels ``model`` and ``slo``) ------
SLO_RATIO_WINDOWS: Final = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""Fixed windows of the recorded SLI error ratios: every short and long window of the
multi-window burn-rate alerts (SRE workbook, "Alerting on SLOs")."""
SLO_BAD_EVENTS_RATE5M: Final = "model_slo:sli_bad_events:rate5m"
"""Bad events per second over 5 m (errors, or requests slower than the threshold)."""
SLO_EVENTS_RATE5M: Final = "model_slo:sli_events:rate5m"
"""Events per second over 5 m that the SLI judges (its denominator)."""
SLO_ERROR_RATIO: Final = {w: f"model_slo:sli_error:ratio_rate{w}" for w in SLO_RATIO_WINDOWS}
"""Bad over all events per fixed window, e.g. ``SLO_ERROR_RATIO["1h"]``."""
SLO_ERROR_RATIO_WINDOW: Final = "model_slo:sli_error:ratio_window"
"""Bad over all events over the SLO's compliance window (a ratio of sums, case C22)."""
SLO_OBJECTIVE: Final = "model_slo:objective:ratio"
SLO_ERROR_BUDGET: Final = "model_slo:error_budget:ratio"
"""``1 - objective``."""
SLO_ERROR_BUDGET_REMAINING: Final = "model_slo:error_budget_remaining:ratio"
"""Share of the window's error budget left: 1 untouched, 0 spent, below 0 overspent."""
SLO_CURRENT_BURN_RATE: Final = "model_slo:current_burn_rate:ratio"
"""Error ratio over 5 m divided by the error budget (1 = spending exactly the budget)."""
LATENCY_SATURATION_RATIO: Final = "model:mlmon_request_duration_seconds:saturation_ratio_rate5m"
"""Share of requests slower than the top finite latency bucket (case C20)."""


# --- dashboards (issue 5) ------------------------------------------------------------
DASHBOARD_TAG: Final = "mlmon"
"""Tag of every generated Grafana dashboard (with the service name), and the UID prefix."""
DASHBOARD_OVERVIEW: Final = "overview"
DASHBOARD_DATA_QUALITY: Final = "data-quality"
DASHBOARD_GPU: Final = "gpu"
DASHBOARD_MITIGATIONS: Final = "mitigations"
DASHBOARD_UID_MAX: Final = 40
"""Grafana's limit on a dashboard UID ("string (8-40)", dashboard schema)."""
ALERTS: Final = "ALERTS"
"""Prometheus' own series of pending and firing alerts (labels: the alert's, and
``alertstate``)."""
LABEL_ALERTSTATE: Final = "alertstate"
"""``pending`` or ``firing`` on :data:`ALERTS`."""


def dashboard_uid(service: str, name: str) -> str:
    """``mlmon-<service>-<name>``, stable across runs; characters Grafana does not allow
    in a UID become ``-``, and a UID over :data:`DASHBOARD_UID_MAX` characters is cut and
    suffixed with 8 hex digits of its SHA-256 (so two long service names still differ)."""
    import hashlib
    import re

    uid = re.sub(r"[^A-Za-z0-9_-]", "-", f"{DASHBOARD_TAG}-{service}-{name}")
    if len(uid) <= DASHBOARD_UID_MAX:
        return uid
    digest = hashlib.sha256(uid.encode()).hexdigest()[:8]
    return f"{uid[: DASHBOARD_UID_MAX - 9]}-{digest}"
