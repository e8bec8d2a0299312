"""Capture store: sampled inference rows written as Parquet files for the drift job.

The sidecar calls :meth:`CaptureWriter.submit` on its event-loop thread for every
inference request. ``submit`` samples rows, copies references to the captured
columns and appends them to a bounded in-memory queue; it never blocks on I/O and
never raises (a full queue drops rows and counts them). One daemon writer thread
drains the queue, converts the rows to Arrow, and commits Parquet files::

    event loop ── submit() ──▶ queue (≤ capture.queue_rows rows) ──▶ writer thread
                                                                      │ convert, buffer
                                                                      ▼ (≤ max_file_bytes)
    <capture.dir>/<model>-<UTC yyyymmddThhmmss.ffffff>-<seq>.parquet ◀─ write .tmp, fsync,
                                                                        os.replace

Store layout and guarantees:

* File names sort lexically in time order (the stamp is the file's earliest row;
  ``seq`` breaks ties). Files of several models may share one directory; retention
  and :func:`read_capture` tell them apart by the ``<model>-`` prefix.
* Columns (:func:`capture_schema`): ``timestamp`` (``timestamp[us, tz=UTC]``, the
  clock at submit), ``request_id`` (string), one column per spec feature in spec
  order except ``pii: true`` features, which are never written, then ``prediction``
  (float64 for a numerical first output, string for a categorical one).
* A file is committed when its oldest buffered row is ``rotate_seconds`` old or its
  in-memory Arrow size reaches ``max_file_bytes``. Commits are atomic: a crash
  leaves at most a ``.<name>.tmp`` file, which readers ignore and ``start()`` deletes.
* After each commit the model's oldest files are deleted while the store exceeds
  ``max_bytes``; their rows are counted as dropped (``reason="retention"``).
* Memory is bounded by the queue (``queue_rows`` rows) plus one file's buffer.

Metrics (names in :mod:`monitor.conventions`): ``mlmon_capture_rows_total{model}``,
``mlmon_capture_dropped_rows_total{model,reason}`` (``queue_full``, ``retention``,
``write_error``), ``mlmon_capture_files_total{model}``,
``mlmon_capture_store_bytes{model}``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from monitor import conventions as c
from monitor.coverage import category_key
from monitor.errors import CaptureError
from monitor.payload import MISSING, Predictions, Rows
from monitor.spec import ModelSpec

__all__ = [
    "COLUMN_PREDICTION",
    "COLUMN_REQUEST_ID",
    "COLUMN_TIMESTAMP",
    "CaptureWriter",
    "capture_schema",
    "read_capture",
]

log = logging.getLogger(__name__)

COLUMN_TIMESTAMP: Final = "timestamp"
"""Capture column: when the sidecar saw the request (``timestamp[us, tz=UTC]``)."""
COLUMN_REQUEST_ID: Final = "request_id"
"""Capture column: the sidecar's request id (string)."""
COLUMN_PREDICTION: Final = "prediction"
"""Capture column: the row's primary output (float64 or string), null when absent."""

_TIMESTAMP_TYPE: Final = pa.timestamp("us", tz="UTC")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_WAKE_SECONDS: Final = 1.0
"""The writer wakes at least every ``min(rotate_seconds / 4, 1 s)`` to rotate idle files."""
_COMPRESSION: Final = "zstd"
_ERROR_LOG_SECONDS: Final = 60.0
"""At most one log line per this many seconds for errors raised inside ``submit``."""
_FILE_RE: Final = re.compile(r"(?P<model>.+)-(?P<stamp>\d{8}T\d{6}\.\d{6})-(?P<seq>\d+)\.parquet")

# One queued request: (timestamp s, request_id, rows, columns, predictions). Every
# non-None list holds exactly ``rows`` values; None stands for ``rows`` x MISSING.
# A plain tuple because submit() builds one per request on the event loop.
_Item = tuple[float, str, int, list[list[Any] | None], list[Any] | None]


# --- metrics -------------------------------------------------------------------


class _Metrics:
    """The capture metric families of one registry, shared by every model's writer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rows = Counter(
            c.CAPTURE_ROWS_TOTAL,
            "Captured rows written to a committed Parquet file.",
            [c.LABEL_MODEL],
            registry=registry,
        )
        self.dropped = Counter(
            c.CAPTURE_DROPPED_ROWS_TOTAL,
            "Sampled rows that never reached, or were deleted from, the capture store.",
            [c.LABEL_MODEL, c.LABEL_REASON],
            registry=registry,
        )
        self.files = Counter(
            c.CAPTURE_FILES_TOTAL,
            "Parquet files committed to the capture store.",
            [c.LABEL_MODEL],
            registry=registry,
        )
        self.store_bytes = Gauge(
            c.CAPTURE_STORE_BYTES,
            "Bytes on disk of the model's committed capture files.",
            [c.LABEL_MODEL],
            registry=registry,
        )


# Keyed by registry so that writers of several models can share one registry
# (registering a family twice raises); weak so a test's registry is not kept alive.
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()
_METRICS_LOCK = threading.Lock()


def _metrics_for(registry: CollectorRegistry) -> _Metrics:
    with _METRICS_LOCK:
        metrics = _METRICS.get(registry)
        if metrics is None:
            metrics = _METRICS[registry] = _Metrics(registry)
        return metrics


# --- value conversion ----------------------------------------------------------


def _to_float(v: Any) -> float | None:
    """A numerical cell: ints and floats as float64 (NaN and ±inf kept); else null."""
    t = type(v)
    if t is float:
        return v
    if t is bool or not isinstance(v, int | float):
        return None  # MISSING, None, str, list, dict; bool is an int but not a number here
    try:
        return float(v)
    except OverflowError:  # an int beyond float64's range
        return None


def _to_str(v: Any) -> str | None:
    """A categorical cell: scalars in the canonical form of :func:`category_key` (as
    coverage and class counts see them); MISSING, None, NaN, lists and dicts as null."""
    if type(v) is str:
        return v
    if v is None or v is MISSING or isinstance(v, list | dict | tuple) or v != v:
        return None
    return category_key(v)


def _floats(values: Sequence[Any]) -> list[float | None]:
    return [v if type(v) is float else _to_float(v) for v in values]


def _strings(values: Sequence[Any]) -> list[str | None]:
    return [v if type(v) is str else _to_str(v) for v in values]


def _gather(parts: list[list[Any] | None], counts: list[int], single: bool) -> list[Any]:
    """Concatenate one feature's per-request parts (None = that many nulls)."""
    if single:  # every request has one row: the common case, and the costly one per value
        return [None if part is None else part[0] for part in parts]
    return list(
        chain.from_iterable(
            [None] * k if part is None else part for part, k in zip(parts, counts, strict=True)
        )
    )


_FLOAT_ONLY = frozenset({float})
_STR_ONLY = frozenset({str})


def _column(values: Sequence[Any], numeric: bool) -> pa.Array:
    # Fast path: a column of only floats (or only strings) needs no per-value
    # conversion; the type check runs in C (map + set).
    kinds = set(map(type, values))
    if numeric:
        if kinds <= _FLOAT_ONLY:
            # array('d') packs the floats in one C loop; Arrow wraps that buffer as
            # is (no nulls, no copy), several times faster than converting a list.
            packed = array("d", values)
            return pa.Array.from_buffers(pa.float64(), len(packed), [None, pa.py_buffer(packed)])
        return pa.array(_floats(values), pa.float64())
    return pa.array(values if kinds <= _STR_ONLY else _strings(values), pa.string())


class _Records(list):
    """An item's rows in row-major form (``Rows.records``): one list per row, one
    value per spec feature in spec order."""

    __slots__ = ()


def _prefix(col: list[Any], k: int) -> list[Any]:
    """The first ``k`` values of ``col``, padded with MISSING when it is shorter."""
    return col[:k] if len(col) >= k else [*col, *([MISSING] * (k - len(col)))]


def _pick(col: list[Any], idx: list[int], n: int) -> list[Any]:
    """``col[i]`` for each sampled row ``i`` (< ``n``); MISSING past a short column."""
    if len(col) >= n:
        return [col[i] for i in idx]
    last = len(col)
    return [col[i] if i < last else MISSING for i in idx]


# --- schema --------------------------------------------------------------------


def capture_schema(model: ModelSpec) -> pa.Schema:
    """Return the Arrow schema of ``model``'s capture files.

    ``timestamp`` (``timestamp[us, tz=UTC]``), ``request_id`` (string), each feature
    without ``pii: true`` in spec order (numerical -> float64, categorical -> string),
    then ``prediction`` (float64 unless the first output is categorical). Every
    field is nullable. The schema depends on the spec alone, so all files of a
    model share it.

    Raises:
        CaptureError: a captured feature is named like a fixed column
            (``timestamp``, ``request_id``, ``prediction``).
    """
    fixed = (COLUMN_TIMESTAMP, COLUMN_REQUEST_ID, COLUMN_PREDICTION)
    fields = [pa.field(COLUMN_TIMESTAMP, _TIMESTAMP_TYPE), pa.field(COLUMN_REQUEST_ID, pa.string())]
    for f in model.features:
        if f.pii:
            continue
        if f.name in fixed:
            raise CaptureError(
                f"model {model.name!r}: feature {f.name!r} clashes with the capture column of "
                f"that name; rename the feature or mark it 'pii: true' to leave it out"
            )
        fields.append(pa.field(f.name, pa.float64() if f.type == "numerical" else pa.string()))
    first = model.outputs[0] if model.outputs else None
    categorical = first is not None and first.type == "categorical"
    fields.append(pa.field(COLUMN_PREDICTION, pa.string() if categorical else pa.float64()))
    return pa.schema(fields)


# --- writer --------------------------------------------------------------------


class CaptureWriter:
    """Samples one model's inference rows and writes them to its Parquet capture store.

    Threading: :meth:`submit` is meant for the event-loop thread; :meth:`start`
    runs one daemon writer thread; :meth:`flush` and :meth:`close` may be called
    from any thread and block. The caller must not mutate the column lists of a
    fully sampled request after ``submit`` (they are queued by reference).

    Args:
        model: the model spec; ``model.capture`` configures the store.
        registry: where the capture metrics are registered (shared across models).
        clock: unix time in seconds; stamps rows at submit and ages the open file.
        rng: source of the per-row sampling draws (one ``random()`` per row when
            ``0 < sample_rate < 1``; a row is kept when the draw is < sample_rate).

    Raises:
        CaptureError: ``model.capture`` is None, or a feature name clashes with a
            fixed column (see :func:`capture_schema`).
    """

    def __init__(
        self,
        model: ModelSpec,
        *,
        registry: CollectorRegistry = REGISTRY,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if model.capture is None:
            raise CaptureError(
                f"model {model.name!r} has no 'capture' section; add one to monitor.yaml "
                f"to capture its inputs"
            )
        spec = model.capture
        self._model = model.name
        self._dir = Path(spec.dir)
        self._schema = capture_schema(model)
        captured = [f for f in model.features if not f.pii]
        self._names = tuple(f.name for f in captured)
        # Positions of the captured features in a record (spec order, pii included).
        self._record_idx = tuple(i for i, f in enumerate(model.features) if not f.pii)
        self._numeric = tuple(f.type == "numerical" for f in captured)
        first = model.outputs[0] if model.outputs else None
        self._output = None if first is None or first.name == "*" else first.name
        self._pred_numeric = first is None or first.type == "numerical"
        self._rate = spec.sample_rate
        self._capacity = spec.queue_rows
        self._wake_rows = max(1, spec.queue_rows // 2)
        self._rotate = spec.rotate_seconds
        self._wake_every = min(spec.rotate_seconds / 4, _MAX_WAKE_SECONDS)
        self._max_file_bytes = spec.max_file_bytes
        self._max_bytes = spec.max_bytes
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()

        m = _metrics_for(registry)
        self._m_rows = m.rows.labels(model.name)
        self._m_files = m.files.labels(model.name)
        self._m_store_bytes = m.store_bytes.labels(model.name)
        self._m_queue_full = m.dropped.labels(model.name, c.DROP_QUEUE_FULL)
        self._m_retention = m.dropped.labels(model.name, c.DROP_RETENTION)
        self._m_write_error = m.dropped.labels(model.name, c.DROP_WRITE_ERROR)

        # Queue, shared with the event loop; guarded by _lock (held for O(1) work only).
        self._lock = threading.Lock()
        self._pending: list[_Item] = []
        self._queued = 0  # rows reserved in the queue, including ones being appended
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_submit_error = -math.inf

        # File buffer and counters; guarded by _write_lock (writer thread or flush()).
        self._write_lock = threading.Lock()
        self._buf: list[pa.RecordBatch] = []
        self._buf_rows = 0
        self._buf_bytes = 0
        self._buf_start = 0.0  # submit time (s) of the buffer's first row
        self._seq = 0
        self._rows_written = 0
        self._files_written = 0

    @property
    def rows_written(self) -> int:
        """Rows written to committed files by this writer (including later-retired ones)."""
        return self._rows_written

    @property
    def files_written(self) -> int:
        """Files committed by this writer."""
        return self._files_written

    # --- event-loop side ---------------------------------------------------------

    def submit(self, rows: Rows, predictions: Predictions | None, request_id: str) -> None:
        """Sample the rows of one request and queue them for the writer.

        O(rows x captured features) list work, two uncontended lock acquisitions,
        no I/O; never raises. Rows that do not fit the queue (or arrive after
        :meth:`close`) are dropped and counted with ``reason="queue_full"``.

        Args:
            rows: the request's rows; columns absent from ``rows.columns`` are null.
            predictions: the response's outputs, or None (``prediction`` is null).
            request_id: the ``request_id`` column (a non-string is stored as ``str()``).
        """
        try:
            self._submit(rows, predictions, request_id)
        except Exception:  # never fail a request because of the capture
            n = getattr(rows, "n", 0)
            self._m_write_error.inc(n if isinstance(n, int) and n > 0 else 0)
            self._log_submit_error()

    def _submit(self, rows: Rows, predictions: Predictions | None, request_id: str) -> None:
        n = rows.n
        rate = self._rate
        if n <= 0 or rate <= 0.0:
            return
        idx: list[int] | None = None
        k = n
        if rate < 1.0:
            draw = self._rng.random
            idx = [i for i in range(n) if draw() < rate]
            k = len(idx)
            if not k:
                return
            if k == n:
                idx = None  # every row kept (always so for one-row requests): no copies
        ts = self._clock()
        with self._lock:
            free = 0 if self._closed else self._capacity - self._queued
            take = k if k <= free else max(free, 0)
            self._queued += take
        if take < k:
            self._m_queue_full.inc(k - take)
            if not take:
                return
        if idx is not None and take < k:
            idx = idx[:take]
        try:
            item = self._item(rows, predictions, request_id, ts, take, idx)
        except Exception:
            with self._lock:
                self._queued -= take  # give the reservation back: capacity must not leak
            self._m_write_error.inc(take)
            self._log_submit_error()
            return
        with self._lock:
            self._pending.append(item)
            wake = self._queued >= self._wake_rows
        if wake and not self._wake.is_set():
            self._wake.set()  # drain before the queue fills, not at the next tick

    def _item(
        self,
        rows: Rows,
        predictions: Predictions | None,
        request_id: str,
        ts: float,
        take: int,
        idx: list[int] | None,
    ) -> _Item:
        n = rows.n
        records = rows.records
        if records is not None:  # row-major (V2 tensors): keep a reference, transpose later
            if idx is not None:
                records = [records[i] for i in idx]
            elif take < n:
                records = records[:take]
            return (
                ts,
                str(request_id),
                take,
                _Records(records),
                self._prediction_rows(predictions, take, idx, n),
            )
        columns = rows.columns
        cols: list[list[Any] | None] = []
        for name in self._names:
            col = columns.get(name)
            if col is None:
                cols.append(None)
            elif idx is not None:
                cols.append(_pick(col, idx, n))
            elif take == n == len(col):
                cols.append(col)  # by reference: no copy on the common path
            else:
                cols.append(_prefix(col, take))
        pred = self._prediction_rows(predictions, take, idx, n)
        if type(request_id) is not str:
            request_id = str(request_id)
        return (ts, request_id, take, cols, pred)

    def _prediction_rows(
        self, predictions: Predictions | None, take: int, idx: list[int] | None, n: int
    ) -> list[Any] | None:
        pred = self._prediction_column(predictions)
        if pred is not None:
            if idx is not None:
                pred = _pick(pred, idx, n)
            elif len(pred) != take:
                pred = _prefix(pred, take)
        return pred

    def _log_submit_error(self) -> None:
        now = time.monotonic()
        if now - self._last_submit_error >= _ERROR_LOG_SECONDS:
            self._last_submit_error = now
            log.exception("capture: model %s: could not queue a request's rows", self._model)

    def _prediction_column(self, predictions: Predictions | None) -> list[Any] | None:
        if predictions is None or not predictions.outputs:
            return None
        outputs = predictions.outputs
        values: Any = (
            next(iter(outputs.values())) if self._output is None else outputs.get(self._output)
        )
        return values if isinstance(values, list) else None

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Prepare the directory and start the writer thread (once; later calls do nothing).

        Creates ``capture.dir``, deletes stale ``.*.tmp`` files left by a crash and
        sets ``mlmon_capture_store_bytes``. A directory that cannot be prepared is
        logged, not raised: the sidecar keeps serving and each failed commit counts
        its rows with ``reason="write_error"``.

        Raises:
            CaptureError: the writer was closed.
        """
        with self._lock:
            if self._closed:
                raise CaptureError(
                    f"capture writer of model {self._model!r} is closed; create a new one"
                )
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name=f"mlmon-capture-{self._model}", daemon=True
            )
        # pyarrow imports pandas (when installed) on its first conversion: ~0.3 s under
        # the GIL. Pay it here at start-up rather than in the writer during traffic.
        pa.array([0.0], pa.float64())
        with self._write_lock:
            self._prepare_dir()
        self._thread.start()

    def flush(self, timeout: float = 10.0) -> None:
        """Commit every queued and buffered row to a file now; block until done.

        Runs on the calling thread under the writer's lock. Write errors are
        counted and logged, not raised.

        Args:
            timeout: seconds to wait for the writer thread to finish its current step.

        Raises:
            CaptureError: the writer stayed busy for ``timeout`` seconds (slow disk?).
        """
        if not self._write_lock.acquire(timeout=max(timeout, 0.0)):
            raise CaptureError(
                f"capture flush of model {self._model!r} timed out after {timeout} s: the "
                f"writer is still busy (check the disk of {self._dir}); rows stay queued"
            )
        try:
            self._ingest(self._drain())
            self._commit()
        finally:
            self._write_lock.release()

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting rows, stop the writer thread and flush; idempotent, never raises.

        Args:
            timeout: overall seconds to wait for the thread and the final flush;
                on expiry a warning is logged and queued rows are lost.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(max(timeout, 0.0))
        try:
            self.flush(max(deadline - time.monotonic(), 0.0))
        except CaptureError as exc:
            log.warning("capture: model %s: %s", self._model, exc)

    # --- writer side -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._wake_every)
            if self._stop.is_set():
                break  # close() flushes what is left
            try:
                with self._write_lock:
                    self._ingest(self._drain())
                    if self._buf_rows and abs(self._clock() - self._buf_start) >= self._rotate:
                        self._commit()
            except Exception:  # the thread must outlive any bug in one cycle
                log.exception("capture: model %s: writer cycle failed; continuing", self._model)

    def _drain(self) -> list[_Item]:
        self._wake.clear()
        with self._lock:
            items, self._pending = self._pending, []
        if items:
            drained = sum(item[2] for item in items)
            with self._lock:
                self._queued -= drained
        return items

    def _ingest(self, items: list[_Item]) -> None:
        """Buffer ``items``, committing whenever a file's time span or size is reached."""
        segment: list[_Item] = []
        start = self._buf_start if self._buf_rows else None
        for item in items:
            ts = item[0]
            if start is None:
                start = ts
            elif abs(ts - start) >= self._rotate:  # abs: a clock stepped back also rotates
                if segment:
                    self._append(segment, start)
                    segment = []
                self._commit()
                start = ts
            segment.append(item)
        if segment and start is not None:
            self._append(segment, start)

    def _append(self, segment: list[_Item], start: float) -> None:
        try:
            batch, ts_us = self._to_batch(segment)
        except Exception:
            lost = sum(item[2] for item in segment)
            self._m_write_error.inc(lost)
            log.exception("capture: model %s: could not convert %d rows", self._model, lost)
            return
        if not self._buf_rows:
            self._buf_start = start
        offset = 0
        while batch.num_rows:
            room = self._max_file_bytes - self._buf_bytes
            if batch.nbytes < room:
                self._add(batch)
                return
            # Fill the file up to max_file_bytes, commit it, carry the rest over.
            per_row = batch.nbytes / batch.num_rows
            k = min(batch.num_rows, max(1, math.ceil(room / per_row)))
            self._add(batch.slice(0, k))
            self._commit()
            batch = batch.slice(k)
            offset += k
            if batch.num_rows:
                self._buf_start = ts_us[offset] / 1e6

    def _add(self, batch: pa.RecordBatch) -> None:
        self._buf.append(batch)
        self._buf_rows += batch.num_rows
        self._buf_bytes += batch.nbytes

    def _to_batch(self, segment: list[_Item]) -> tuple[pa.RecordBatch, list[int]]:
        counts = [item[2] for item in segment]
        single = counts.count(1) == len(counts)
        if single:
            ts_us = [round(item[0] * 1e6) for item in segment]
            rids = [item[1] for item in segment]
        else:
            ts_us, rids = [], []
            for ts, rid, k, _, _ in segment:
                ts_us += [round(ts * 1e6)] * k
                rids += [rid] * k
        arrays = [pa.array(ts_us, _TIMESTAMP_TYPE), pa.array(rids, pa.string())]
        features = [item[3] for item in segment]
        if all(type(cols) is _Records for cols in features):
            # Row-major items: one C-level transpose of every record in the segment.
            records = [r for recs in features for r in recs]
            if records:
                transposed = list(zip(*records, strict=True))
                for j, numeric in zip(self._record_idx, self._numeric, strict=True):
                    arrays.append(_column(transposed[j], numeric))
            else:
                arrays += [_column([], numeric) for numeric in self._numeric]
        else:
            # Feature-major: one pass per feature over the requests.
            features = [self._as_columns(cols) for cols in features]
            for j, numeric in enumerate(self._numeric):
                parts = [cols[j] for cols in features]
                arrays.append(_column(_gather(parts, counts, single), numeric))
        preds = _gather([item[4] for item in segment], counts, single)
        arrays.append(_column(preds, self._pred_numeric))
        return pa.RecordBatch.from_arrays(arrays, schema=self._schema), ts_us

    def _as_columns(self, cols: Any) -> list[list[Any] | None]:
        """An item's features in column form (records are transposed)."""
        if type(cols) is not _Records:
            return cols
        if not cols:
            return [[] for _ in self._record_idx]
        transposed = list(zip(*cols, strict=True))
        return [list(transposed[j]) for j in self._record_idx]

    def _commit(self) -> None:
        """Write the buffer to a new file atomically, then apply retention."""
        batches, rows = self._buf, self._buf_rows
        self._buf, self._buf_rows, self._buf_bytes = [], 0, 0
        if not rows:
            return
        tmp: Path | None = None
        try:
            table = pa.Table.from_batches(batches, schema=self._schema)
            first_us = pc.min(table.column(COLUMN_TIMESTAMP)).value
            self._dir.mkdir(parents=True, exist_ok=True)
            final = self._next_path(first_us)
            tmp = final.with_name(f".{final.name}.tmp")
            pq.write_table(table, str(tmp), compression=_COMPRESSION)
            _fsync(tmp)
            os.replace(tmp, final)
        except Exception as exc:  # disk full, permissions, a path blocked by a file, ...
            if tmp is not None:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
            self._m_write_error.inc(rows)
            log.error(
                "capture: model %s: could not write %d rows under %s (%s); they are dropped - "
                "check free space and permissions of capture.dir",
                self._model,
                rows,
                self._dir,
                exc,
            )
            return
        with contextlib.suppress(OSError):
            _fsync(self._dir)  # make the rename itself durable
        self._rows_written += rows
        self._files_written += 1
        self._m_rows.inc(rows)
        self._m_files.inc()
        # Hand the file's buffers back to the OS: Arrow's allocator keeps freed
        # memory for reuse, which shows as sidecar RSS between files.
        pa.default_memory_pool().release_unused()
        self._retire()

    def _next_path(self, first_us: int) -> Path:
        stamp = (_EPOCH + timedelta(microseconds=first_us)).strftime("%Y%m%dT%H%M%S.%f")
        while True:
            self._seq += 1
            path = self._dir / f"{self._model}-{stamp}-{self._seq:06d}.parquet"
            if not path.exists():  # e.g. a previous run's file with the same stamp
                return path

    def _retire(self) -> None:
        """Delete the oldest files while the model's store exceeds ``max_bytes``."""
        try:
            files = _committed_files(self._dir, self._model)
        except OSError as exc:
            log.warning("capture: model %s: cannot list %s: %s", self._model, self._dir, exc)
            return
        total = sum(size for _, size in files)
        for path, size in files:
            if total <= self._max_bytes:
                break
            rows = _parquet_rows(path)
            try:
                path.unlink()
            except FileNotFoundError:
                pass  # already gone: its rows were not ours to count
            except OSError as exc:
                log.warning("capture: model %s: cannot delete %s: %s", self._model, path, exc)
                continue
            else:
                self._m_retention.inc(rows)
            total -= size
        self._m_store_bytes.set(total)

    def _prepare_dir(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            with os.scandir(self._dir) as entries:
                stale = [e.path for e in entries if _is_temp(e.name) and e.is_file()]
            for path in stale:
                os.unlink(path)
                log.info("capture: removed stale temp file %s", path)
            self._m_store_bytes.set(sum(s for _, s in _committed_files(self._dir, self._model)))
        except OSError as exc:
            log.error(
                "capture: model %s: cannot prepare %s (%s); rows will be dropped until it "
                "is writable",
                self._model,
                self._dir,
                exc,
            )


# --- store helpers -------------------------------------------------------------


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _committed_files(directory: Path, model: str) -> list[tuple[Path, int]]:
    """``(path, bytes)`` of ``model``'s committed files, oldest first."""
    out: list[tuple[Path, int]] = []
    with os.scandir(directory) as entries:
        for e in entries:
            m = _FILE_RE.fullmatch(e.name)
            if m is not None and m["model"] == model and e.is_file():
                out.append((Path(e.path), e.stat().st_size))
    out.sort(key=lambda ps: ps[0].name)
    return out


def _parquet_rows(path: Path) -> int:
    try:
        return int(pq.read_metadata(str(path)).num_rows)
    except (OSError, pa.ArrowException) as exc:
        log.warning("capture: cannot read the row count of %s: %s", path, exc)
        return 0


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _us(seconds: float) -> pa.Scalar:
    return pa.scalar(round(seconds * 1e6), _TIMESTAMP_TYPE)


def read_capture(
    directory: str | Path,
    *,
    since: float | None = None,
    until: float | None = None,
    model: str | None = None,
) -> pa.Table:
    """Read the committed capture files under ``directory`` into one table.

    Temp files (``.*.tmp``) and files not named like capture files are ignored.
    Files are read in time order (their name stamp), rows within a file in
    submit order. Schemas are unified (a column missing from older files is
    null-filled).

    Args:
        directory: the store, ``capture.dir``.
        since: unix seconds; keep rows with ``timestamp >= since``.
        until: unix seconds; keep rows with ``timestamp < until``.
        model: keep only this model's files (several models may share a directory).

    Returns:
        The rows, or an empty table with only the ``timestamp`` column when none match.

    Raises:
        CaptureError: the directory is missing or unreadable, a file is not valid
            Parquet, or files disagree on a column's type.
    """
    d = Path(directory)
    try:
        with os.scandir(d) as entries:
            found = [
                (m["stamp"], int(m["seq"]), e.name)
                for e in entries
                if not e.name.startswith(".")  # temp files, whatever their name
                and (m := _FILE_RE.fullmatch(e.name)) is not None
                and (model is None or m["model"] == model)
            ]
    except FileNotFoundError:
        raise CaptureError(
            f"capture directory {d} does not exist; check capture.dir in monitor.yaml"
        ) from None
    except OSError as exc:
        raise CaptureError(f"cannot list capture directory {d}: {exc.strerror or exc}") from None

    expr = None
    if since is not None:
        expr = pc.field(COLUMN_TIMESTAMP) >= _us(since)
    if until is not None:
        below = pc.field(COLUMN_TIMESTAMP) < _us(until)
        expr = below if expr is None else expr & below

    tables = []
    for _, _, name in sorted(found):
        path = d / name
        try:
            table = pq.read_table(str(path), filters=expr)
        except FileNotFoundError:
            continue  # retired by the writer after the listing
        except (OSError, pa.ArrowException) as exc:
            raise CaptureError(
                f"{path}: not a readable capture file ({exc}); move it out of the store"
            ) from None
        if table.num_rows:
            tables.append(table)
    if not tables:
        return pa.table({COLUMN_TIMESTAMP: pa.array([], _TIMESTAMP_TYPE)})
    try:
        return pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as exc:
        raise CaptureError(
            f"capture files under {d} have incompatible schemas ({exc}); a feature changed "
            f"type - read the ranges before and after the change separately (since/until)"
        ) from None
