"""Tracing: one span per proxied request, W3C context upstream, OTLP export when configured."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

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
