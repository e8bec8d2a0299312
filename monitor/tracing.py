"""OpenTelemetry tracing for the sidecar: one span per proxied request.

No global state: :func:`make_tracer` builds a private ``TracerProvider``. With
no ``otlp_endpoint`` spans are still created, so the W3C ``traceparent`` goes
upstream and the latency histogram carries trace-id exemplars, but nothing is
exported. With an endpoint, spans go out through a ``BatchSpanProcessor`` and
the OTLP/HTTP exporter (install the ``otlp`` extra).
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from monitor.errors import SpecError
from monitor.spec import TracingSpec

__all__ = ["PROPAGATOR", "make_tracer", "traceparent_header"]

PROPAGATOR = TraceContextTextMapPropagator()
"""W3C Trace Context propagator (``traceparent`` / ``tracestate``)."""


def make_tracer(spec: TracingSpec, service_name: str) -> tuple[Tracer, TracerProvider] | None:
    """Build the sidecar's tracer, or None when tracing is disabled.

    Args:
        spec: tracing settings from ``monitor.yaml``.
        service_name: the ``service.name`` resource attribute.

    Raises:
        SpecError: ``otlp_endpoint`` is set but the OTLP exporter is not installed.
    """
    if not spec.enabled:
        return None
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(spec.sample_ratio)),
    )
    if spec.otlp_endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError:
            raise SpecError(
                [
                    "tracing.otlp_endpoint: the OTLP exporter is not installed "
                    "(pip install 'model-monitor[otlp]')"
                ]
            ) from None
        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=spec.otlp_endpoint))
        )
    return provider.get_tracer("monitor.sidecar"), provider


def traceparent_header(span: Any, tracestate: bytes | None) -> bytes:
    """Header lines (bytes, CRLF-terminated) that carry ``span``'s context upstream.

    Format: ``traceparent: 00-<32 hex trace id>-<16 hex span id>-<2 hex flags>``
    (W3C Trace Context, section 3.2); an incoming ``tracestate`` is passed on.
    """
    sc = span.get_span_context()
    line = b"traceparent: 00-%032x-%016x-%02x\r\n" % (sc.trace_id, sc.span_id, int(sc.trace_flags))
    if tracestate:
        line += b"tracestate: " + tracestate + b"\r\n"
    return line
