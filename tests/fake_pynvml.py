"""A scriptable fake of the ``pynvml`` API surface :mod:`monitor.gpu.nvml` uses.

The fake sits exactly at the ``pynvml`` boundary (this machine has no GPU): same
function names, constants and ``NVMLError`` class tree as nvidia-ml-py 12/13, with
plain Python values behind them. A test builds one, scripts it, and passes it as
``GpuCollector(nvml=fake)``; ``tests/fake_gpu_exporter.py`` installs one as
``sys.modules["pynvml"]`` instead.

Scripting:

* ``FakeGpu`` fields are the readings (NVML units: percent, bytes, °C, milliwatts, MHz);
* ``gpu.unsupported`` holds NVML function names that answer ``NVML_ERROR_NOT_SUPPORTED``;
* ``gpu.errors[fn] = code`` makes a function raise that NVML error (until removed);
* ``gpu.hang.add(fn)`` makes a function block until :meth:`FakeNvml.release` (or 60 s);
* ``fake.emit_xid(index, xid)`` queues an XID event for ``nvmlEventSetWait``;
* ``fake.init_error = code`` makes ``nvmlInit`` fail (``NVML_ERROR_LIBRARY_NOT_FOUND``
  is a machine without a driver); ``fake.init_hangs = True`` makes it block.

``fake.calls`` counts calls by function name, ``fake.gpu_calls`` by (GPU, function).
"""

from __future__ import annotations

import collections
import queue
import threading
import types
from dataclasses import dataclass, field
from typing import Any, ClassVar

HANG_CAP_SECONDS = 60.0
"""A hung call gives up after this long even if nobody releases it (no leaked threads)."""

# --- constants (values as in nvidia-ml-py's pynvml.py) -----------------------------------
NVML_SUCCESS = 0
_ERRORS = {
    "UNINITIALIZED": 1,
    "INVALID_ARGUMENT": 2,
    "NOT_SUPPORTED": 3,
    "NO_PERMISSION": 4,
    "ALREADY_INITIALIZED": 5,
    "NOT_FOUND": 6,
    "INSUFFICIENT_SIZE": 7,
    "INSUFFICIENT_POWER": 8,
    "DRIVER_NOT_LOADED": 9,
    "TIMEOUT": 10,
    "IRQ_ISSUE": 11,
    "LIBRARY_NOT_FOUND": 12,
    "FUNCTION_NOT_FOUND": 13,
    "CORRUPTED_INFOROM": 14,
    "GPU_IS_LOST": 15,
    "RESET_REQUIRED": 16,
    "OPERATING_SYSTEM": 17,
    "LIB_RM_VERSION_MISMATCH": 18,
    "IN_USE": 19,
    "MEMORY": 20,
    "NO_DATA": 21,
    "UNKNOWN": 999,
}
CONSTANTS: dict[str, int] = {f"NVML_ERROR_{k}": v for k, v in _ERRORS.items()}
CONSTANTS.update(
    NVML_SUCCESS=0,
    NVML_TEMPERATURE_GPU=0,
    NVML_CLOCK_SM=1,
    NVML_CLOCK_MEM=2,
    NVML_MEMORY_ERROR_TYPE_CORRECTED=0,
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1,
    NVML_VOLATILE_ECC=0,
    NVML_AGGREGATE_ECC=1,
    NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS=0,
    NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR=1,
    NVML_NVLINK_MAX_LINKS=18,
    NVML_NVLINK_ERROR_DL_REPLAY=0,
    NVML_NVLINK_ERROR_DL_RECOVERY=1,
    NVML_NVLINK_ERROR_DL_CRC_FLIT=2,
    NVML_NVLINK_ERROR_DL_CRC_DATA=3,
    nvmlEventTypeSingleBitEccError=0x1,
    nvmlEventTypeDoubleBitEccError=0x2,
    nvmlEventTypeXidCriticalError=0x8,
    nvmlClocksEventReasonGpuIdle=0x1,
    nvmlClocksEventReasonApplicationsClocksSetting=0x2,
    nvmlClocksEventReasonSwPowerCap=0x4,
    nvmlClocksEventReasonHwSlowdown=0x8,
    nvmlClocksEventReasonSyncBoost=0x10,
    nvmlClocksEventReasonSwThermalSlowdown=0x20,
    nvmlClocksEventReasonHwThermalSlowdown=0x40,
    nvmlClocksEventReasonHwPowerBrakeSlowdown=0x80,
    nvmlClocksEventReasonDisplayClockSetting=0x100,
)
NOT_SUPPORTED = CONSTANTS["NVML_ERROR_NOT_SUPPORTED"]
GPU_IS_LOST = CONSTANTS["NVML_ERROR_GPU_IS_LOST"]
LIBRARY_NOT_FOUND = CONSTANTS["NVML_ERROR_LIBRARY_NOT_FOUND"]
TIMEOUT = CONSTANTS["NVML_ERROR_TIMEOUT"]
XID_EVENT = CONSTANTS["nvmlEventTypeXidCriticalError"]


class NVMLError(Exception):
    """pynvml's base error: ``NVMLError(code)`` builds the subclass of that code
    (``NVMLError_NotSupported``, ...), and ``.value`` is the code."""

    _valClassMapping: ClassVar[dict[int, type[NVMLError]]] = {}  # noqa: N815 - pynvml's name
    value: int

    def __new__(cls, value: int) -> NVMLError:
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value: int) -> None:
        super().__init__(value)

    def __str__(self) -> str:
        for name, code in _ERRORS.items():
            if code == self.value:
                return name.replace("_", " ").title()
        return f"NVML Error with code {self.value}"


def _class_name(err: str) -> str:
    return "NVMLError_" + "".join(p.title() for p in err.split("_"))


ERROR_CLASSES: dict[str, type[NVMLError]] = {}
for _err, _code in _ERRORS.items():
    _cls = type(_class_name(_err), (NVMLError,), {})
    NVMLError._valClassMapping[_code] = _cls
    ERROR_CLASSES[_class_name(_err)] = _cls


@dataclass
class FakeGpu:
    """One scripted GPU; readings in NVML units."""

    uuid: str = "GPU-00000000-0000-4000-8000-000000000000"
    name: str = "NVIDIA H100 80GB HBM3"
    util_gpu: int = 55
    """Percent."""
    util_memory: int = 30
    memory_total: int = 80 * 1024**3
    """Bytes."""
    memory_used: int = 20 * 1024**3
    temperature: int = 61
    """Degrees Celsius."""
    power_mw: int = 312_500
    """Milliwatts."""
    power_limit_mw: int = 700_000
    sm_mhz: int = 1980
    mem_mhz: int = 2619
    clocks_event_reasons: int = 0
    """Bitmask of ``nvmlClocksEventReason*``."""
    ecc: dict[tuple[int, int], int] = field(default_factory=dict)
    """(error type, counter type) -> count; missing keys read 0."""
    retired_pages: dict[int, list[int]] = field(default_factory=dict)
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)
    """(corrected, uncorrected, pending, failure)."""
    pcie_replay: int = 0
    nvlinks: int = 0
    """Number of NVLink links; 0 = no NVLink (NOT_SUPPORTED)."""
    nvlink_errors: dict[tuple[int, int], int] = field(default_factory=dict)
    """(link, counter) -> count."""
    supported_events: int = XID_EVENT
    unsupported: set[str] = field(default_factory=set)
    """NVML function names that answer NOT_SUPPORTED."""
    errors: dict[str, int] = field(default_factory=dict)
    """NVML function name -> error code it raises."""
    hang: set[str] = field(default_factory=set)
    """NVML function names that block until released."""


@dataclass
class _Handle:
    index: int


@dataclass
class _EventData:
    device: Any
    eventType: int  # noqa: N815 - pynvml's field names
    eventData: int  # noqa: N815
    gpuInstanceId: int = 0  # noqa: N815
    computeInstanceId: int = 0  # noqa: N815


class _EventSet:
    def __init__(self) -> None:
        self.devices: dict[int, int] = {}


class FakeNvml(types.ModuleType):
    """The fake ``pynvml`` module. ``FakeNvml(gpus=[FakeGpu(), ...])``."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[FakeGpu] | None = None) -> None:
        super().__init__("pynvml", "fake pynvml (tests/fake_pynvml.py)")
        for name, value in CONSTANTS.items():
            setattr(self, name, value)
        for name, cls in ERROR_CLASSES.items():
            setattr(self, name, cls)
        self.gpus: list[FakeGpu] = gpus if gpus is not None else [FakeGpu()]
        self.init_error: int | None = None
        self.init_hangs = False
        """``nvmlInit`` blocks until :meth:`release` (a driver hung at start-up)."""
        self.initialized = False
        self.calls: collections.Counter[str] = collections.Counter()
        self.gpu_calls: collections.Counter[tuple[int, str]] = collections.Counter()
        """Calls by (GPU index, function name)."""
        self._handles = [_Handle(i) for i in range(64)]
        self._events: queue.Queue[_EventData] = queue.Queue()
        self._release = threading.Event()
        self.hanging = threading.Semaphore(0)
        """Released once each time a call starts to hang (tests wait on it)."""

    # -- scripting --------------------------------------------------------------------
    def emit_xid(self, index: int, xid: int) -> None:
        """Queue an XID event of GPU ``index`` (delivered if it registered for XIDs)."""
        self._events.put(_EventData(self._handles[index], XID_EVENT, xid))

    def release(self) -> None:
        """Let every hung call return (and later ones not hang)."""
        self._release.set()

    def rehang(self) -> None:
        """Undo :meth:`release`, so functions in ``gpu.hang`` block again."""
        self._release.clear()

    # -- plumbing -----------------------------------------------------------------------
    def _gpu(self, handle: _Handle, fn: str) -> FakeGpu:
        self.calls[fn] += 1
        self.gpu_calls[(handle.index, fn)] += 1
        if not self.initialized:
            raise NVMLError(CONSTANTS["NVML_ERROR_UNINITIALIZED"])
        gpu = self.gpus[handle.index]
        if fn in gpu.hang and not self._release.is_set():
            self.hanging.release()
            self._release.wait(HANG_CAP_SECONDS)
        if fn in gpu.errors:
            raise NVMLError(gpu.errors[fn])
        if fn in gpu.unsupported:
            raise NVMLError(NOT_SUPPORTED)
        return gpu

    # -- the API --------------------------------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names from here on
        self.calls["nvmlInit"] += 1
        if self.init_hangs and not self._release.is_set():
            self.hanging.release()
            self._release.wait(HANG_CAP_SECONDS)
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:  # noqa: N802
        self.calls["nvmlShutdown"] += 1
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self.calls["nvmlDeviceGetCount"] += 1
        if not self.initialized:
            raise NVMLError(CONSTANTS["NVML_ERROR_UNINITIALIZED"])
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        if not 0 <= index < len(self.gpus):
            raise NVMLError(CONSTANTS["NVML_ERROR_INVALID_ARGUMENT"])
        handle = self._handles[index]
        self._gpu(handle, "nvmlDeviceGetHandleByIndex")
        return handle

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:  # noqa: N802
        self._gpu(handle, "nvmlDeviceGetIndex")
        return handle.index

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetUtilizationRates")
        return types.SimpleNamespace(gpu=g.util_gpu, memory=g.util_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle, version: Any = None) -> Any:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetMemoryInfo")
        return types.SimpleNamespace(
            total=g.memory_total, used=g.memory_used, free=g.memory_total - g.memory_used
        )

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:  # noqa: N802
        assert sensor == CONSTANTS["NVML_TEMPERATURE_GPU"]
        return self._gpu(handle, "nvmlDeviceGetTemperature").temperature

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock: int) -> int:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetClockInfo")
        return g.sm_mhz if clock == CONSTANTS["NVML_CLOCK_SM"] else g.mem_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:  # noqa: N802
        """The name before driver r535 (same bits)."""
        return self._gpu(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").clocks_event_reasons

    def nvmlDeviceGetTotalEccErrors(  # noqa: N802
        self, handle: _Handle, error_type: int, counter_type: int
    ) -> int:
        g = self._gpu(handle, "nvmlDeviceGetTotalEccErrors")
        return g.ecc.get((error_type, counter_type), 0)

    def nvmlDeviceGetRetiredPages(self, handle: _Handle, cause: int) -> list[int]:  # noqa: N802
        return list(self._gpu(handle, "nvmlDeviceGetRetiredPages").retired_pages.get(cause, []))

    def nvmlDeviceGetRemappedRows(self, handle: _Handle) -> tuple[int, int, int, int]:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetRemappedRows").remapped_rows

    def nvmlDeviceGetPcieReplayCounter(self, handle: _Handle) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetPcieReplayCounter").pcie_replay

    def nvmlDeviceGetNvLinkState(self, handle: _Handle, link: int) -> int:  # noqa: N802
        g = self._gpu(handle, "nvmlDeviceGetNvLinkState")
        if g.nvlinks == 0:
            raise NVMLError(NOT_SUPPORTED)
        if link >= g.nvlinks:
            raise NVMLError(CONSTANTS["NVML_ERROR_INVALID_ARGUMENT"])
        return 1

    def nvmlDeviceGetNvLinkErrorCounter(  # noqa: N802
        self, handle: _Handle, link: int, counter: int
    ) -> int:
        g = self._gpu(handle, "nvmlDeviceGetNvLinkErrorCounter")
        if link >= g.nvlinks:
            raise NVMLError(CONSTANTS["NVML_ERROR_INVALID_ARGUMENT"])
        return g.nvlink_errors.get((link, counter), 0)

    def nvmlDeviceGetSupportedEventTypes(self, handle: _Handle) -> int:  # noqa: N802
        return self._gpu(handle, "nvmlDeviceGetSupportedEventTypes").supported_events

    def nvmlEventSetCreate(self) -> _EventSet:  # noqa: N802
        self.calls["nvmlEventSetCreate"] += 1
        return _EventSet()

    def nvmlDeviceRegisterEvents(  # noqa: N802
        self, handle: _Handle, event_types: int, event_set: _EventSet
    ) -> None:
        g = self._gpu(handle, "nvmlDeviceRegisterEvents")
        if event_types & ~g.supported_events:
            raise NVMLError(NOT_SUPPORTED)
        event_set.devices[handle.index] = event_set.devices.get(handle.index, 0) | event_types

    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> _EventData:  # noqa: N802
        """Deliver the next queued event of a registered GPU, or raise TIMEOUT."""
        self.calls["nvmlEventSetWait"] += 1
        try:
            event = self._events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            raise NVMLError(TIMEOUT) from None
        if not event_set.devices.get(event.device.index, 0) & event.eventType:
            raise NVMLError(TIMEOUT)  # not registered: dropped, as NVML would not deliver it
        return event

    nvmlEventSetWait_v2 = nvmlEventSetWait  # noqa: N815 - pynvml's name

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:  # noqa: N802
        self.calls["nvmlEventSetFree"] += 1


def demo_gpus() -> list[FakeGpu]:
    """Two GPUs with something to show on every panel: GPU 0 (NVLink, ECC errors,
    thermal throttling, XID 79 queued by :func:`demo_nvml`), GPU 1 (PCIe, no NVLink,
    healthy, some fields unsupported)."""
    corrected, uncorrected = 0, 1
    volatile, aggregate = 0, 1
    return [
        FakeGpu(
            uuid="GPU-5f1b2c3d-0000-4000-8000-000000000000",
            name="NVIDIA H100 80GB HBM3",
            util_gpu=87,
            util_memory=41,
            memory_used=71 * 1024**3,
            temperature=83,
            power_mw=645_250,
            clocks_event_reasons=CONSTANTS["nvmlClocksEventReasonSwThermalSlowdown"],
            ecc={
                (corrected, volatile): 12,
                (corrected, aggregate): 40,
                (uncorrected, volatile): 1,
                (uncorrected, aggregate): 2,
            },
            remapped_rows=(2, 1, 1, 0),
            pcie_replay=3,
            nvlinks=18,
            nvlink_errors={(0, 2): 5, (3, 0): 2},
            unsupported={"nvmlDeviceGetRetiredPages"},
        ),
        FakeGpu(
            uuid="GPU-9a8b7c6d-0000-4000-8000-000000000001",
            name="NVIDIA L4",
            util_gpu=12,
            util_memory=5,
            memory_total=24 * 1024**3,
            memory_used=3 * 1024**3,
            temperature=44,
            power_mw=31_000,
            power_limit_mw=72_000,
            sm_mhz=2040,
            mem_mhz=6251,
            clocks_event_reasons=CONSTANTS["nvmlClocksEventReasonGpuIdle"],
            unsupported={"nvmlDeviceGetRetiredPages", "nvmlDeviceGetPcieReplayCounter"},
        ),
    ]


def demo_nvml() -> FakeNvml:
    """:func:`demo_gpus` in a fake with XID 79 ("fallen off the bus") queued on GPU 0."""
    fake = FakeNvml(demo_gpus())
    fake.emit_xid(0, 79)
    return fake
