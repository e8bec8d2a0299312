"""GPU health from NVML (issue 7). See docs/gpu.md and docs/metrics.md, GPU section.

Imported lazily: ``monitor.cli`` imports :mod:`monitor.gpu.cli` at start-up, and
prometheus_client must not be imported before ``monitor sidecar`` drops
``PROMETHEUS_MULTIPROC_DIR`` (case C11).
"""

from __future__ import annotations

from typing import Any

__all__ = ["GpuCollector", "GpuExporter", "NvmlTimeoutError"]


def __getattr__(name: str) -> Any:
    if name in ("GpuCollector", "NvmlTimeoutError"):
        from monitor.gpu import nvml

        return getattr(nvml, name)
    if name == "GpuExporter":
        from monitor.gpu.exporter import GpuExporter

        return GpuExporter
    raise AttributeError(f"module 'monitor.gpu' has no attribute {name!r}")
