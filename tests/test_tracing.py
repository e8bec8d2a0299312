"""Tracing: one span per proxied request, W3C context upstream, OTLP export when configured."""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from monitor.spec import TracingSpec
from monitor.tracing import RequestTracer, parse_traceparent
from tests.support import FaultServer, SidecarProc, write_spec

pytestmark = pytest.mark.timeout(60)


class _Collector(BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver: decodes protobuf export requests."""

    spans: ClassVar[list] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                _Collector.spans.extend(ss.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def collector() -> Iterator[str]:
    _Collector.spans = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1/traces"
    srv.shutdown()
    srv.server_close()
    t.join(timeout=5)


def test_spans_reach_an_otlp_endpoint_with_the_callers_trace_id(
    collector: str, tmp_path: Path
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with FaultServer(tmp_path) as up:
        spec_path = write_spec(tmp_path / "m.yaml", up.url)
        spec = yaml.safe_load(spec_path.read_text())
        spec["tracing"] = {"otlp_endpoint": collector}
        spec_path.write_text(yaml.safe_dump(spec))
        with SidecarProc(spec_path, "m", tmp_path) as proc:
            c = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=10)
            body = json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}
            )
            c.request(
                "POST",
                "/v2/models/m/infer",
                body=body,
                headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"},
            )
            assert c.getresponse().read()
            c.request("GET", "/status/503")
            c.getresponse().read()
            c.close()
        # Stopping the sidecar (SIGTERM) flushes the batch span processor.
    spans = {s.name: s for s in _Collector.spans}
    assert set(spans) == {"POST /v2/models/{model}/infer", "GET unmatched"}
    infer = spans["POST /v2/models/{model}/infer"]
    assert infer.trace_id.hex() == trace_id
    assert infer.parent_span_id.hex() == "00f067aa0ba902b7"
    attrs = {a.key: a.value for a in infer.attributes}
    assert attrs["http.route"].string_value == "/v2/models/{model}/infer"
    assert attrs["http.response.status_code"].int_value == 200
    failed = spans["GET unmatched"]
    assert failed.status.code == 2  # STATUS_CODE_ERROR: a 503 is a server error


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1),
        ),
        (
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-00",
            (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 0),
        ),
        (
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            (0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, 1),
        ),
        (b"00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        (b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", None),
        (b"00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        (b"garbage", None),
    ],
    ids=[
        "A valid sampled traceparent parses.",
        "Upper-case hex is accepted and the unsampled flag kept.",
        "A future version may carry extra fields.",
        "An all-zero trace id is invalid.",
        "An all-zero parent id is invalid.",
        "Version ff is invalid.",
        "Version 00 must have exactly four fields.",
        "Non-hex characters are invalid.",
        "Garbage is invalid.",
    ],
)
def test_traceparent_parsing_follows_w3c(
    value: bytes, expected: tuple[int, int, int] | None
) -> None:
    assert parse_traceparent(value) == expected


def test_without_an_exporter_the_callers_trace_and_sampled_flag_continue() -> None:
    tracer = RequestTracer(TracingSpec(), "t", rng=random.Random(1))
    assert not tracer.exporting
    child = tracer.start(
        "POST", "/r", "/r", "m", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", b"k=v"
    )
    assert child.trace_id_hex == "4bf92f3577b34da6a3ce929d0e0e4736" and not child.sampled
    assert child.header == (
        b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-00\r\n"
        b"tracestate: k=v\r\n" % child.span_id
    )
    fresh = tracer.start("POST", "/r", "/r", "m", b"not a traceparent", b"k=v")
    assert fresh.trace_id != child.trace_id and fresh.sampled
    assert b"tracestate" not in fresh.header  # a new trace does not inherit a stray tracestate


def test_sample_ratio_zero_marks_new_traces_unsampled() -> None:
    tracer = RequestTracer(TracingSpec(sample_ratio=0.0), "t", rng=random.Random(1))
    assert not any(tracer.start("GET", "/", "/", "m", None, None).sampled for _ in range(100))
