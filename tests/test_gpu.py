"""GPU health collector: a fake NVML at the ``pynvml`` boundary (this machine has no GPU),
a real sidecar and a real ``monitor gpu-exporter`` process, and one ``gpu``-marked test of
the real collector on a real NVIDIA GPU."""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor import conventions as c
from monitor.gpu.nvml import GpuCollector
from monitor.procs import ManagedProcess, free_ports
from monitor.sidecar.app import Sidecar
from monitor.spec import load_spec
from tests.fake_pynvml import (
    CONSTANTS,
    GPU_IS_LOST,
    LIBRARY_NOT_FOUND,
    FakeGpu,
    FakeNvml,
    demo_gpus,
)
from tests.support import HERE, MONITOR, FaultServer, Metrics, sidecar, write_spec

H100 = {
    c.LABEL_GPU: "0",
    c.LABEL_UUID: "GPU-00000000-0000-4000-8000-000000000000",
    c.LABEL_GPU_NAME: "NVIDIA H100 80GB HBM3",
}
CORRECTED, UNCORRECTED = CONSTANTS["NVML_MEMORY_ERROR_TYPE_CORRECTED"], 1
VOLATILE, AGGREGATE = CONSTANTS["NVML_VOLATILE_ECC"], CONSTANTS["NVML_AGGREGATE_ECC"]


def labels_of(gpu: FakeGpu, index: int) -> dict[str, str]:
    return {c.LABEL_GPU: str(index), c.LABEL_UUID: gpu.uuid, c.LABEL_GPU_NAME: gpu.name}


@pytest.fixture
def collectors() -> Iterator[Callable[..., tuple[GpuCollector, CollectorRegistry, FakeNvml]]]:
    """Builds collectors on fakes with fresh registries; releases hangs and closes them."""
    made: list[tuple[GpuCollector, FakeNvml]] = []

    def make(
        gpus: list[FakeGpu] | None = None, **kw: Any
    ) -> tuple[GpuCollector, CollectorRegistry, FakeNvml]:
        fake = kw.pop("fake", None) or FakeNvml(gpus)
        reg = CollectorRegistry()
        kw.setdefault("xid_events", False)
        col = GpuCollector(nvml=fake, registry=reg, **kw)
        made.append((col, fake))
        return col, reg, fake

    yield make
    for col, fake in made:
        fake.release()
        col.close()


def sample(m: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none);
    :meth:`Metrics.get` cannot take a ``name`` label as a keyword."""
    want = labels or {}
    return sum(
        v for n, lab, v in m.samples if n == name and all(lab.get(k) == x for k, x in want.items())
    )


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- readings ------------------------------------------------------------------------------


def test_a_healthy_gpu_exports_every_reading_in_base_units(collectors: Any) -> None:
    gpu = FakeGpu(
        clocks_event_reasons=CONSTANTS["nvmlClocksEventReasonSwPowerCap"]
        | CONSTANTS["nvmlClocksEventReasonHwThermalSlowdown"],
        remapped_rows=(3, 1, 1, 0),
        retired_pages={0: [0x1000, 0x2000], 1: [0x3000]},
        pcie_replay=7,
    )
    _, reg, _ = collectors([gpu])
    get = reg.get_sample_value
    assert get(c.GPU_UP, H100) == 1
    assert get(c.GPU_UTILIZATION_RATIO, H100) == pytest.approx(0.55)
    assert get(c.GPU_MEMORY_UTILIZATION_RATIO, H100) == pytest.approx(0.30)
    assert get(c.GPU_MEMORY_USED_BYTES, H100) == 20 * 1024**3
    assert get(c.GPU_MEMORY_TOTAL_BYTES, H100) == 80 * 1024**3
    assert get(c.GPU_TEMPERATURE_CELSIUS, H100) == 61
    assert get(c.GPU_POWER_WATTS, H100) == pytest.approx(312.5)
    assert get(c.GPU_POWER_LIMIT_WATTS, H100) == pytest.approx(700.0)
    assert get(c.GPU_SM_CLOCK_HERTZ, H100) == pytest.approx(1.98e9)
    assert get(c.GPU_MEMORY_CLOCK_HERTZ, H100) == pytest.approx(2.619e9)
    throttle = {
        r: get(c.GPU_THROTTLE_REASON, {**H100, c.LABEL_REASON: r})
        for r in (c.THROTTLE_SW_POWER_CAP, c.THROTTLE_HW_THERMAL, c.THROTTLE_SW_THERMAL)
    }
    assert throttle == {
        c.THROTTLE_SW_POWER_CAP: 1,
        c.THROTTLE_HW_THERMAL: 1,
        c.THROTTLE_SW_THERMAL: 0,
    }
    for kind in (c.ECC_CORRECTED, c.ECC_UNCORRECTED):
        for scope in (c.ECC_VOLATILE, c.ECC_AGGREGATE):
            lab = {**H100, c.LABEL_ERROR_TYPE: kind, c.LABEL_SCOPE: scope}
            assert get(c.GPU_ECC_ERRORS_TOTAL, lab) == 0
    assert get(c.GPU_RETIRED_PAGES, {**H100, c.LABEL_ERROR_TYPE: c.ECC_CORRECTED}) == 2
    assert get(c.GPU_RETIRED_PAGES, {**H100, c.LABEL_ERROR_TYPE: c.ECC_UNCORRECTED}) == 1
    assert get(c.GPU_REMAPPED_ROWS, {**H100, c.LABEL_ERROR_TYPE: c.ECC_CORRECTED}) == 3
    assert get(c.GPU_REMAPPED_ROWS, {**H100, c.LABEL_ERROR_TYPE: c.ECC_UNCORRECTED}) == 1
    assert get(c.GPU_ROW_REMAP_PENDING, H100) == 1
    assert get(c.GPU_ROW_REMAP_FAILURE, H100) == 0
    assert get(c.GPU_PCIE_REPLAY_TOTAL, H100) == 7
    # No NVLink on this GPU: no series, not a zero.
    nvlink = {**H100, c.LABEL_ERROR_TYPE: c.NVLINK_REPLAY}
    assert get(c.GPU_NVLINK_ERRORS_TOTAL, nvlink) is None
    assert get(c.GPU_NVML_ERRORS_TOTAL, {c.LABEL_GPU: "0", c.LABEL_ERROR: "timeout"}) is None


def test_a_driver_older_than_r535_is_read_through_the_throttle_reasons_call(
    collectors: Any,
) -> None:
    gpu = FakeGpu(clocks_event_reasons=CONSTANTS["nvmlClocksEventReasonHwSlowdown"])
    gpu.errors["nvmlDeviceGetCurrentClocksEventReasons"] = CONSTANTS[
        "NVML_ERROR_FUNCTION_NOT_FOUND"
    ]
    _, reg, fake = collectors([gpu])
    slowdown = {**H100, c.LABEL_REASON: c.THROTTLE_HW_SLOWDOWN}
    assert reg.get_sample_value(c.GPU_THROTTLE_REASON, slowdown) == 1
    assert reg.get_sample_value(c.GPU_UP, H100) == 1
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2


def test_the_counters_are_typed_counter_and_the_ratios_gauge_in_the_exposition(
    collectors: Any,
) -> None:
    _, reg, _ = collectors([FakeGpu(pcie_replay=1)])
    text = generate_latest(reg).decode()
    assert f"# TYPE {c.GPU_ECC_ERRORS_TOTAL} counter" in text
    assert f"# TYPE {c.GPU_PCIE_REPLAY_TOTAL} counter" in text
    assert f"# TYPE {c.GPU_UTILIZATION_RATIO} gauge" in text


def test_registering_calls_no_nvml_function(collectors: Any) -> None:
    _, _, fake = collectors()
    assert sum(fake.calls.values()) == 0


def test_unsupported_fields_are_left_out_and_not_asked_again(collectors: Any) -> None:
    gpu = FakeGpu(
        unsupported={
            "nvmlDeviceGetPowerUsage",
            "nvmlDeviceGetTotalEccErrors",
            "nvmlDeviceGetRetiredPages",
            "nvmlDeviceGetCurrentClocksEventReasons",
        }
    )
    _, reg, fake = collectors([gpu])
    get = reg.get_sample_value  # every call is one scrape
    for _ in range(3):
        assert get(c.GPU_UP, H100) == 1
    assert get(c.GPU_POWER_WATTS, H100) is None
    assert get(c.GPU_POWER_LIMIT_WATTS, H100) == pytest.approx(700.0)
    text = generate_latest(reg).decode()
    for gone in (c.GPU_ECC_ERRORS_TOTAL, c.GPU_RETIRED_PAGES, c.GPU_THROTTLE_REASON):
        assert f"\n{gone}{{" not in text, gone
    # Six scrapes; each unsupported field was asked on the first only (four ECC counters).
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 6
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1
    assert fake.calls["nvmlDeviceGetTotalEccErrors"] == 4
    assert fake.calls["nvmlDeviceGetNvLinkState"] == 18  # every link once, on the first read


def test_nvlink_errors_are_summed_over_links_on_the_gpu_that_has_nvlink(collectors: Any) -> None:
    gpus = demo_gpus()
    _, reg, _ = collectors(gpus)
    get = reg.get_sample_value
    first, second = labels_of(gpus[0], 0), labels_of(gpus[1], 1)
    got = {
        t: get(c.GPU_NVLINK_ERRORS_TOTAL, {**first, c.LABEL_ERROR_TYPE: t})
        for t in (c.NVLINK_REPLAY, c.NVLINK_RECOVERY, c.NVLINK_CRC_FLIT, c.NVLINK_CRC_DATA)
    }
    assert got == {
        c.NVLINK_REPLAY: 2,
        c.NVLINK_RECOVERY: 0,
        c.NVLINK_CRC_FLIT: 5,
        c.NVLINK_CRC_DATA: 0,
    }
    assert get(c.GPU_NVLINK_ERRORS_TOTAL, {**second, c.LABEL_ERROR_TYPE: c.NVLINK_REPLAY}) is None
    assert get(c.GPU_PCIE_REPLAY_TOTAL, second) is None  # unsupported on the L4 fake
    assert get(c.GPU_UP, second) == 1


def test_ecc_counters_follow_nvml_increments(collectors: Any) -> None:
    gpu = FakeGpu()
    _, reg, _ = collectors([gpu])
    unc_vol = {**H100, c.LABEL_ERROR_TYPE: c.ECC_UNCORRECTED, c.LABEL_SCOPE: c.ECC_VOLATILE}
    unc_agg = {**H100, c.LABEL_ERROR_TYPE: c.ECC_UNCORRECTED, c.LABEL_SCOPE: c.ECC_AGGREGATE}
    cor_vol = {**H100, c.LABEL_ERROR_TYPE: c.ECC_CORRECTED, c.LABEL_SCOPE: c.ECC_VOLATILE}
    seen = []
    for unc, cor in ((0, 0), (1, 4), (3, 9)):
        gpu.ecc[(UNCORRECTED, VOLATILE)] = unc
        gpu.ecc[(UNCORRECTED, AGGREGATE)] = 10 + unc
        gpu.ecc[(CORRECTED, VOLATILE)] = cor
        seen.append(
            (
                reg.get_sample_value(c.GPU_ECC_ERRORS_TOTAL, unc_vol),
                reg.get_sample_value(c.GPU_ECC_ERRORS_TOTAL, unc_agg),
                reg.get_sample_value(c.GPU_ECC_ERRORS_TOTAL, cor_vol),
            )
        )
    assert seen == [(0, 10, 0), (1, 11, 4), (3, 13, 9)]


# --- XID events ------------------------------------------------------------------------------


def test_two_identical_xids_in_a_row_count_twice(collectors: Any) -> None:
    gpus = [FakeGpu(), FakeGpu(uuid="GPU-1", name="NVIDIA L4")]
    col, reg, fake = collectors(gpus, xid_events=True)
    col.refresh()  # init starts the event thread
    fake.emit_xid(0, 79)
    fake.emit_xid(0, 79)
    fake.emit_xid(1, 48)
    xid79 = {**H100, c.LABEL_XID: "79"}
    xid48 = {**labels_of(gpus[1], 1), c.LABEL_XID: "48"}
    wait_for(lambda: reg.get_sample_value(c.GPU_XID_ERRORS_TOTAL, xid48) == 1)
    wait_for(lambda: reg.get_sample_value(c.GPU_XID_ERRORS_TOTAL, xid79) == 2)
    assert reg.get_sample_value(c.GPU_XID_ERRORS_TOTAL, {**H100, c.LABEL_XID: "48"}) is None
    fake.emit_xid(0, 79)
    wait_for(lambda: reg.get_sample_value(c.GPU_XID_ERRORS_TOTAL, xid79) == 3)


def test_xids_of_a_gpu_without_event_support_are_not_registered(collectors: Any) -> None:
    gpus = [FakeGpu(supported_events=0), FakeGpu(uuid="GPU-1")]
    col, reg, fake = collectors(gpus, xid_events=True)
    col.refresh()
    fake.emit_xid(0, 13)
    fake.emit_xid(1, 13)
    wait_for(
        lambda: (
            reg.get_sample_value(
                c.GPU_XID_ERRORS_TOTAL, {**labels_of(gpus[1], 1), c.LABEL_XID: "13"}
            )
            == 1
        )
    )
    assert fake.calls["nvmlDeviceRegisterEvents"] == 1
    assert reg.get_sample_value(c.GPU_XID_ERRORS_TOTAL, {**H100, c.LABEL_XID: "13"}) is None


def test_close_stops_the_event_thread_and_shuts_nvml_down(collectors: Any) -> None:
    col, _, fake = collectors(xid_events=True)
    col.refresh()
    thread = col._event_thread
    assert thread is not None and thread.is_alive()
    col.close()
    assert not thread.is_alive()
    assert fake.calls["nvmlShutdown"] == 1 and fake.calls["nvmlEventSetFree"] == 1


# --- failures (case C19) -----------------------------------------------------------------------


def test_a_hung_gpu_is_down_within_the_timeout_with_no_stale_values(collectors: Any) -> None:
    gpus = [FakeGpu(), FakeGpu(uuid="GPU-1", name="NVIDIA L4", util_gpu=20)]
    _, reg, fake = collectors(gpus, timeout=1.0)
    other = labels_of(gpus[1], 1)
    get = reg.get_sample_value
    for _ in range(3):  # three polls succeed at 55 %
        assert get(c.GPU_UTILIZATION_RATIO, H100) == pytest.approx(0.55)
    gpus[0].hang.add("nvmlDeviceGetUtilizationRates")
    timeout_errors = {c.LABEL_GPU: "0", c.LABEL_ERROR: "timeout"}

    t0 = time.monotonic()
    text = generate_latest(reg).decode()
    took = time.monotonic() - t0
    assert 0.95 < took < 2.5, took
    m = Metrics(text)
    assert sample(m, c.GPU_UP, H100) == 0 and sample(m, c.GPU_UP, other) == 1
    assert m.series(c.GPU_UTILIZATION_RATIO) == [other]  # GPU 0 dropped, not frozen at 0.55
    assert m.series(c.GPU_MEMORY_USED_BYTES) == [other]
    assert sample(m, c.GPU_NVML_ERRORS_TOTAL, timeout_errors) == 1

    # The read is still stuck: the next scrape does not queue behind it, it answers at once.
    t0 = time.monotonic()
    assert get(c.GPU_UP, H100) == 0
    assert time.monotonic() - t0 < 0.5  # half the timeout: it did not wait
    assert get(c.GPU_UTILIZATION_RATIO, H100) is None
    assert get(c.GPU_NVML_ERRORS_TOTAL, timeout_errors) == 4
    # 3 good polls, then the one hung call: the busy scrapes started no new read of GPU 0.
    assert fake.gpu_calls[(0, "nvmlDeviceGetUtilizationRates")] == 3 + 1
    assert fake.gpu_calls[(1, "nvmlDeviceGetUtilizationRates")] == 3 + 1 + 3

    gpus[0].hang.clear()
    fake.release()
    wait_for(lambda: get(c.GPU_UP, H100) == 1)
    assert get(c.GPU_UTILIZATION_RATIO, H100) == pytest.approx(0.55)


def test_a_lost_gpu_is_down_its_readings_dropped_and_the_error_counted(collectors: Any) -> None:
    gpu = FakeGpu()
    _, reg, _ = collectors([gpu])
    get = reg.get_sample_value
    assert get(c.GPU_TEMPERATURE_CELSIUS, H100) == 61
    gpu.errors["nvmlDeviceGetTemperature"] = GPU_IS_LOST
    assert get(c.GPU_UP, H100) == 0
    assert get(c.GPU_TEMPERATURE_CELSIUS, H100) is None
    assert get(c.GPU_UTILIZATION_RATIO, H100) is None
    lost = {c.LABEL_GPU: "0", c.LABEL_ERROR: "gpu_is_lost"}
    assert get(c.GPU_NVML_ERRORS_TOTAL, lost) == 4  # three scrapes above, and this one
    del gpu.errors["nvmlDeviceGetTemperature"]
    assert get(c.GPU_UP, H100) == 1


def test_without_a_driver_gpu_up_is_0_with_reason_no_driver_and_nothing_else(
    collectors: Any,
) -> None:
    fake = FakeNvml()
    fake.init_error = LIBRARY_NOT_FOUND
    col, reg, _ = collectors(fake=fake)
    m = Metrics(generate_latest(reg).decode())
    assert [(n, lab, v) for n, lab, v in m.samples] == [
        (c.GPU_UP, {c.LABEL_REASON: c.GPU_REASON_NO_DRIVER}, 0.0)
    ]
    assert col.absent_reason == c.GPU_REASON_NO_DRIVER
    # Not retried on every scrape (a missing library stays missing).
    generate_latest(reg)
    assert fake.calls["nvmlInit"] == 1


def test_a_driver_without_gpus_says_no_device(collectors: Any) -> None:
    _, reg, _ = collectors([])
    assert reg.get_sample_value(c.GPU_UP, {c.LABEL_REASON: c.GPU_REASON_NO_DEVICE}) == 0


def test_a_broken_driver_names_the_error_and_is_retried_every_scrape(collectors: Any) -> None:
    fake = FakeNvml()
    fake.init_error = CONSTANTS["NVML_ERROR_LIB_RM_VERSION_MISMATCH"]
    _, reg, _ = collectors(fake=fake)
    get = reg.get_sample_value
    assert get(c.GPU_UP, {c.LABEL_REASON: "lib_rm_version_mismatch"}) == 0
    assert (
        get(c.GPU_NVML_ERRORS_TOTAL, {c.LABEL_GPU: "", c.LABEL_ERROR: "lib_rm_version_mismatch"})
        == 2
    )
    fake.init_error = None
    assert get(c.GPU_UP, H100) == 1


def test_a_hung_nvml_init_is_bounded_too(collectors: Any) -> None:
    fake = FakeNvml()
    fake.init_hangs = True
    _, reg, _ = collectors(fake=fake, timeout=0.3)
    t0 = time.monotonic()
    assert reg.get_sample_value(c.GPU_UP, {c.LABEL_REASON: "timeout"}) == 0
    assert time.monotonic() - t0 < 1.0
    fake.release()
    wait_for(lambda: reg.get_sample_value(c.GPU_UP, H100) == 1)


def test_a_bad_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout: must be > 0"):
        GpuCollector(nvml=FakeNvml(), timeout=0, registry=None)


# --- the sidecar -------------------------------------------------------------------------------


def test_the_sidecar_keeps_proxying_while_a_hung_gpu_scrape_waits(tmp_path: Path) -> None:
    """The NVML wait happens off the event loop: a proxied request during a hung scrape
    is answered at once, and the scrape itself ends after the timeout with gpu_up 0."""
    gpu = FakeGpu()
    fake = FakeNvml([gpu])
    with FaultServer(tmp_path) as upstream:
        spec = load_spec(write_spec(tmp_path / "monitor.yaml", upstream.url))

        async def main() -> tuple[float, float, str, int]:
            side = Sidecar(spec, "m", registry=CollectorRegistry(), nvml=fake)
            side.gpu.timeout = 1.0
            await side.start()
            try:
                async with aiohttp.ClientSession() as http:
                    metrics_url = f"http://127.0.0.1:{side.metrics_port}/metrics"
                    gpu.hang.add("nvmlDeviceGetMemoryInfo")
                    t0 = time.monotonic()
                    scrape = asyncio.ensure_future(http.get(metrics_url))
                    await asyncio.sleep(0.2)  # the scrape is waiting on the hung read
                    t1 = time.monotonic()
                    async with http.get(f"http://127.0.0.1:{side.port}/v2/health/ready") as r:
                        status = r.status
                    proxied = time.monotonic() - t1
                    async with await scrape as resp:
                        text = await resp.text()
                    return proxied, time.monotonic() - t0, text, status
            finally:
                fake.release()
                await side.stop()

        proxied, scraped, text, status = asyncio.run(main())
    assert status == 200
    assert proxied < 0.5, proxied  # half the NVML timeout: the loop was not blocked
    assert 0.9 < scraped < 3.0, scraped
    m = Metrics(text)
    assert sample(m, c.GPU_UP, H100) == 0 and m.series(c.GPU_MEMORY_USED_BYTES) == []
    assert sample(m, c.UPSTREAM_UP, {"model": "m"}) == 1


def _has_nvml_library() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def test_a_sidecar_without_a_driver_exports_no_driver_and_keeps_serving(tmp_path: Path) -> None:
    if _has_nvml_library():
        pytest.skip("this machine has an NVIDIA driver")
    with FaultServer(tmp_path) as upstream:
        spec = write_spec(tmp_path / "monitor.yaml", upstream.url)
        with sidecar(spec) as side:
            req = urllib.request.Request(
                f"{side.url}/v2/models/m/infer",
                data=b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [7, 1]}]}',  # noqa: E501
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200
            m = side.scrape()
    assert m.series(c.GPU_UP) == [{c.LABEL_REASON: c.GPU_REASON_NO_DRIVER}]
    assert sample(m, c.GPU_UP, {}) == 0
    assert sample(m, c.REQUESTS_TOTAL, {"model": "m", "code": "200"}) == 1


def test_gpu_metrics_false_leaves_the_gpu_out_of_the_sidecar(tmp_path: Path) -> None:
    fake = FakeNvml()
    spec = load_spec(write_spec(tmp_path / "m.yaml", "http://127.0.0.1:1", gpu_metrics=False))
    side = Sidecar(spec, "m", registry=CollectorRegistry(), nvml=fake)
    assert side.gpu is None
    assert side.registry.get_sample_value(c.GPU_UP, H100) is None
    assert sum(fake.calls.values()) == 0


# --- monitor gpu-exporter as a process -------------------------------------------------------


class _Exporter(ManagedProcess):
    def __init__(self, argv: list[str], log_dir: Path) -> None:
        (self.port,) = free_ports(1)
        super().__init__(
            [*argv, "--listen", f"127.0.0.1:{self.port}"],
            ready_url=f"http://127.0.0.1:{self.port}/-/healthy",
            log_path=log_dir / "gpu-exporter.log",
            name="gpu exporter",
            ready_timeout_s=30,
        )

    def scrape(self) -> Metrics:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return Metrics(r.read().decode())


def test_the_fake_gpu_exporter_serves_two_gpus_through_the_real_command(tmp_path: Path) -> None:
    gpus = demo_gpus()
    first, second = labels_of(gpus[0], 0), labels_of(gpus[1], 1)
    with _Exporter([sys.executable, str(HERE / "fake_gpu_exporter.py")], tmp_path) as exp:
        deadline = time.monotonic() + 10
        while sample(m := exp.scrape(), c.GPU_XID_ERRORS_TOTAL, {"xid": "79"}) < 1:
            assert time.monotonic() < deadline, m.text
    assert sample(m, c.GPU_UP, first) == 1 and sample(m, c.GPU_UP, second) == 1
    assert sample(m, c.GPU_XID_ERRORS_TOTAL, {**first, "xid": "79"}) == 1
    assert sample(m, c.GPU_THROTTLE_REASON, {**first, "reason": c.THROTTLE_SW_THERMAL}) == 1
    assert sample(m, c.GPU_THROTTLE_REASON, {**second, "reason": c.THROTTLE_GPU_IDLE}) == 1
    assert sample(m, c.GPU_ECC_ERRORS_TOTAL, {**first, "error_type": c.ECC_UNCORRECTED}) == 1 + 2
    assert {lab[c.LABEL_GPU] for lab in m.series(c.GPU_NVLINK_ERRORS_TOTAL)} == {"0"}
    assert sample(m, c.GPU_MEMORY_TOTAL_BYTES, second) == 24 * 1024**3
    assert sample(m, "process_resident_memory_bytes", {}) > 0


def test_monitor_gpu_exporter_without_a_driver_serves_no_driver(tmp_path: Path) -> None:
    if _has_nvml_library():
        pytest.skip("this machine has an NVIDIA driver")
    with _Exporter([*MONITOR, "gpu-exporter"], tmp_path) as exp:
        m = exp.scrape()
    assert m.series(c.GPU_UP) == [{c.LABEL_REASON: c.GPU_REASON_NO_DRIVER}]


def test_a_client_resetting_its_connection_leaves_no_traceback_in_the_log(tmp_path: Path) -> None:
    """socketserver prints a traceback for a reset connection; the exporter logs it at
    DEBUG and goes on serving."""
    import socket
    import struct

    with _Exporter([*MONITOR, "gpu-exporter"], tmp_path) as exp:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", exp.port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")  # half a request head
            time.sleep(0.1)
            # SO_LINGER 0: close() sends RST, not FIN; the server's read fails with
            # ECONNRESET
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        m = exp.scrape()  # still serving
        assert m.series(c.GPU_UP)
        time.sleep(0.2)
        log = exp.log_path.read_text()
    assert "Traceback" not in log and "ConnectionResetError" not in log, log


def test_gpu_exporter_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from monitor.cli import main

    result = CliRunner().invoke(main, ["gpu-exporter", "--listen", "nonsense"])
    assert result.exit_code != 0
    assert "nonsense" in result.output


# --- a real GPU ------------------------------------------------------------------------------


@pytest.mark.gpu
def test_the_real_collector_reads_sane_values_from_a_real_gpu() -> None:
    pynvml = pytest.importorskip("pynvml")
    if not _has_nvml_library():
        pytest.skip("no NVIDIA driver (libnvidia-ml.so.1) on this machine")
    reg = CollectorRegistry()
    col = GpuCollector(registry=reg, timeout=5.0)
    try:
        m = Metrics(generate_latest(reg).decode())
        ups = m.series(c.GPU_UP)
        assert ups and all(c.LABEL_REASON not in lab for lab in ups), ups
        assert len(ups) == pynvml.nvmlDeviceGetCount()
        for lab in ups:
            assert sample(m, c.GPU_UP, lab) == 1, lab
            assert lab[c.LABEL_UUID].startswith(("GPU-", "MIG-")), lab
            util = sample(m, c.GPU_UTILIZATION_RATIO, lab)
            assert 0 <= util <= 1
            used = sample(m, c.GPU_MEMORY_USED_BYTES, lab)
            total = sample(m, c.GPU_MEMORY_TOTAL_BYTES, lab)
            assert 0 <= used <= total < 2**45  # under 32 TiB
            assert 0 < sample(m, c.GPU_TEMPERATURE_CELSIUS, lab) < 120
            if m.series(c.GPU_POWER_WATTS):
                assert 0 < sample(m, c.GPU_POWER_WATTS, lab) < 2000
            assert 1e8 < sample(m, c.GPU_SM_CLOCK_HERTZ, lab) < 5e9
            assert 1e8 < sample(m, c.GPU_MEMORY_CLOCK_HERTZ, lab) < 2e10
        for name, _lab, value in m.samples:
            if name.startswith("mlmon_gpu_"):
                assert 0 <= value < 2**63 - 16, (name, value)  # no "blank" sentinels
        # A second scrape in a row reads again, within the timeout.
        t0 = time.monotonic()
        generate_latest(reg)
        assert time.monotonic() - t0 < 5.0
    finally:
        col.close()


def test_no_thread_is_left_hanging_after_release(collectors: Any) -> None:
    gpu = FakeGpu(hang={"nvmlDeviceGetName"})
    _, reg, fake = collectors([gpu], timeout=0.2)
    assert (
        reg.get_sample_value(
            c.GPU_UP, {c.LABEL_GPU: "0", c.LABEL_UUID: gpu.uuid, c.LABEL_GPU_NAME: ""}
        )
        == 0
    )
    fake.release()
    wait_for(lambda: not any(t.name == "nvml-0" and t.is_alive() for t in threading.enumerate()))
    assert reg.get_sample_value(c.GPU_UP, H100) == 1


def test_the_exporter_listens_on_ipv6_loopback() -> None:
    """``--listen [::1]:PORT`` as the sidecar takes it (found by a new user's trial)."""
    import socket

    from monitor.gpu.exporter import GpuExporter

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    fake = FakeNvml([])
    fake.init_error = 12  # NVML_ERROR_LIBRARY_NOT_FOUND: no driver
    exporter = GpuExporter(("::1", 0), nvml=fake)
    exporter.start()
    try:
        with urllib.request.urlopen(f"http://[::1]:{exporter.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        exporter.stop()
    assert f'{c.GPU_UP}{{reason="{c.GPU_REASON_NO_DRIVER}"}} 0.0' in text
