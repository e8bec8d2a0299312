"""The drift job: one run (``monitor drift run``) or a schedule (``monitor drift serve``).

A run of model M reads the baseline (``models[].baseline``, its statistics
cached by content hash), the current window (the capture store's rows of the
last ``drift.window_seconds``, or a file), computes drift with
:func:`monitor.drift.compute`, joins delayed labels for model quality when the
spec names a label source, and writes ``drift.json`` and ``report.html``.
Metrics go to a :class:`DriftCollector`: served on ``/metrics`` by
``drift serve``, or pushed to a Pushgateway by ``drift run`` (the Kubernetes
CronJob pattern). A failed run keeps the last good values and is counted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from monitor import conventions as c
from monitor.capture import COLUMN_PREDICTION, COLUMN_REQUEST_ID
from monitor.drift.core import DriftResult, compute
from monitor.drift.reference import ReferenceProfile, file_sha256, load_reference, read_table
from monitor.errors import CaptureError, DriftError
from monitor.spec import ModelSpec, MonitorSpec

log = logging.getLogger(__name__)

PUSH_JOB = "monitor_drift"
"""``job`` label of pushed groups (grouping key ``model``)."""


@dataclass
class RunOptions:
    """Overrides of one run (the CLI flags).

    Attributes:
        reference: baseline file instead of ``models[].baseline``.
        current: current-window file instead of the capture store.
        since: window length in seconds instead of ``drift.window_seconds``.
        engine: engine instead of ``drift.engine``.
        out: directory for drift.json and report.html (None: write nothing).
        html: write report.html (evidently's report; slow on big windows).
        now: end of the window, unix seconds (default: the clock).
    """

    reference: Path | None = None
    current: Path | None = None
    since: float | None = None
    engine: str | None = None
    out: Path | None = None
    html: bool = True
    now: float | None = None


def find_model(spec: MonitorSpec, name: str) -> ModelSpec:
    """The spec's model called ``name``.

    Raises:
        DriftError: no such model (the message lists the known ones).
    """
    for m in spec.models:
        if m.name == name:
            return m
    raise DriftError(
        f"no model {name!r} in the spec; models: {', '.join(m.name for m in spec.models)}"
    )


def declared_features(model: ModelSpec, baseline_columns: list[str]) -> dict[str, str]:
    """Features to compare: the spec's features (PII left out, as the capture does)
    and ``prediction`` when the baseline has that column."""
    feats: dict[str, str] = {f.name: f.type for f in model.features if not f.pii}
    if COLUMN_PREDICTION in baseline_columns and model.outputs:
        out = model.outputs[0]
        feats[COLUMN_PREDICTION] = "categorical" if out.type == "categorical" else "numerical"
    return feats


def _columns(path: Path) -> list[str]:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        return list(pd.read_csv(path, nrows=0).columns)
    except Exception as e:
        raise DriftError(f"{path}: cannot read the column names: {e}") from e


def methods_for(spec: MonitorSpec, model: ModelSpec) -> tuple[dict[str, str], dict[str, float]]:
    """Per-feature method and threshold overrides: feature keys, then ``drift.*``."""
    methods: dict[str, str] = {}
    thresholds: dict[str, float] = {}
    for f in model.features:
        if f.pii:  # never captured, so never compared
            continue
        m = f.drift_method or spec.drift.method
        if m:
            methods[f.name] = m
        t = f.drift_threshold if f.drift_threshold is not None else spec.drift.threshold
        if t is not None:
            thresholds[f.name] = t
    return methods, thresholds


def load_current(
    spec: MonitorSpec, model: ModelSpec, opts: RunOptions
) -> tuple[pd.DataFrame, tuple[float, float] | None]:
    """The current window and its (start, end) in unix seconds (None for a file).

    Raises:
        DriftError: no ``--current`` and no capture store, an unreadable store, or a
            ``--current`` file with none of the model's features as a column.
    """
    if opts.current is not None:
        frame = read_table(opts.current)
        names = [f.name for f in model.features]
        if not set(names) & set(map(str, frame.columns)):
            # every feature would be missing_in_current: a wrong file, not quiet traffic
            cols = ", ".join(map(str, frame.columns[:8])) + (", ..." if frame.shape[1] > 8 else "")
            raise DriftError(
                f"--current {opts.current}: none of model {model.name!r}'s features "
                f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) is a column; "
                f"its columns are: {cols or 'none'}"
            )
        return frame, None
    if model.capture is None:
        raise DriftError(
            f"model {model.name!r} has no capture store: add models[].capture "
            "(monitor drift run also takes --current FILE)"
        )
    end = opts.now if opts.now is not None else time.time()
    start = end - (opts.since if opts.since is not None else spec.drift.window_seconds)
    from monitor.capture import read_capture

    try:
        table = read_capture(model.capture.dir, since=start, until=end, model=model.name)
    except CaptureError as e:
        raise DriftError(f"model {model.name!r}: {e}") from e
    if table.num_rows == 0:
        # no traffic in the window: an empty frame with the capture's columns, so
        # every feature is insufficient_data (quiet traffic), not missing_in_current
        from monitor.capture import capture_schema

        return capture_schema(model).empty_table().to_pandas(), (start, end)
    return table.to_pandas(), (start, end)


def run_once(
    spec: MonitorSpec,
    model_name: str,
    opts: RunOptions | None = None,
    *,
    collector: DriftCollector | None = None,
) -> DriftResult:
    """One drift run of one model: compute, write outputs, record metrics.

    Raises:
        DriftError: the run could not produce a result (counted as a failure in
            ``collector`` first).
    """
    opts = opts or RunOptions()
    started = time.perf_counter()
    try:
        model = find_model(spec, model_name)
        ref_path = opts.reference or model.baseline
        if ref_path is None:
            raise DriftError(
                f"model {model.name!r} has no baseline; set models[].baseline "
                "or pass --reference FILE"
            )
        ref_path = Path(ref_path)
        if not ref_path.is_file():
            raise DriftError(f"baseline {ref_path}: no such file")
        features = declared_features(model, _columns(ref_path))
        engine = opts.engine or spec.drift.engine
        if (
            engine == "spark"
            and _is_parquet(ref_path)
            and opts.current is not None
            and _is_parquet(opts.current)
        ):
            result = _run_spark_parquet(spec, model, ref_path, opts.current, features)
            result.duration_seconds = time.perf_counter() - started
            if opts.out is not None:
                write_outputs(result, None, None, opts.out, html=opts.html)
            if collector is not None:
                collector.record(model.name, result, reference_sha256=file_sha256(ref_path))
            return result
        profile = load_reference(ref_path, features, cache_dir=spec.drift.cache_dir)
        current, window = load_current(spec, model, opts)
        methods, thresholds = methods_for(spec, model)
        result = compute(
            profile,
            current,
            features=features,
            method=methods or None,
            threshold=thresholds or None,
            drift_share=spec.drift.drift_share,
            min_rows=spec.drift.min_rows,
            engine=engine,
            model=model.name,
            window=window,
        )
        if len(current) < spec.drift.min_rows:
            result.warnings.insert(
                0,
                f"current window has {len(current)} rows, fewer than "
                f"drift.min_rows={spec.drift.min_rows}",
            )
        if model.labels is not None:
            try:
                result.quality = _quality(model, current)
            except DriftError as e:  # no labels yet must not stop drift monitoring
                result.quality = {"skipped": {"all": str(e)}, "rows": 0, "metrics": {}}
                result.warnings.append(f"model quality skipped: {e}")
        result.duration_seconds = time.perf_counter() - started
        if opts.out is not None:
            write_outputs(result, profile, current, opts.out, html=opts.html)
        result.duration_seconds = time.perf_counter() - started
    except DriftError:
        if collector is not None:
            collector.record_failure(model_name)
        raise
    if collector is not None:
        collector.record(model.name, result, reference_sha256=profile.sha256)
    for w in result.warnings:
        log.warning("model %s: %s", model.name, w)
    return result


def _is_parquet(path: Path) -> bool:
    """A Parquet file, or a directory of Parquet part files (Spark's layout)."""
    if path.is_dir():
        return any(path.glob("*.parquet"))
    return path.suffix.lower() in (".parquet", ".pq")


def _run_spark_parquet(
    spec: MonitorSpec, model: ModelSpec, ref_path: Path, cur_path: Path, features: dict[str, str]
) -> DriftResult:
    """``--engine spark`` on two Parquet datasets: Spark reads both, pandas never does."""
    from monitor.drift import spark_engine
    from monitor.drift.core import FeatureDrift

    methods, thresholds = methods_for(spec, model)
    feats: dict[str, FeatureDrift] = {}
    for name, kind in features.items():
        f = FeatureDrift(name, kind, "ok")
        if name in methods:
            f.method, f.method_source = methods[name], "override"
        if name in thresholds:
            f.threshold, f.threshold_source = thresholds[name], "override"
        feats[name] = f
    spark_engine.score_parquet(ref_path, cur_path, feats)
    for f in feats.values():
        if f.status == "ok" and f.current.used < spec.drift.min_rows:
            f.status, f.reason = (
                "insufficient_data",
                (f"fewer_than_min_rows ({f.current.used} < {spec.drift.min_rows})"),
            )
            f.score = f.drifted = None
    rows_ref = max((f.reference.rows for f in feats.values()), default=0)
    rows_cur = max((f.current.rows for f in feats.values()), default=0)
    result = DriftResult(
        features=feats,
        drift_share=spec.drift.drift_share,
        engine="spark",
        rows_reference=rows_ref,
        rows_current=rows_cur,
        min_rows=spec.drift.min_rows,
        model=model.name,
    )
    for f in feats.values():
        if f.status == "skipped":
            result.warnings.append(f"feature {f.name!r} skipped: {f.reason}")
    return result


def _quality(model: ModelSpec, current: pd.DataFrame) -> dict[str, Any]:
    from monitor.drift import quality

    assert model.labels is not None
    labels = quality.read_labels(model.labels.path)
    first = model.outputs[0] if model.outputs else None
    task = model.labels.task or (
        "classification" if first is not None and first.type == "categorical" else "regression"
    )
    if COLUMN_REQUEST_ID not in current.columns or COLUMN_PREDICTION not in current.columns:
        raise DriftError(
            f"model {model.name!r}: the current window has no request_id/prediction "
            "columns to join labels with"
        )
    res = quality.compute_quality(
        current[[COLUMN_REQUEST_ID, COLUMN_PREDICTION]],
        labels,
        task=task,
        positive_label=model.labels.positive_label,
    )
    out: dict[str, Any] = res.to_dict()
    return out


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; reports are for readers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(
    result: DriftResult,
    profile: ReferenceProfile | None,
    current: pd.DataFrame | None,
    out: Path,
    *,
    html: bool = True,
) -> None:
    """Write ``out/drift.json`` and (``html``) ``out/report.html`` atomically.

    report.html is our verdict table (every feature, skipped ones with their
    reason) followed by evidently's own report of the scored features; without
    evidently installed it is the table alone, with a note.
    """
    _atomic_write(
        out / "drift.json", json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n"
    )
    if not html:
        return
    summary = result.summary_html()
    body = ""
    if profile is None or current is None:  # the Spark engine on Parquet: no rows in memory
        note = (
            "<p>evidently's report is not rendered for the Spark engine: "
            "the windows are not loaded into memory.</p>"
        )
        doc = f"<html><body>{summary}{note}</body></html>"
        _atomic_write(out / "report.html", doc)
        return
    try:
        from monitor.drift import evidently_engine

        scored = {f.name: (None, None, f) for f in result.scored}
        body = evidently_engine.report_html(profile.frame(), current, scored)  # type: ignore[arg-type]
    except DriftError as e:
        body = f"<html><body><p>evidently's report is not available: {e}</p></body></html>"
    marker = "<body>"
    at = body.find(marker)
    doc = (
        body[: at + len(marker)] + summary + body[at + len(marker) :] if at >= 0 else summary + body
    )
    _atomic_write(out / "report.html", doc)


# --- metrics --------------------------------------------------------------------


@dataclass
class _ModelState:
    result: DriftResult | None = None
    reference_sha256: str = ""
    last_success: float | None = None
    runs: dict[str, int] = field(
        default_factory=lambda: {c.DRIFT_RESULT_SUCCESS: 0, c.DRIFT_RESULT_FAILURE: 0}
    )


class DriftCollector(Collector):
    """Exports the last good drift run of each model (names in ``conventions``).

    A failed run only bumps ``mlmon_drift_runs_total{result="failure"}``: the
    scores of the last good run stay, and ``..._last_success_timestamp_seconds``
    shows their age. Never raises from ``collect``.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {}
        if registry is not None:
            registry.register(self)

    def record(
        self,
        model: str,
        result: DriftResult,
        *,
        reference_sha256: str = "",
        now: float | None = None,
    ) -> None:
        """Store a successful run's result."""
        with self._lock:
            st = self._models.setdefault(model, _ModelState())
            st.result = result
            st.reference_sha256 = reference_sha256
            st.last_success = time.time() if now is None else now
            st.runs[c.DRIFT_RESULT_SUCCESS] += 1

    def record_failure(self, model: str) -> None:
        """Count a failed run; keep the last good values."""
        with self._lock:
            self._models.setdefault(model, _ModelState()).runs[c.DRIFT_RESULT_FAILURE] += 1

    def collect(self) -> Iterator[Any]:
        """Yield the metric families (Prometheus collector protocol)."""
        with self._lock:
            models = {
                k: (v.result, v.reference_sha256, v.last_success, dict(v.runs))
                for k, v in self._models.items()
            }
        lm, lf, ld = c.LABEL_MODEL, c.LABEL_FEATURE, c.LABEL_DATASET
        score = GaugeMetricFamily(
            c.DRIFT_SCORE,
            "Drift score of a feature: p-value for tests, distance otherwise.",
            labels=[lm, lf, c.LABEL_METHOD],
        )
        thr = GaugeMetricFamily(
            c.DRIFT_THRESHOLD,
            "Threshold of the feature's drift method.",
            labels=[lm, lf, c.LABEL_METHOD],
        )
        det = GaugeMetricFamily(
            c.DRIFT_DETECTED, "1 when the feature drifted in the last run.", labels=[lm, lf]
        )
        status = GaugeMetricFamily(
            c.DRIFT_FEATURE_STATUS,
            "1 for the feature's status in the last run "
            "(ok, insufficient_data, skipped, undefined).",
            labels=[lm, lf, c.LABEL_STATUS, c.LABEL_REASON],
        )
        missing = GaugeMetricFamily(
            c.DRIFT_MISSING_RATIO,
            "Share of null values of the feature in the window.",
            labels=[lm, lf, ld],
        )
        nonfinite = GaugeMetricFamily(
            c.DRIFT_NONFINITE_RATIO,
            "Share of +/-inf values of the feature in the window (left out of the tests).",
            labels=[lm, lf, ld],
        )
        unseen = GaugeMetricFamily(
            c.DRIFT_UNSEEN_CATEGORY_RATIO,
            "Share of current values in categories absent from the reference.",
            labels=[lm, lf],
        )
        share = GaugeMetricFamily(
            c.DATASET_DRIFT_SHARE, "Share of scored features that drifted.", labels=[lm]
        )
        dset = GaugeMetricFamily(
            c.DATASET_DRIFT_DETECTED,
            "1 when the drifted share reached drift.drift_share.",
            labels=[lm],
        )
        rows = GaugeMetricFamily(
            c.DRIFT_ROWS, "Rows compared, per dataset (reference or current).", labels=[lm, ld]
        )
        last = GaugeMetricFamily(
            c.DRIFT_LAST_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time of the last successful drift run.",
            labels=[lm],
        )
        dur = GaugeMetricFamily(
            c.DRIFT_RUN_DURATION_SECONDS, "Seconds the last successful drift run took.", labels=[lm]
        )
        ref = GaugeMetricFamily(
            c.DRIFT_REFERENCE_INFO,
            "The baseline of the last run, by content hash.",
            labels=[lm, c.LABEL_SHA256],
        )
        runs = CounterMetricFamily(
            c.DRIFT_RUNS_TOTAL,
            "Drift runs by result (success or failure).",
            labels=[lm, c.LABEL_RESULT],
        )
        quality = GaugeMetricFamily(
            c.MODEL_QUALITY,
            "Model quality from delayed labels (accuracy, f1, roc_auc, mae, ...).",
            labels=[lm, c.LABEL_METRIC],
        )
        qrows = GaugeMetricFamily(
            c.MODEL_QUALITY_ROWS, "Predictions joined with a label for model quality.", labels=[lm]
        )
        for model, (res, sha, last_success, counts) in sorted(models.items()):
            for result_label, n in counts.items():
                runs.add_metric([model, result_label], n)
            if res is None:
                continue
            for f in res.features.values():
                status.add_metric([model, f.name, f.status, f.reason.split(" ")[0]], 1)
                for ds, st in ((c.DATASET_REFERENCE, f.reference), (c.DATASET_CURRENT, f.current)):
                    if st.rows:
                        missing.add_metric([model, f.name, ds], st.ratio(st.null))
                        nonfinite.add_metric([model, f.name, ds], st.ratio(st.nonfinite))
                if f.type == "categorical" and f.current.rows:
                    unseen.add_metric([model, f.name], f.unseen_category_ratio)
                if f.status != "ok" or f.score is None or f.method is None:
                    continue
                score.add_metric([model, f.name, f.method], f.score)
                thr.add_metric([model, f.name, f.method], f.threshold or 0.0)
                det.add_metric([model, f.name], 1.0 if f.drifted else 0.0)
            if res.share_of_drifted is not None:
                share.add_metric([model], res.share_of_drifted)
                dset.add_metric([model], 1.0 if res.dataset_drift else 0.0)
            rows.add_metric([model, c.DATASET_REFERENCE], res.rows_reference)
            rows.add_metric([model, c.DATASET_CURRENT], res.rows_current)
            if last_success is not None:
                last.add_metric([model], last_success)
            dur.add_metric([model], res.duration_seconds)
            if sha:
                ref.add_metric([model, sha], 1)
            if res.quality:
                qrows.add_metric([model], res.quality.get("rows", 0))
                for name, value in sorted(res.quality.get("metrics", {}).items()):
                    quality.add_metric([model, name], value)
        yield from (
            score,
            thr,
            det,
            status,
            missing,
            nonfinite,
            unseen,
            share,
            dset,
            rows,
            last,
            dur,
            ref,
            runs,
            quality,
            qrows,
        )


def push(gateway: str, model: str, collector: DriftCollector, *, timeout: float = 10.0) -> None:
    """Replace this model's group on a Pushgateway (``job=monitor_drift, model=<model>``).

    Raises:
        DriftError: the Pushgateway could not be reached or refused the push.
    """
    from prometheus_client import push_to_gateway

    registry = CollectorRegistry()
    registry.register(collector)
    try:
        push_to_gateway(
            gateway,
            job=PUSH_JOB,
            grouping_key={c.LABEL_MODEL: model},
            registry=registry,
            timeout=timeout,
        )
    except Exception as e:
        raise DriftError(f"push to Pushgateway {gateway} failed: {e}") from e


# --- serve ----------------------------------------------------------------------


def serve(
    spec: MonitorSpec,
    *,
    listen: tuple[str, int],
    stop: threading.Event | None = None,
    registry: CollectorRegistry | None = None,
    html: bool = True,
    ready: threading.Event | None = None,
) -> None:
    """Run every model with a baseline every ``drift.schedule_seconds`` and serve ``/metrics``.

    Runs until ``stop`` is set (the CLI sets it on SIGTERM/SIGINT). A failed run
    is logged and counted; the next schedule tries again.

    Raises:
        DriftError: no model has a baseline.
        MonitorError: the listen address cannot be bound ("--metrics-listen
            0.0.0.0:9400: Address already in use").
    """
    from monitor.metrics_http import MetricsServer

    models = [m for m in spec.models if m.baseline is not None]
    if not models:
        raise DriftError("no model has a baseline (models[].baseline): nothing to compare")
    registry = registry or CollectorRegistry()
    collector = DriftCollector(registry)
    server = MetricsServer(listen, registry, what="--metrics-listen")
    server.start()
    stop = stop or threading.Event()
    if ready is not None:
        ready.set()
    log.info(
        "drift job serving /metrics on %s:%d for %s",
        listen[0],
        listen[1],
        ", ".join(m.name for m in models),
    )
    try:
        while not stop.is_set():
            t0 = time.monotonic()
            for m in models:
                if stop.is_set():
                    break
                try:
                    res = run_once(
                        spec,
                        m.name,
                        RunOptions(out=spec.drift.out_dir / m.name, html=html),
                        collector=collector,
                    )
                    log.info(
                        "model %s: dataset drift %s, %d/%d features drifted, %.2fs",
                        m.name,
                        res.dataset_drift,
                        len(res.drifted_features),
                        len(res.scored),
                        res.duration_seconds,
                    )
                except DriftError as e:
                    log.error("model %s: drift run failed: %s", m.name, e)
                except Exception:
                    collector.record_failure(m.name)
                    log.exception("model %s: drift run crashed", m.name)
            stop.wait(max(0.0, spec.drift.schedule_seconds - (time.monotonic() - t0)))
    finally:
        server.stop()
