"""Wiring of the sidecar: proxy + instrumentation + metrics endpoint + probes.

``monitor sidecar`` calls :func:`run_sidecar`; tests use :class:`Sidecar`
directly (with a fresh ``CollectorRegistry``) or run the CLI as a process.

Endpoints on the metrics port:

* ``GET /metrics``: Prometheus text format 0.0.4, or OpenMetrics 1.0 when the
  scraper's ``Accept`` asks for it (then with trace-id exemplars on
  ``mlmon_request_duration_seconds``);
* ``GET /-/healthy``: 200 while the process serves;
* ``GET /-/ready``: 200 when the upstream answered its last readiness probe, else 503
  (and 503 ``{"status": "quarantined"}`` while the control API quarantines the replica);
* ``GET``/``PUT /v1/control``: the control API (:mod:`monitor.sidecar.control`), when
  the model has a ``control`` section; else 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.abc
import logging
import os
import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from monitor import conventions as c
from monitor.errors import MonitorError, PayloadError
from monitor.payload import Predictions, Rows
from monitor.protocols import Adapter, make_adapter
from monitor.sidecar import control as ctl
from monitor.sidecar.metrics import SidecarMetrics
from monitor.sidecar.proxy import Exchange, ProxyServer
from monitor.spec import ModelSpec, MonitorSpec
from monitor.tracing import RequestTrace, RequestTracer

__all__ = ["Instrumentation", "Sidecar", "run_sidecar"]

log = logging.getLogger("monitor.sidecar")

_ERROR_OUTCOMES = frozenset(c.ERROR_OUTCOMES)


_BINARY_TYPES = (b"application/octet-stream", b"multipart/", b"image/", b"audio/", b"video/")


def _is_json(ctype: bytes | None) -> bool:
    """Whether a body may be JSON. Model servers parse the body as JSON whatever
    the header says (``curl -d`` sends a form type), so only clearly non-JSON
    types (binary tensors, multipart, media, CSV) are skipped."""
    if ctype is None:
        return True
    low = ctype.lower()
    return not (low.startswith(_BINARY_TYPES) or b"csv" in low)


class Instrumentation:
    """The proxy's :class:`~monitor.sidecar.proxy.Observer`: metrics, coverage, capture, spans.

    Every method swallows its own failures (fail open): a payload the adapters
    cannot read is counted in ``mlmon_payload_errors_total`` and the request is
    proxied as if the sidecar were not there.
    """

    def __init__(
        self,
        model: ModelSpec,
        adapter: Adapter,
        metrics: SidecarMetrics,
        *,
        tracer: RequestTracer | None = None,
        capture: Any = None,
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.metrics = metrics
        self.tracer = tracer
        self.capture = capture
        self._inflight = metrics.inflight
        self._csv_ok = model.protocol == "mlflow"
        self.learn_version = model.version is None
        """Take the version from responses (V2 ``model_version``): only while neither
        the spec nor the upstream's metadata names one (the probe clears it)."""

    def request_started(self, ex: Exchange) -> None:
        m = self.adapter.match(ex.method, ex.path)
        ex.route = m.template
        ex.model_label = m.model
        ex.inference = m.inference
        self._inflight.inc()
        tracer = self.tracer
        if tracer is not None:
            trace = tracer.start(
                ex.method.decode("latin-1"),
                m.template,
                ex.path,
                m.model,
                ex.header(b"traceparent"),
                ex.header(b"tracestate"),
            )
            ex.span = trace
            ex.trace_header = trace.header

    def request_complete(self, ex: Exchange) -> None:
        if not ex.inference:
            return
        metrics = self.metrics
        if ex.truncated:
            metrics.inspection_skipped.labels(metrics.name, c.SKIP_TOO_LARGE).inc()
            return
        enc = ex.noted.get(b"content-encoding")
        if ex.req_te is not None or (enc is not None and enc.strip().lower() != b"identity"):
            # compressed (Triton accepts gzip/deflate requests): forwarded as it came,
            # not parsed, and not a payload error
            metrics.inspection_skipped.labels(metrics.name, c.SKIP_CONTENT_ENCODING).inc()
            return
        ctype = ex.content_type
        if not _is_json(ctype) and not (self._csv_ok and ctype is not None and b"csv" in ctype):
            metrics.inspection_skipped.labels(metrics.name, c.SKIP_CONTENT_TYPE).inc()
            return
        body = ex.body_parts[0] if len(ex.body_parts) == 1 else b"".join(ex.body_parts)
        try:
            rows = self.adapter.parse_request(body, ctype.decode("latin-1") if ctype else None)
        except PayloadError as exc:
            metrics.payload_errors.labels(metrics.name, self.model.protocol, exc.reason).inc()
            return
        except Exception:
            log.exception("request adapter failed; counted as invalid_shape")
            metrics.payload_errors.labels(
                metrics.name, self.model.protocol, c.PAYLOAD_INVALID_SHAPE
            ).inc()
            return
        ex.ctx = rows
        try:
            metrics.observe_rows(rows)
        except Exception:
            log.exception("feature coverage failed")

    def response_started(self, ex: Exchange) -> None:
        if not ex.inference or not 200 <= ex.status < 300:
            return
        ctype = ex.resp_content_type
        if ctype is not None and ctype.startswith(b"text/event-stream"):
            ex.stream = self.adapter.stream_inspector()
        elif _is_json(ctype):
            ex.resp_collect = True

    def request_finished(self, ex: Exchange) -> None:
        metrics = self.metrics
        preds = None
        if ex.inference:
            preds = self._predictions(ex)
            # The spec pins no version and the upstream's metadata named none
            # (MLServer answers "versions": []): the response says which one
            # served. Learnt before counting, so this request carries it too.
            if (
                preds is not None
                and preds.version
                and self.learn_version
                and preds.version != metrics.version
            ):
                metrics.set_version(preds.version)
        trace = ex.span
        metrics.observe_request(
            ex.model_label,
            ex.route,
            ex.status,
            ex.outcome,
            ex.t_end - ex.t_start,
            trace if trace is not None and trace.sampled else None,
            ex.t_end,
        )
        self._inflight.dec()
        if ex.streamed and ex.t_head:
            # First response frame, not the head (linkerd2#818, case C16).
            metrics.observe_ttfb(ex.model_label, ex.route, (ex.t_first or ex.t_head) - ex.t_start)
        if ex.body_size or ex.content_length:
            metrics.request_size.observe(ex.body_size or ex.content_length or 0)
        if ex.local:  # answered by the sidecar itself, not forwarded
            if ex.status == 413:
                metrics.rejected.labels(metrics.name, c.REJECT_TOO_LARGE).inc()
            elif ex.status == 503:  # load shed (the concurrency limit)
                metrics.shed.inc()
        if ex.inference:
            metrics.response_size.observe(ex.resp_size)
            if preds is not None:
                try:
                    metrics.observe_predictions(preds)
                except Exception:
                    log.exception("prediction metrics failed")
            rows = ex.ctx
            if self.capture is not None and isinstance(rows, Rows) and rows.n:
                self.capture.submit(rows, preds, self._request_id(ex, rows, trace))
        if trace is not None:
            trace.end(ex.status, ex.outcome in _ERROR_OUTCOMES)

    def _predictions(self, ex: Exchange) -> Predictions | None:
        stream = ex.stream
        if stream is not None:
            if stream.first_token_at is not None and self.model.protocol == "openai":
                self.metrics.ttft.observe(stream.first_token_at - ex.t_start)
            return Predictions(usage=dict(stream.usage)) if stream.usage else None
        if not ex.resp_collect or not ex.resp_parts or ex.outcome != c.OUTCOME_OK:
            return None
        body = ex.resp_parts[0] if len(ex.resp_parts) == 1 else b"".join(ex.resp_parts)
        ctype = ex.resp_content_type
        try:
            return self.adapter.parse_response(body, ctype.decode("latin-1") if ctype else None)
        except PayloadError:
            return None
        except Exception:
            log.exception("response adapter failed")
            return None

    @staticmethod
    def _request_id(ex: Exchange, rows: Rows, trace: RequestTrace | None) -> str:
        """``X-Request-Id`` header, else the payload's own id, else the trace id."""
        rid = ex.header(b"x-request-id")
        if rid:
            return rid[:128].decode("latin-1")
        if rows.request_id:
            return rows.request_id
        if trace is not None:
            return trace.trace_id_hex
        return os.urandom(16).hex()


class Sidecar:
    """One running sidecar: proxy port, metrics port, readiness probe, capture writer.

    Args:
        spec: the whole spec (tracing settings come from it).
        model_name: which model of the spec this sidecar fronts.
        listen, metrics_listen: ``(host, port)``; port 0 picks a free one.
        registry: metrics registry (default: a new one with process metrics).
        nvml: the ``pynvml`` module for the GPU collector (default: imported when the
            model's ``gpu_metrics`` is on; tests pass ``tests/fake_pynvml.py``'s fake).

    Raises:
        SpecError: unknown model name, or a tracing exporter that is missing.
        MonitorError: the control API is configured but its token cannot be read.
    """

    def __init__(
        self,
        spec: MonitorSpec,
        model_name: str,
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        metrics_listen: tuple[str, int] = ("127.0.0.1", 0),
        registry: CollectorRegistry | None = None,
        nvml: Any = None,
    ) -> None:
        self.spec = spec
        self.model = spec.model(model_name)
        self.listen = listen
        self.metrics_listen = metrics_listen
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
        self.registry = registry
        self.metrics = SidecarMetrics(self.model, registry)
        self.gpu: Any = None
        """The node's GPU health (:class:`monitor.gpu.GpuCollector`), read on each scrape
        from a worker thread, so a hung driver never blocks the proxy (case C19)."""
        if self.model.gpu_metrics:
            from monitor.gpu.nvml import GpuCollector

            self.gpu = GpuCollector(nvml=nvml, registry=registry, refresh_on_collect=False)
        self.control: ctl.ControlPlane | None = None
        if self.model.control is not None:
            where = f"models[{spec.models.index(self.model)}].control"
            self.control = ctl.ControlPlane(self.model, self.metrics, where)
        self.adapter = make_adapter(self.model)
        self.tracer = (
            RequestTracer(spec.tracing, f"monitor-sidecar-{self.model.name}")
            if spec.tracing.enabled
            else None
        )
        self.capture: Any = None
        if self.model.capture is not None:
            from monitor.capture import CaptureWriter

            self.capture = CaptureWriter(self.model, registry=registry)
        self.instrumentation = Instrumentation(
            self.model,
            self.adapter,
            self.metrics,
            tracer=self.tracer,
            capture=self.capture,
        )
        self._fingerprint_task: asyncio.Task[None] | None = None
        self._fingerprint_again = False
        self._fingerprint_signature: Any = None
        self._fingerprint_stop = threading.Event()
        if self.model.weights_path is not None:
            self.metrics.on_version_change = self._version_changed
        self.proxy: ProxyServer | None = None
        self._runner: web.AppRunner | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.ready: bool | None = None  # None until the first probe
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Bind both ports, probe the upstream once, and start background work."""
        m = self.model
        fallback = None
        if m.fallback_upstream is not None:
            parts = urlsplit(m.fallback_upstream)
            fallback = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.proxy = ProxyServer(
            m.upstream_host,
            m.upstream_port,
            self.instrumentation,
            connect_timeout=m.timeouts.connect_seconds,
            read_timeout=m.timeouts.read_seconds,
            inspect_max_bytes=m.inspect_max_bytes,
            max_request_bytes=m.max_request_bytes,
            client_idle_timeout=m.timeouts.client_idle_seconds,
            client_header_timeout=m.timeouts.client_header_seconds,
            fallback=fallback,
        )
        if self.control is not None:
            self.control.attach(self.proxy)
        if self.capture is not None:
            self.capture.start()
        try:
            await self.proxy.listen(*self.listen)
        except OSError as exc:
            raise MonitorError(
                f"--listen {self.listen[0]}:{self.listen[1]}: {exc.strerror or exc}"
            ) from None
        self.port = self.proxy.port
        app = web.Application()
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/-/healthy", self._handle_healthy)
        app.router.add_get("/-/ready", self._handle_ready)
        app.router.add_route("*", "/v1/control", self._handle_control)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, *self.metrics_listen, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.proxy.close()
            raise MonitorError(
                f"--metrics-listen {self.metrics_listen[0]}:{self.metrics_listen[1]}: "
                f"{exc.strerror or exc}"
            ) from None
        self.metrics_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        timeout = aiohttp.ClientTimeout(
            total=min(m.probe_interval_seconds, m.timeouts.connect_seconds + 2)
        )
        # A probe every few seconds needs no pooled connection to the model server.
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
        )
        if self.gpu is not None:  # NVML init (or "no driver") before the first scrape
            await asyncio.get_running_loop().run_in_executor(None, self.gpu.refresh)
        if m.weights_path is not None:  # hashed in the background, off the start-up path
            self._refresh_fingerprint()
        await self.probe()
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (``grace_seconds``), flush capture."""
        if self._fingerprint_task is not None:
            self._fingerprint_stop.set()  # the worker thread ends its hash within 1 MiB
            self._fingerprint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fingerprint_task
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        if self.proxy is not None:
            if self.proxy.server is not None:
                self.proxy.server.close()
            deadline = asyncio.get_running_loop().time() + grace_seconds
            while any(d.current is not None for d in self.proxy.connections):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            await self.proxy.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.capture is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.capture.close)
        if self.tracer is not None:
            self.tracer.shutdown()
        if self.gpu is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.gpu.close)

    async def probe(self) -> bool:
        """Probe the upstream's readiness (and version); update ``mlmon_upstream_up``."""
        m = self.model
        assert self._session is not None
        path = m.health_path or self.adapter.health_path
        up = False
        try:
            async with self._session.get(m.upstream + (path or "/")) as resp:
                await resp.read()
                up = resp.status < 300 if path else True
        except (aiohttp.ClientError, TimeoutError, OSError):
            up = False
        if up != self.ready:
            log.log(
                logging.INFO if up else logging.WARNING,
                "upstream %s is %s",
                m.upstream,
                "ready" if up else "not ready (clients still get its answers, or 502/504)",
            )
        self.ready = up
        self.metrics.upstream_up.set(1 if up else 0)
        if up and m.version is None and self.adapter.metadata_path:
            try:
                async with self._session.get(m.upstream + self.adapter.metadata_path) as resp:
                    body = await resp.read()
                    version = self.adapter.parse_version(body) if resp.status == 200 else None
                if version:
                    self.metrics.set_version(version)
                self.instrumentation.learn_version = not version
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
        return up

    def _version_changed(self, version: str) -> None:
        """The served version changed, so the weights may have too (called on the loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a test driving SidecarMetrics without a loop
            return
        self._refresh_fingerprint()

    def _refresh_fingerprint(self) -> None:
        """Re-hash ``weights_path`` on a worker thread unless a check is running already
        (it then checks again when done)."""
        task = self._fingerprint_task
        if task is not None and not task.done():
            self._fingerprint_again = True
            return
        self._fingerprint_task = asyncio.get_running_loop().create_task(self._fingerprint())

    async def _fingerprint(self) -> None:
        """Export the sha256 of ``weights_path`` as the fingerprint.

        The files' size, mtime and inode are read first: when they did not change since the
        last hash, the hash stands (a version change need not re-read 100 GB of weights).
        While a new hash is computed the fingerprint is empty (unknown).
        """
        from monitor.sidecar.fingerprint import weights_fingerprint, weights_signature

        path = self.model.weights_path
        assert path is not None
        where = f"models[{self.spec.models.index(self.model)}].weights_path"
        loop = asyncio.get_running_loop()
        again = True
        while again:
            self._fingerprint_again = False
            t0 = time.monotonic()
            try:
                signature = await loop.run_in_executor(None, weights_signature, path)
                if signature != self._fingerprint_signature:
                    self.metrics.set_fingerprint("")
                    digest = await loop.run_in_executor(
                        None, weights_fingerprint, path, self._fingerprint_stop
                    )
                    self._fingerprint_signature = signature
                    self.metrics.set_fingerprint(digest)
                    log.info(
                        "weights %s: sha256 %s (%.2fs; version %s)",
                        path,
                        digest,
                        time.monotonic() - t0,
                        self.metrics.version,
                    )
            except OSError as exc:
                self._fingerprint_signature = None
                self.metrics.set_fingerprint("")
                log.error(
                    "%s: cannot hash %s (%s); %s has an empty fingerprint",
                    where,
                    path,
                    exc.strerror or exc,
                    c.MODEL_INFO,
                )
            again = self._fingerprint_again

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.model.probe_interval_seconds)
            try:
                await self.probe()
            except Exception:
                log.exception("readiness probe failed")

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        if self.gpu is not None:
            # NVML reads block (up to the collector's timeout on a hung driver): off the
            # event loop. The encoding below stays on it, with the proxy's counters.
            await asyncio.get_running_loop().run_in_executor(None, self.gpu.refresh)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def _handle_healthy(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    async def _handle_control(self, request: web.Request) -> web.Response:
        control = self.control
        if control is None:
            return ctl.disabled(self.model.name)
        if request.method == "PUT":
            return await control.handle_put(request)
        if request.method == "GET":
            return await control.handle_get(request)
        return ctl.method_not_allowed(request.method)

    async def _handle_ready(self, request: web.Request) -> web.Response:
        control = self.control
        if control is not None and control.quarantined:
            # Out of the Service, while requests that still arrive are served.
            return web.json_response({"status": "quarantined"}, status=503)
        if self.ready:
            return web.json_response({"status": "ready"})
        return web.json_response(
            {"status": "upstream not ready", "upstream": self.model.upstream}, status=503
        )


class _NoPandas(importlib.abc.MetaPathFinder):
    """Refuses ``import pandas`` in the sidecar process.

    pyarrow imports pandas, when installed, on its first ``pa.array`` call (its
    pandas shim checks every input), which costs the sidecar about 50 MB of RSS
    for nothing: the capture store builds Arrow arrays from plain lists. The
    shim treats an ImportError as "no pandas" and works without it.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is not loaded in the sidecar process (saves ~50 MB)")


def run_sidecar(
    spec: MonitorSpec, model_name: str, listen: tuple[str, int], metrics_listen: tuple[str, int]
) -> None:
    """Run a sidecar until SIGTERM/SIGINT, then shut down gracefully.

    Uses uvloop when installed. The sidecar is one process: the CLI drops
    ``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported, so no
    per-worker gauge files can outlive their worker (case C11).
    """
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run

    async def main() -> None:
        # Handlers first: /-/healthy answers during start() (the first probe and the
        # GPU read still await), and a SIGTERM then must shut down gracefully
        # (flushing spans and capture), not kill the process.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        sidecar = Sidecar(spec, model_name, listen=listen, metrics_listen=metrics_listen)
        await sidecar.start()
        # Start-up objects (modules, spec, metric families) live as long as the
        # process: keep them out of the collector's generations, so full
        # collections under load stay short (p99.9, docs/performance.md).
        gc.collect()
        gc.freeze()
        log.info(
            "sidecar for model %s: proxy on %s:%d -> %s, metrics on %s:%d",
            sidecar.model.name,
            listen[0],
            sidecar.port,
            sidecar.model.upstream,
            metrics_listen[0],
            sidecar.metrics_port,
        )
        await stop.wait()
        log.info("shutting down")
        await sidecar.stop()

    runner(main())
