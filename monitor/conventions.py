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
