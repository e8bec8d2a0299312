"""``monitor gpu-exporter``: one process per GPU node exporting :class:`GpuCollector`.

Endpoints (:class:`monitor.metrics_http.MetricsServer`):

* ``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics when the scraper asks
  for it; the GPUs are read during the scrape, bounded by ``timeout`` (case C19);
* ``GET /-/healthy``: 200 while the process serves (not a statement about the GPUs:
  ``mlmon_gpu_up`` is).

The sidecar carries the same collector (``models[].gpu_metrics``); run this instead
where one exporter per node is wanted (a DaemonSet), and turn the sidecar's off.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from monitor import conventions as c
from monitor.errors import MonitorError
from monitor.gpu.nvml import GpuCollector
from monitor.metrics_http import MetricsServer

__all__ = ["GpuExporter"]


class GpuExporter:
    """An HTTP server exporting this node's GPUs.

    Args:
        listen: ``(host, port)``; port 0 picks a free one (see :attr:`port`).
        nvml: the ``pynvml`` module (default: imported on first use).
        timeout: seconds one scrape waits for NVML (all GPUs together).
        registry: metrics registry (default: a new one with process metrics).

    Raises:
        MonitorError: the address cannot be bound (the message names it).
    """

    def __init__(
        self,
        listen: tuple[str, int],
        *,
        nvml: Any = None,
        timeout: float = c.DEFAULT_NVML_TIMEOUT_SECONDS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry = registry
        self.collector = GpuCollector(nvml=nvml, timeout=timeout, registry=registry)
        try:
            self.http = MetricsServer(listen, registry)
        except MonitorError:
            self.collector.close()
            raise
        self.port = self.http.port

    def start(self) -> None:
        """Read the GPUs once (so NVML init is off the first scrape), then serve on a thread."""
        self.collector.refresh()
        self.http.start()

    def stop(self) -> None:
        """Stop serving, stop the XID thread and shut NVML down."""
        self.http.stop()
        self.collector.close()
