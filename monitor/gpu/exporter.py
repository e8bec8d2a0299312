"""``monitor gpu-exporter``: one process per GPU node exporting :class:`GpuCollector`.

Endpoints (plain ``http.server``, one thread per request):

* ``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics when the scraper asks
  for it; the GPUs are read during the scrape, bounded by ``timeout`` (case C19);
* ``GET /-/healthy``: 200 while the process serves (not a statement about the GPUs:
  ``mlmon_gpu_up`` is).

The sidecar carries the same collector (``models[].gpu_metrics``); run this instead
where one exporter per node is wanted (a DaemonSet), and turn the sidecar's off.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from monitor import conventions as c
from monitor.errors import MonitorError
from monitor.gpu.nvml import GpuCollector

__all__ = ["GpuExporter"]

log = logging.getLogger("monitor.gpu")


class _HTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


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
        handler = type("_Handler", (_Handler,), {"registry": registry})
        # ThreadingHTTPServer is IPv4 unless told otherwise: "[::1]:9835" needs AF_INET6.
        server_class = _HTTPServer6 if ":" in listen[0] else ThreadingHTTPServer
        try:
            self.server = server_class(listen, handler)
        except OSError as exc:
            self.collector.close()
            raise MonitorError(f"--listen {listen[0]}:{listen[1]}: {exc.strerror or exc}") from None
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Read the GPUs once (so NVML init is off the first scrape), then serve on a thread."""
        self.collector.refresh()
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="gpu-exporter-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, stop the XID thread and shut NVML down."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()
        self.collector.close()


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, ctype, encoder(self.registry))
        elif path == "/-/healthy":
            self._send(200, "application/json", b'{"status": "healthy"}')
        elif path == "/":
            self._send(200, "text/html", b'<a href="/metrics">metrics</a>\n')
        else:
            self._send(404, "text/plain", b"not found; try /metrics\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)
