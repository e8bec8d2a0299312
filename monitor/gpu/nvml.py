"""GPU health from NVML (``nvidia-ml-py``) as a Prometheus collector.

:class:`GpuCollector` reads every GPU of the node at scrape time and exports the
``mlmon_gpu_*`` families of :mod:`monitor.conventions` (their dcgm-exporter field
names are in docs/metrics.md). Sources: the NVML API reference
(https://docs.nvidia.com/deploy/nvml-api/) for units and return codes, and the
``pynvml`` module of nvidia-ml-py for the Python names.

Failure handling (case C19, "a hung NVML leaves stale healthy metrics"):

* Every NVML call runs on a worker thread, one per GPU (plus one for calls that
  concern no one GPU), and the scrape waits for all of them together at most
  ``timeout`` seconds. A GPU whose reads error or do not finish in time is exported as
  ``mlmon_gpu_up{gpu=...} 0`` with none of its readings (no frozen values), and
  ``mlmon_gpu_nvml_errors_total{gpu, error}`` counts it. A worker still stuck in a
  hung call is not given more work: later scrapes answer at once with ``up 0`` until
  the call returns. NVML is thread-safe (NVML API reference, "Multi-threading"), and
  the workers are daemon threads, so a hung driver never blocks the process' exit.
* NVML answers ``NVML_ERROR_NOT_SUPPORTED`` (and ``FUNCTION_NOT_FOUND``,
  ``NO_PERMISSION``) for fields a GPU or driver lacks: those series are omitted, never
  exported as a number, and not asked again.
* No NVML library or driver: ``mlmon_gpu_up{reason="no_driver"} 0``; a driver and no
  GPU: ``{reason="no_device"} 0`` (the generated ``GPUDown`` alert ignores both). Init is
  retried every ``init_retry_seconds``. Any other init failure sets ``reason`` to the
  NVML error name, which does fire ``GPUDown``.
* XID errors arrive as NVML events (``nvmlEventTypeXidCriticalError``) on a background
  thread and are counted one per event by ``{gpu, xid}``: two identical XIDs in a row
  count twice, unlike dcgm-exporter's last-value ``DCGM_FI_DEV_XID_ERRORS`` gauge
  (dcgm-exporter#190). XID and error counters are exported even while a GPU is down:
  they count events, they are not readings.

``collect()`` never raises: a bug in a reader is logged and turns into ``up 0``.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from monitor import conventions as c

__all__ = ["GpuCollector", "NvmlTimeoutError"]

log = logging.getLogger("monitor.gpu")

_GPU_LABELS = [c.LABEL_GPU, c.LABEL_UUID, c.LABEL_GPU_NAME]
_SYSTEM = "system"
_MHZ = 1e6
_MILLI = 1e-3
_EVENT_WAIT_MS = 500
"""How long one ``nvmlEventSetWait`` blocks; also how fast ``close()`` stops the loop."""
_EVENT_BACKOFF_SECONDS = 5.0
"""Pause after an event-loop error other than a timeout (e.g. a lost GPU)."""

_OMITTED_ERRORS = ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND", "NO_PERMISSION")
"""NVML answers meaning "this GPU or driver cannot tell": the series is left out."""
_ABSENT_ERRORS = {
    "LIBRARY_NOT_FOUND": c.GPU_REASON_NO_DRIVER,
    "DRIVER_NOT_LOADED": c.GPU_REASON_NO_DRIVER,
    "NO_PERMISSION": c.GPU_REASON_NO_DRIVER,  # /dev/nvidia* not mapped into the container
}
"""Init failures of a machine without a usable driver: not a GPU failure."""

# (reason label, pynvml constant) of the clock-event (throttle) bitmask, NVML
# ``nvmlClocksEventReason*`` (named ``nvmlClocksThrottleReason*`` before driver 535).
_THROTTLE_BITS = (
    (c.THROTTLE_GPU_IDLE, "GpuIdle"),
    (c.THROTTLE_APPLICATIONS_CLOCKS, "ApplicationsClocksSetting"),
    (c.THROTTLE_SW_POWER_CAP, "SwPowerCap"),
    (c.THROTTLE_HW_SLOWDOWN, "HwSlowdown"),
    (c.THROTTLE_SYNC_BOOST, "SyncBoost"),
    (c.THROTTLE_SW_THERMAL, "SwThermalSlowdown"),
    (c.THROTTLE_HW_THERMAL, "HwThermalSlowdown"),
    (c.THROTTLE_HW_POWER_BRAKE, "HwPowerBrakeSlowdown"),
    (c.THROTTLE_DISPLAY_CLOCKS, "DisplayClockSetting"),
)
_NVLINK_COUNTERS = (
    (c.NVLINK_REPLAY, "NVML_NVLINK_ERROR_DL_REPLAY"),
    (c.NVLINK_RECOVERY, "NVML_NVLINK_ERROR_DL_RECOVERY"),
    (c.NVLINK_CRC_FLIT, "NVML_NVLINK_ERROR_DL_CRC_FLIT"),
    (c.NVLINK_CRC_DATA, "NVML_NVLINK_ERROR_DL_CRC_DATA"),
)

# name -> (kind, help) of every family; kind "gauge" or "counter".
_FAMILIES: dict[str, tuple[str, str]] = {
    c.GPU_UP: (
        "gauge",
        "1 when every NVML read of the GPU succeeded within the timeout, else 0 (then the "
        "GPU's readings are left out); with a reason and no gpu: no driver or no GPU.",
    ),
    c.GPU_UTILIZATION_RATIO: ("gauge", "Share of the last sample period a kernel ran, 0-1."),
    c.GPU_MEMORY_UTILIZATION_RATIO: (
        "gauge",
        "Share of the last sample period device memory was read or written, 0-1.",
    ),
    c.GPU_MEMORY_USED_BYTES: ("gauge", "Device memory allocated, in bytes."),
    c.GPU_MEMORY_TOTAL_BYTES: ("gauge", "Device memory installed, in bytes."),
    c.GPU_TEMPERATURE_CELSIUS: ("gauge", "GPU core temperature in degrees Celsius."),
    c.GPU_POWER_WATTS: ("gauge", "Power draw of the board in watts."),
    c.GPU_POWER_LIMIT_WATTS: ("gauge", "Enforced power limit of the board in watts."),
    c.GPU_SM_CLOCK_HERTZ: ("gauge", "Current SM clock in hertz."),
    c.GPU_MEMORY_CLOCK_HERTZ: ("gauge", "Current memory clock in hertz."),
    c.GPU_THROTTLE_REASON: ("gauge", "1 while the clock-event (throttle) reason is active."),
    c.GPU_ECC_ERRORS_TOTAL: (
        "counter",
        "ECC memory errors by type (corrected, uncorrected) and scope (volatile: since "
        "the driver loaded; aggregate: lifetime).",
    ),
    c.GPU_RETIRED_PAGES: ("gauge", "Memory pages retired, by the ECC error type that caused it."),
    c.GPU_REMAPPED_ROWS: ("gauge", "Memory rows remapped, by the error type that caused it."),
    c.GPU_ROW_REMAP_PENDING: ("gauge", "1 when a row remapping waits for a GPU reset."),
    c.GPU_ROW_REMAP_FAILURE: ("gauge", "1 when a row remapping failed (the GPU needs service)."),
    c.GPU_XID_ERRORS_TOTAL: ("counter", "XID errors reported by NVML events, one per event."),
    c.GPU_PCIE_REPLAY_TOTAL: ("counter", "PCIe replays (link-level retransmissions)."),
    c.GPU_NVLINK_ERRORS_TOTAL: ("counter", "NVLink errors by type, summed over the GPU's links."),
    c.GPU_NVML_ERRORS_TOTAL: ("counter", "NVML calls that failed or timed out, by error."),
}
_READING_FAMILIES = [n for n in _FAMILIES if n not in (c.GPU_UP, c.GPU_XID_ERRORS_TOTAL)]
_READING_FAMILIES.remove(c.GPU_NVML_ERRORS_TOTAL)


class NvmlTimeoutError(Exception):
    """An NVML read did not finish within the collector's timeout (a hung driver)."""


_ERROR_NAMES: dict[int, dict[int, str]] = {}


def error_name(nvml: Any, exc: BaseException) -> str:
    """The ``error`` label of a failure: the NVML error in snake case (``gpu_is_lost``
    for ``NVML_ERROR_GPU_IS_LOST``), ``timeout`` for :class:`NvmlTimeoutError`, else the
    exception's class name in snake case (a bug, logged where it happens)."""
    if isinstance(exc, NvmlTimeoutError):
        return "timeout"
    value = getattr(exc, "value", None)
    if isinstance(value, int):
        names = _ERROR_NAMES.get(id(nvml))
        if names is None:
            names = _ERROR_NAMES[id(nvml)] = {
                v: attr[len("NVML_ERROR_") :].lower()
                for attr in dir(nvml)
                if attr.startswith("NVML_ERROR_") and isinstance(v := getattr(nvml, attr), int)
            }
        return names.get(value, f"code_{value}")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()


def _is(nvml: Any, exc: BaseException, *names: str) -> bool:
    value = getattr(exc, "value", None)
    return value is not None and any(
        getattr(nvml, f"NVML_ERROR_{n}", object()) == value for n in names
    )


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _handle_key(handle: Any) -> Any:
    """A hashable identity of a device handle: the pointer value of a real pynvml
    ``c_nvmlDevice_t``, else the object itself (a fake's handle)."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


class _Job:
    """One read on a worker thread; ``wait`` bounds how long the caller blocks."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self._fn = fn
        self._done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:  # handed to the waiting scrape
            self.error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, deadline: float) -> Any:
        """The value, or raise the read's error, or :class:`NvmlTimeoutError` at ``deadline``
        (a ``time.monotonic()`` value)."""
        if not self._done.wait(max(0.0, deadline - time.monotonic())):
            raise NvmlTimeoutError
        if self.error is not None:
            raise self.error
        return self.value


class _Workers:
    """At most one read in flight per key (a GPU index, or ``system``)."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    def start(self, key: str, fn: Callable[[], Any]) -> _Job | None:
        """Start ``fn`` for ``key``; None while an earlier read of ``key`` still hangs."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.done:
                return None
            job = self._jobs[key] = _Job(fn, f"nvml-{key}")
            return job

    def run(self, key: str, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` for ``key`` and wait at most ``timeout`` seconds.

        Raises:
            NvmlTimeoutError: it did not finish, or an earlier read of ``key`` still hangs.
            Exception: whatever ``fn`` raised.
        """
        job = self.start(key, fn)
        if job is None:
            raise NvmlTimeoutError
        return job.result(time.monotonic() + timeout)


@dataclass
class _Gpu:
    """What the collector knows about one GPU between scrapes."""

    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    omitted: set[str] = field(default_factory=set)
    """Fields NVML said it cannot read on this GPU (not asked again)."""
    nvlinks: list[int] | None = None
    """NVLink link numbers NVML answers for (found on the first read)."""
    error: str | None = None
    """The error of the last read, for logging changes only."""

    @property
    def labels(self) -> list[str]:
        return [str(self.index), self.uuid, self.name]


Reading = list[tuple[str, tuple[str, ...], float]]
"""(family, extra label values, value) of one GPU's successful read."""


class GpuCollector(Collector):
    """Prometheus collector of the node's GPUs through NVML.

    Args:
        nvml: the ``pynvml`` module (default: imported on first use; a test passes a fake
            with the same API, see ``tests/fake_pynvml.py``).
        timeout: seconds a scrape waits for the NVML reads of all GPUs together
            (default ``conventions.DEFAULT_NVML_TIMEOUT_SECONDS``).
        registry: where to register (default the global ``REGISTRY``; None: do not).
        xid_events: count XID errors from NVML events on a background thread (default on).
        refresh_on_collect: read NVML inside ``collect()`` (default). The sidecar turns it
            off and calls :meth:`refresh` from a thread before encoding, so that a hung
            driver never blocks its event loop.
        init_retry_seconds: how often a failed NVML init (no driver) is retried.

    ``collect()`` never raises and never blocks longer than ``timeout`` (plus the
    rendering).
    """

    def __init__(
        self,
        *,
        nvml: Any = None,
        timeout: float = c.DEFAULT_NVML_TIMEOUT_SECONDS,
        registry: CollectorRegistry | None = REGISTRY,
        xid_events: bool = True,
        refresh_on_collect: bool = True,
        init_retry_seconds: float = 60.0,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {timeout}")
        self._nvml = nvml
        self.timeout = timeout
        self.xid_events = xid_events
        self.refresh_on_collect = refresh_on_collect
        self.init_retry_seconds = init_retry_seconds
        self._workers = _Workers()
        self._refresh_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._initialized = False
        self._init_failed_at: float | None = None
        self._absent_reason: str | None = None
        self._gpus: dict[int, _Gpu] = {}
        self._readings: dict[int, Reading | None] = {}
        self._xids: dict[tuple[int, int], int] = {}
        self._errors: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._event_thread: threading.Thread | None = None
        if registry is not None:
            registry.register(self)

    # -- public ---------------------------------------------------------------------

    @property
    def nvml(self) -> Any:
        """The NVML module in use (imports ``pynvml`` on first use)."""
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    @property
    def absent_reason(self) -> str | None:
        """Why no GPU is read (``no_driver``, ``no_device``, an init error), or None."""
        return self._absent_reason

    def refresh(self) -> None:
        """Read every GPU now, waiting at most ``timeout`` seconds. Never raises."""
        with self._refresh_lock:
            try:
                self._refresh()
            except Exception:  # a bug here must not fail the scrape
                log.exception("GPU refresh failed")
                self._count_error("", "internal")
                self._readings = dict.fromkeys(self._gpus)

    def describe(self) -> Iterable[Metric]:
        """Families by name only, so registering does not call NVML."""
        for name in _FAMILIES:
            yield _family(name)

    def collect(self) -> Iterable[Metric]:
        """Export the last refresh (refreshing first unless ``refresh_on_collect`` is off)."""
        if self.refresh_on_collect:
            self.refresh()
        try:
            yield from self._render()
        except Exception:  # pragma: no cover - rendering plain numbers
            log.exception("GPU metrics rendering failed")

    def close(self) -> None:
        """Stop the XID event thread and shut NVML down (bounded by ``timeout``)."""
        self._stop.set()
        thread = self._event_thread
        if thread is not None:
            thread.join(self.timeout + _EVENT_WAIT_MS / 1000)
        if self._initialized:
            self._initialized = False
            try:
                self._workers.run(_SYSTEM, self.nvml.nvmlShutdown, self.timeout)
            except Exception as exc:
                log.warning("nvmlShutdown failed: %s", exc)

    # -- reading --------------------------------------------------------------------

    def _refresh(self) -> None:
        if self._stop.is_set():  # closed: NVML is shut down, and stays so
            self._readings = dict.fromkeys(self._gpus)
            return
        if not self._initialized and not self._init():
            return
        deadline = time.monotonic() + self.timeout
        jobs = {i: self._workers.start(str(i), self._reader(gpu)) for i, gpu in self._gpus.items()}
        readings: dict[int, Reading | None] = {}
        for i, job in jobs.items():
            try:
                if job is None:
                    raise NvmlTimeoutError
                readings[i] = job.result(deadline)
            except Exception as exc:
                name = error_name(self.nvml, exc)
                if not isinstance(exc, NvmlTimeoutError) and not hasattr(exc, "value"):
                    log.error("GPU %d: reading failed: %r", i, exc)  # a bug, not NVML
                self._count_error(str(i), name)
                readings[i] = None
                self._log_state(self._gpus[i], name)
            else:
                self._log_state(self._gpus[i], None)
        self._readings = readings

    @staticmethod
    def _log_state(gpu: _Gpu, error: str | None) -> None:
        if error != gpu.error:
            if error is None:
                log.info("GPU %d (%s): NVML answers again", gpu.index, gpu.uuid)
            else:
                log.error(
                    "GPU %d (%s): NVML read failed (%s); exporting %s 0 and no readings",
                    gpu.index,
                    gpu.uuid,
                    error,
                    c.GPU_UP,
                )
            gpu.error = error

    def _init(self) -> bool:
        """Init NVML and list the GPUs; False (with ``absent_reason`` set) on failure."""
        now = time.monotonic()
        if (
            self._init_failed_at is not None
            and now - self._init_failed_at < self.init_retry_seconds
        ):
            return False
        try:
            nvml = self.nvml
        except ImportError:
            self._init_failed(c.GPU_REASON_NO_DRIVER, "nvidia-ml-py (pynvml) is not installed")
            return False
        try:
            count = self._workers.run(_SYSTEM, self._init_and_count, self.timeout)
        except Exception as exc:
            name = error_name(nvml, exc)
            absent = next(
                (r for e, r in _ABSENT_ERRORS.items() if _is(nvml, exc, e)),
                None,
            )
            if absent is None:
                self._count_error("", name)
            self._init_failed(absent or name, f"NVML init failed: {exc!r} ({name})")
            if absent is None:
                self._init_failed_at = None  # a failing driver: try again next scrape
            return False
        self._initialized = True
        if count == 0:
            self._init_failed(c.GPU_REASON_NO_DEVICE, "NVML found no GPU")
            return False
        self._absent_reason = None
        self._init_failed_at = None
        self._gpus = {i: _Gpu(i) for i in range(count)}
        log.info("NVML: %d GPU(s)", count)
        if self.xid_events and self._event_thread is None:
            self._event_thread = threading.Thread(
                target=self._event_loop, name="nvml-xid-events", daemon=True
            )
            self._event_thread.start()
        return True

    def _init_and_count(self) -> int:
        nvml = self.nvml
        if not self._initialized:
            nvml.nvmlInit()
        return int(nvml.nvmlDeviceGetCount())

    def _init_failed(self, reason: str, message: str) -> None:
        if self._absent_reason != reason:
            log.log(
                logging.INFO if reason in c.GPU_ABSENT_REASONS else logging.ERROR,
                "%s; exporting %s{%s=%r} 0",
                message,
                c.GPU_UP,
                c.LABEL_REASON,
                reason,
            )
        self._absent_reason = reason
        self._init_failed_at = time.monotonic()
        self._readings = {}

    def _reader(self, gpu: _Gpu) -> Callable[[], Reading]:
        return lambda: self._read_gpu(gpu)

    def _read_gpu(self, gpu: _Gpu) -> Reading:
        """Every reading of one GPU (runs on its worker thread).

        Raises:
            NVMLError: any error other than "cannot tell" (see module docstring).
        """
        nvml = self.nvml
        if gpu.handle is None:
            handle = nvml.nvmlDeviceGetHandleByIndex(gpu.index)
            gpu.uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            gpu.name = _text(nvml.nvmlDeviceGetName(handle))
            gpu.handle = handle
        h = gpu.handle
        out: Reading = []

        def read(key: str, fn: Callable[[], Any]) -> Any:
            if key in gpu.omitted:
                return None
            try:
                return fn()
            except nvml.NVMLError as exc:
                if _is(nvml, exc, *_OMITTED_ERRORS):
                    gpu.omitted.add(key)
                    return None
                raise

        util = read("utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(h))
        if util is not None:
            out.append((c.GPU_UTILIZATION_RATIO, (), util.gpu / 100))
            out.append((c.GPU_MEMORY_UTILIZATION_RATIO, (), util.memory / 100))
        mem = read("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(h))
        if mem is not None:
            out.append((c.GPU_MEMORY_USED_BYTES, (), float(mem.used)))
            out.append((c.GPU_MEMORY_TOTAL_BYTES, (), float(mem.total)))
        temp = read(
            "temperature", lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)
        )
        if temp is not None:
            out.append((c.GPU_TEMPERATURE_CELSIUS, (), float(temp)))
        # Power in milliwatts (NVML nvmlDeviceGetPowerUsage, nvmlDeviceGetEnforcedPowerLimit).
        power = read("power", lambda: nvml.nvmlDeviceGetPowerUsage(h))
        if power is not None:
            out.append((c.GPU_POWER_WATTS, (), power * _MILLI))
        limit = read("power_limit", lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(h))
        if limit is not None:
            out.append((c.GPU_POWER_LIMIT_WATTS, (), limit * _MILLI))
        # Clocks in MHz (nvmlDeviceGetClockInfo).
        sm = read("sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))
        if sm is not None:
            out.append((c.GPU_SM_CLOCK_HERTZ, (), sm * _MHZ))
        memclk = read("mem_clock", lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_MEM))
        if memclk is not None:
            out.append((c.GPU_MEMORY_CLOCK_HERTZ, (), memclk * _MHZ))
        self._read_throttle(nvml, h, read, out)
        self._read_memory_errors(nvml, h, read, out)
        replay = read("pcie_replay", lambda: nvml.nvmlDeviceGetPcieReplayCounter(h))
        if replay is not None:
            out.append((c.GPU_PCIE_REPLAY_TOTAL, (), float(replay)))
        self._read_nvlink(nvml, h, gpu, read, out)
        return out

    @staticmethod
    def _read_throttle(nvml: Any, h: Any, read: Callable[..., Any], out: Reading) -> None:
        def mask() -> Any:
            # nvmlDeviceGetCurrentClocksEventReasons replaced ...ClocksThrottleReasons in
            # driver r535; an older driver lacks the new symbol (FUNCTION_NOT_FOUND).
            new = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            if new is not None:
                try:
                    return new(h)
                except nvml.NVMLError as exc:
                    if not _is(nvml, exc, "FUNCTION_NOT_FOUND"):
                        raise
            return nvml.nvmlDeviceGetCurrentClocksThrottleReasons(h)

        bits = read("throttle", mask)
        if bits is None:
            return
        for reason, suffix in _THROTTLE_BITS:
            bit = getattr(nvml, f"nvmlClocksEventReason{suffix}", None)
            if bit is None:
                bit = getattr(nvml, f"nvmlClocksThrottleReason{suffix}", None)
            if bit is not None:
                out.append((c.GPU_THROTTLE_REASON, (reason,), 1.0 if bits & bit else 0.0))

    @staticmethod
    def _read_memory_errors(nvml: Any, h: Any, read: Callable[..., Any], out: Reading) -> None:
        kinds = (
            (c.ECC_CORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
            (c.ECC_UNCORRECTED, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
        )
        scopes = (
            (c.ECC_VOLATILE, nvml.NVML_VOLATILE_ECC),
            (c.ECC_AGGREGATE, nvml.NVML_AGGREGATE_ECC),
        )
        for kind, kind_v in kinds:
            for scope, scope_v in scopes:
                n = read(
                    f"ecc_{kind}_{scope}",
                    lambda k=kind_v, s=scope_v: nvml.nvmlDeviceGetTotalEccErrors(h, k, s),
                )
                if n is not None:
                    out.append((c.GPU_ECC_ERRORS_TOTAL, (kind, scope), float(n)))
        causes = (
            (c.ECC_CORRECTED, nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS),
            (c.ECC_UNCORRECTED, nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR),
        )
        for kind, cause in causes:
            pages = read(f"retired_{kind}", lambda x=cause: nvml.nvmlDeviceGetRetiredPages(h, x))
            if pages is not None:
                out.append((c.GPU_RETIRED_PAGES, (kind,), float(len(pages))))
        # (corrected rows, uncorrected rows, remap pending, remap failure)
        rows = read("remapped_rows", lambda: nvml.nvmlDeviceGetRemappedRows(h))
        if rows is not None:
            corr, unc, pending, failure = rows
            out.append((c.GPU_REMAPPED_ROWS, (c.ECC_CORRECTED,), float(corr)))
            out.append((c.GPU_REMAPPED_ROWS, (c.ECC_UNCORRECTED,), float(unc)))
            out.append((c.GPU_ROW_REMAP_PENDING, (), 1.0 if pending else 0.0))
            out.append((c.GPU_ROW_REMAP_FAILURE, (), 1.0 if failure else 0.0))

    @staticmethod
    def _read_nvlink(nvml: Any, h: Any, gpu: _Gpu, read: Callable[..., Any], out: Reading) -> None:
        """Sum each NVLink error counter over the GPU's links. The links are found once:
        those whose ``nvmlDeviceGetNvLinkState`` answers (a GPU without NVLink answers
        NOT_SUPPORTED for every link and gets no series; links past the last answer
        INVALID_ARGUMENT)."""
        if gpu.nvlinks is None:
            found = []
            for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
                try:
                    nvml.nvmlDeviceGetNvLinkState(h, link)
                except nvml.NVMLError as exc:
                    if _is(nvml, exc, *_OMITTED_ERRORS, "INVALID_ARGUMENT"):
                        continue
                    raise
                found.append(link)
            gpu.nvlinks = found
        if not gpu.nvlinks:
            return
        for name, const in _NVLINK_COUNTERS:
            counter = getattr(nvml, const)
            total = 0.0
            for link in gpu.nvlinks:
                n = read(
                    f"nvlink_{name}",
                    lambda li=link, k=counter: nvml.nvmlDeviceGetNvLinkErrorCounter(h, li, k),
                )
                if n is None:
                    break
                total += n
            else:
                out.append((c.GPU_NVLINK_ERRORS_TOTAL, (name,), total))

    # -- XID events -----------------------------------------------------------------

    def _event_loop(self) -> None:
        """Count every XID event of every GPU that supports them (background thread)."""
        nvml = self.nvml
        xid = nvml.nvmlEventTypeXidCriticalError
        by_handle: dict[Any, int] = {}
        event_set = None
        while not self._stop.is_set():
            try:
                if event_set is None:
                    event_set = nvml.nvmlEventSetCreate()
                    by_handle = self._register_xid(nvml, event_set, xid)
                    if not by_handle:
                        log.info("no GPU supports XID events; XIDs are not counted")
                        break
                try:
                    data = nvml.nvmlEventSetWait(event_set, _EVENT_WAIT_MS)
                except nvml.NVMLError as exc:
                    if _is(nvml, exc, "TIMEOUT"):
                        continue
                    raise
                if not data.eventType & xid:
                    continue
                i = by_handle.get(_handle_key(data.device))
                if i is None:
                    i = int(nvml.nvmlDeviceGetIndex(data.device))
                key = (i, int(data.eventData))
                with self._counts_lock:
                    self._xids[key] = self._xids.get(key, 0) + 1
                log.warning("GPU %d: XID %d", i, data.eventData)
            except Exception as exc:
                if event_set is None and _is(nvml, exc, *_OMITTED_ERRORS):
                    log.info("NVML events unavailable (%r); XIDs are not counted", exc)
                    return
                name = error_name(nvml, exc)
                log.warning("NVML XID event loop: %r (%s); retrying", exc, name)
                self._count_error("", name)
                self._stop.wait(_EVENT_BACKOFF_SECONDS)
        if event_set is not None:
            try:
                nvml.nvmlEventSetFree(event_set)
            except Exception as exc:
                log.debug("nvmlEventSetFree: %r", exc)

    @staticmethod
    def _register_xid(nvml: Any, event_set: Any, xid: int) -> dict[Any, int]:
        """Register XID events of each GPU that supports them; handle key -> GPU index."""
        by_handle: dict[Any, int] = {}
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                if nvml.nvmlDeviceGetSupportedEventTypes(h) & xid:
                    nvml.nvmlDeviceRegisterEvents(h, xid, event_set)
                    by_handle[_handle_key(h)] = i
            except nvml.NVMLError as exc:
                if not _is(nvml, exc, *_OMITTED_ERRORS):
                    raise
        return by_handle

    # -- rendering ------------------------------------------------------------------

    def _count_error(self, gpu: str, error: str) -> None:
        with self._counts_lock:
            key = (gpu, error)
            self._errors[key] = self._errors.get(key, 0) + 1

    def _render(self) -> Iterator[Metric]:
        up = _family(c.GPU_UP)
        if self._absent_reason is not None and not self._gpus:
            up.samples.append(Sample(c.GPU_UP, {c.LABEL_REASON: self._absent_reason}, 0.0))
            yield up
            yield from self._counters({})
            return
        families = {n: _family(n, _extra_labels(n)) for n in _READING_FAMILIES}
        gpus = self._gpus
        for i, reading in sorted(self._readings.items()):
            labels = gpus[i].labels
            up.add_metric(labels, 0.0 if reading is None else 1.0)
            for name, extra, value in reading or ():
                families[name].add_metric([*labels, *extra], value)
        yield up
        for fam in families.values():
            if fam.samples:
                yield fam
        yield from self._counters(gpus)

    def _counters(self, gpus: dict[int, _Gpu]) -> Iterator[Metric]:
        with self._counts_lock:
            xids = sorted(self._xids.items())
            errors = sorted(self._errors.items())
        if xids:
            fam = _family(c.GPU_XID_ERRORS_TOTAL, [c.LABEL_XID])
            for (i, xid), n in xids:
                gpu = gpus.get(i)
                fam.add_metric([*(gpu.labels if gpu else [str(i), "", ""]), str(xid)], n)
            yield fam
        if errors:
            fam = CounterMetricFamily(
                c.GPU_NVML_ERRORS_TOTAL,
                _FAMILIES[c.GPU_NVML_ERRORS_TOTAL][1],
                labels=[c.LABEL_GPU, c.LABEL_ERROR],
            )
            for (gpu_label, error), n in errors:
                fam.add_metric([gpu_label, error], n)
            yield fam


def _extra_labels(name: str) -> list[str]:
    if name == c.GPU_THROTTLE_REASON:
        return [c.LABEL_REASON]
    if name == c.GPU_ECC_ERRORS_TOTAL:
        return [c.LABEL_ERROR_TYPE, c.LABEL_SCOPE]
    if name in (c.GPU_RETIRED_PAGES, c.GPU_REMAPPED_ROWS, c.GPU_NVLINK_ERRORS_TOTAL):
        return [c.LABEL_ERROR_TYPE]
    return []


def _family(name: str, extra: list[str] | None = None) -> Any:
    kind, doc = _FAMILIES[name]
    labels = [*_GPU_LABELS, *(extra or [])]
    if name == c.GPU_UP:
        return GaugeMetricFamily(name, doc, labels=labels)
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)
