"""A small HTTP server for a process whose only endpoint is ``/metrics``: the GPU
exporter, the drift job and the canary runner.

Endpoints (plain ``http.server``, one thread per request):

* ``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics when the scraper asks
  for it (prometheus-client's encoders);
* ``GET /-/healthy``: 200 while the process serves (a liveness probe; says nothing
  about what the metrics report).

Unlike ``prometheus_client.start_http_server``, a client that resets its connection
(a scraper timing out, a port probe) is logged at DEBUG instead of a traceback on
standard error, and ``[::1]:PORT`` listens on IPv6.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from monitor.errors import MonitorError

__all__ = ["MetricsServer"]

log = logging.getLogger("monitor.http")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to standard error
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("client %s went away: %s", client_address, exc)
        else:
            log.error("error serving %s", client_address, exc_info=exc)


class _Server6(_Server):
    address_family = socket.AF_INET6


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


class MetricsServer:
    """Serve ``registry`` on ``listen`` from a background thread.

    Args:
        listen: ``(host, port)``; a host with ``:`` is IPv6; port 0 picks a free one
            (see :attr:`port`).
        registry: what ``/metrics`` exposes.
        what: the option or setting that named the address, for the error message
            (e.g. ``"--listen"``).

    Raises:
        MonitorError: the address cannot be bound ("--listen 0.0.0.0:9400: Address
            already in use").
    """

    def __init__(
        self, listen: tuple[str, int], registry: CollectorRegistry, *, what: str = "--listen"
    ) -> None:
        handler = type("_Handler", (_Handler,), {"registry": registry})
        server_class = _Server6 if ":" in listen[0] else _Server
        try:
            self.server = server_class(listen, handler)
        except OSError as exc:
            raise MonitorError(f"{what} {listen[0]}:{listen[1]}: {exc.strerror or exc}") from None
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve on a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="metrics-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (waits up to 5 s for the thread)."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(5)
        self.server.server_close()
