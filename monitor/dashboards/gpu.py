"""GPU health: what ``monitor gpu-exporter`` reads from NVML, per node (``$instance``) and
GPU (``$gpu``): utilization, memory, temperature, power, throttling, ECC and XID errors."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard, timeseries

from monitor import conventions as c
from monitor.dashboards.panels import (
    above,
    datasource_variable,
    legend,
    query,
    query_variable,
    row,
    runbooks,
    timeseries_panel,
)
from monitor.dashboards.queries import Matcher, sel, var
from monitor.spec import MonitorSpec

__all__ = ["TITLE", "gpu"]

TITLE = "GPU health"
"""Dashboard title after ``<service> / ``."""

_I, _G = c.LABEL_INSTANCE, c.LABEL_GPU
_LEGEND = f"{legend(_I)} GPU {legend(_G)}"


def _scope(**extra: str | Matcher) -> dict[str, str | Matcher]:
    return {_I: var("instance"), _G: var("gpu"), **extra}


def instance_variable(spec: MonitorSpec) -> dashboard.QueryVariable:
    """``$instance``: the GPU exporter targets."""
    up = sel(c.GPU_UP, {c.LABEL_JOB: spec.alerting.gpu_job})
    return query_variable("instance", "Node", f"label_values({up}, {_I})")


def gpu_variable() -> dashboard.QueryVariable:
    """``$gpu``: the GPU indexes of the selected nodes."""
    up = sel(c.GPU_UP, {_I: var("instance")})
    return query_variable("gpu", "GPU", f"label_values({up}, {_G})")


def health(spec: MonitorSpec) -> timeseries.Panel:
    """NVML answering per GPU, and the exporter scrape."""
    scraped = sel(c.UP, {c.LABEL_JOB: spec.alerting.gpu_job, _I: var("instance")})
    return (
        timeseries_panel(
            "GPU answering and exporter scraped",
            f"`{c.GPU_UP}`: 1 when the last NVML read of the GPU succeeded, 0 on a timeout or "
            "error (then the GPU's other series are absent). A node without a driver or GPU "
            f"reports 0 with a `reason` ({', '.join(c.GPU_ABSENT_REASONS)}) and no `gpu`: not "
            f"a failure (case C19). `{c.UP}`: Prometheus scraped the exporter (job "
            f"`{spec.alerting.gpu_job}`).",
            "bool_yes_no",
            query(f"min by ({_I}, {_G}, {c.LABEL_REASON}) ({sel(c.GPU_UP, _scope())})", _LEGEND),
            query(
                f"min by ({_I}) ({scraped})",
                f"exporter {legend(_I)}",
            ),
            books=runbooks(spec, c.ALERT_GPU_DOWN, c.ALERT_GPU_EXPORTER_DOWN),
            width=8,
        )
        .min(0)
        .max(1)
    )


def utilization() -> timeseries.Panel:
    """Compute and memory-controller utilization."""
    return (
        timeseries_panel(
            "Utilization",
            f"Share of time a kernel ran on the GPU (`{c.GPU_UTILIZATION_RATIO}`) and the memory "
            f"controller was busy (`{c.GPU_MEMORY_UTILIZATION_RATIO}`), over NVML's last sample "
            "period.",
            "percentunit",
            query(
                f"max by ({_I}, {_G}) ({sel(c.GPU_UTILIZATION_RATIO, _scope())})",
                f"{_LEGEND} compute",
            ),
            query(
                f"max by ({_I}, {_G}) ({sel(c.GPU_MEMORY_UTILIZATION_RATIO, _scope())})",
                f"{_LEGEND} memory",
            ),
            width=8,
        )
        .min(0)
        .max(1)
    )


def memory(spec: MonitorSpec) -> timeseries.Panel:
    """Memory used over total."""
    t = spec.alerting.gpu_memory_max_ratio
    return (
        timeseries_panel(
            "Memory used",
            f"GPU memory used over total (`{c.GPU_MEMORY_USED_BYTES}` / "
            f"`{c.GPU_MEMORY_TOTAL_BYTES}`). Above `alerting.gpu_memory_max_ratio` ({t:.0%}) "
            "larger batches or a second model fail to allocate.",
            "percentunit",
            query(
                f"max by ({_I}, {_G}) ({sel(c.GPU_MEMORY_USED_BYTES, _scope())})\n/\n"
                f"(max by ({_I}, {_G}) ({sel(c.GPU_MEMORY_TOTAL_BYTES, _scope())}) > 0)",
                _LEGEND,
            ),
            books=runbooks(spec, c.ALERT_GPU_MEMORY_NEAR_FULL),
            width=8,
        )
        .min(0)
        .max(1)
        .thresholds(above(t))
    )


def temperature() -> timeseries.Panel:
    """GPU temperature."""
    return timeseries_panel(
        "Temperature",
        f"GPU core temperature (`{c.GPU_TEMPERATURE_CELSIUS}`). Thermal throttling starts "
        "near the product's slowdown temperature (see *Throttle reasons*).",
        "celsius",
        query(f"max by ({_I}, {_G}) ({sel(c.GPU_TEMPERATURE_CELSIUS, _scope())})", _LEGEND),
        width=8,
    )


def power() -> timeseries.Panel:
    """Power draw and limit."""
    return timeseries_panel(
        "Power",
        f"Power draw (`{c.GPU_POWER_WATTS}`) and the enforced limit "
        f"(`{c.GPU_POWER_LIMIT_WATTS}`); a draw pinned at the limit comes with the "
        f"`{c.THROTTLE_SW_POWER_CAP}` throttle reason.",
        "watt",
        query(f"max by ({_I}, {_G}) ({sel(c.GPU_POWER_WATTS, _scope())})", f"{_LEGEND} draw"),
        query(
            f"max by ({_I}, {_G}) ({sel(c.GPU_POWER_LIMIT_WATTS, _scope())})", f"{_LEGEND} limit"
        ),
        width=8,
    )


def throttling(spec: MonitorSpec) -> timeseries.Panel:
    """Active throttle (clock event) reasons."""
    return timeseries_panel(
        "Throttle reasons",
        f"Clock-event reasons active now (`{c.GPU_THROTTLE_REASON}` = 1), one line per GPU "
        "and reason; only active ones are drawn. "
        + ", ".join(f"`{r}`" for r in c.THROTTLE_THERMAL_POWER)
        + " cost throughput (heat or power) and alert; idle, sync boost and application "
        "clocks do not.",
        "short",
        query(
            f"max by ({_I}, {_G}, {c.LABEL_REASON}) ({sel(c.GPU_THROTTLE_REASON, _scope())}) > 0",
            f"{_LEGEND} {legend(c.LABEL_REASON)}",
        ),
        books=runbooks(spec, c.ALERT_GPU_THROTTLING),
        width=8,
    )


def ecc_errors(spec: MonitorSpec) -> timeseries.Panel:
    """ECC error counts by type and scope."""
    return timeseries_panel(
        "ECC errors",
        f"ECC memory error counts (`{c.GPU_ECC_ERRORS_TOTAL}`) by type (`{c.ECC_CORRECTED}`, "
        f"`{c.ECC_UNCORRECTED}`) and scope (`{c.ECC_VOLATILE}` since the driver loaded, "
        f"`{c.ECC_AGGREGATE}` over the GPU's life, which survives reboots). A step up of "
        "an uncorrected count is corrupted memory.",
        "short",
        query(
            f"max by ({_I}, {_G}, {c.LABEL_ERROR_TYPE}, {c.LABEL_SCOPE}) "
            f"({sel(c.GPU_ECC_ERRORS_TOTAL, _scope())})",
            f"{_LEGEND} {legend(c.LABEL_ERROR_TYPE, c.LABEL_SCOPE)}",
        ),
        books=runbooks(spec, c.ALERT_GPU_UNCORRECTABLE_ECC),
        width=12,
    )


def xid_errors(spec: MonitorSpec) -> timeseries.Panel:
    """XID events by code, since the exporter started."""
    return timeseries_panel(
        "XID errors",
        f"NVML XID events since the exporter started (`{c.GPU_XID_ERRORS_TOTAL}`), one line "
        "per GPU and XID code: driver-reported GPU faults (e.g. 13 graphics engine "
        "exception, 48 double-bit ECC, 79 fallen off the bus). A new XID appears as a new "
        "line, a repeat as a step up.",
        "short",
        query(
            f"max by ({_I}, {_G}, {c.LABEL_XID}) ({sel(c.GPU_XID_ERRORS_TOTAL, _scope())})",
            f"{_LEGEND} XID {legend(c.LABEL_XID)}",
        ),
        books=runbooks(spec, c.ALERT_GPU_XID_ERRORS),
        width=12,
    )


def gpu(spec: MonitorSpec) -> dashboard.Dashboard:
    """The GPU health dashboard of ``spec``."""
    return (
        dashboard.Dashboard(f"{spec.service} / {TITLE}")
        .description("NVML health of the GPUs the models run on, from monitor gpu-exporter.")
        .with_variable(datasource_variable())
        .with_variable(instance_variable(spec))
        .with_variable(gpu_variable())
        .with_row(row("Load"))
        .with_panel(health(spec))
        .with_panel(utilization())
        .with_panel(memory(spec))
        .with_panel(temperature())
        .with_panel(power())
        .with_panel(throttling(spec))
        .with_row(row("Errors"))
        .with_panel(ecc_errors(spec))
        .with_panel(xid_errors(spec))
    )
