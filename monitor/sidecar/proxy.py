"""The sidecar's hot path: a transparent HTTP/1.1 reverse proxy on raw asyncio protocols.

Why not aiohttp or a framework: the proxy must forward bodies as they arrive
(a 120 MB upload or an endless SSE stream keeps memory bounded), must never
reject what the model server would accept, and must cost little per request.
A protocol-level proxy with ``httptools`` (llhttp) parsing both sides measured
more throughput than an aiohttp client/server pair here (see
docs/performance.md).

What passes through unchanged: method, request target (path and query),
headers in order and case (minus hop-by-hop headers, RFC 9110 section 7.6.1),
status code and reason, and body bytes. What changes: message framing (a
chunked body is re-chunked, since ``Transfer-Encoding`` is hop-by-hop),
``Expect: 100-continue`` is answered by the sidecar itself (as nginx does),
and ``traceparent`` is replaced by the sidecar's span when tracing is on (W3C
Trace Context, section 3.2).

Errors the sidecar makes itself, each with a JSON body
``{"error": ..., "source": "monitor-sidecar"}``:

* 502: the upstream is unreachable (refused, reset, closed before answering);
* 503: load shed: ``concurrency_limit`` requests are in flight already (with
  ``Retry-After: 1``; see :meth:`ProxyServer.set_control`);
* 504: the upstream did not connect or answer within the configured timeouts;
* 413: the request declares a body above ``max_request_bytes`` (when set);
* 400: the request is not parseable HTTP/1.x (it cannot be forwarded);
* 501: a connection that starts with a protocol upgrade and no request.

Routing: each request goes to the primary upstream, or, with probability
``fallback_weight`` (set by the sidecar's control API), to the fallback upstream;
each upstream has its own keep-alive pool.

Everything about metrics is delegated to an :class:`Observer`; this module only
moves bytes and keeps time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections import deque
from time import perf_counter
from typing import Any, Protocol

import httptools
import orjson

from monitor import conventions as c

__all__ = ["Exchange", "Observer", "ProxyServer", "UpstreamPool"]

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_STRIP_REQUEST = HOP_BY_HOP | {b"expect"}
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
MAX_HEAD_BYTES = 64 * 1024
"""Largest request line plus headers accepted (nginx allows 4 x 8 KiB; aiohttp 8 KiB
per line); a larger head gets 431 and the connection closes, so a client cannot
make the sidecar buffer an endless head."""
MAX_HEADERS = 256
"""Most header fields accepted in one request head (431 beyond)."""


class _RefusedError(Exception):
    """Raised inside a parser callback to stop reading a request head."""


_NOTED = frozenset(
    {b"expect", b"traceparent", b"tracestate", b"x-request-id", b"idempotency-key",
     b"content-encoding"}
)  # fmt: skip
"""Request headers the proxy and its observer look at, kept in ``Exchange.noted``."""
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
PENDING_LIMIT_BYTES = 1 << 20
"""Request bytes buffered while no upstream connection is attached; above it the
client is paused (flow control), so memory stays bounded."""
LINGER_SECONDS = 5.0
"""How long the rest of a request body is read and dropped after an early answer
(nginx's lingering_timeout)."""
SHED_DRAIN_BYTES = 64 * 1024
"""A shed request (503) with a body up to this size is read and dropped and its
connection kept; a larger (or chunked) one closes the connection after the answer."""
IDLE_KEEPALIVE_SECONDS = 4.0
"""Idle upstream connections older than this are closed rather than reused:
below uvicorn's default 5 s keep-alive, so reuse rarely races the server's close."""


class Observer(Protocol):
    """What the proxy tells the instrumentation layer; every method must not raise."""

    def request_started(self, ex: Exchange) -> None: ...
    def request_complete(self, ex: Exchange) -> None: ...
    def response_started(self, ex: Exchange) -> None: ...
    def request_finished(self, ex: Exchange) -> None: ...


class Exchange:
    """One request/response pair on a downstream connection.

    Times are ``time.perf_counter()`` seconds. ``body_parts`` holds the request
    body while it is below the inspection cap (``collect`` turns False once it
    is exceeded, and ``truncated`` True); ``resp_parts`` likewise for the response
    when the observer asked for it (``resp_collect``).
    """

    __slots__ = (
        "body_parts",
        "body_size",
        "collect",
        "conn",
        "content_length",
        "content_type",
        "ctx",
        "down",
        "finished",
        "has_host",
        "head_sent",
        "headers",
        "http11",
        "inference",
        "keep_alive",
        "last_activity",
        "local",
        "method",
        "model_label",
        "noted",
        "out_mode",
        "outcome",
        "pending",
        "pending_bytes",
        "reason",
        "req_chunked",
        "req_done",
        "req_te",
        "resp_collect",
        "resp_content_type",
        "resp_parts",
        "resp_size",
        "resp_truncated",
        "retried",
        "route",
        "span",
        "status",
        "stream",
        "streamed",
        "t_end",
        "t_first",
        "t_head",
        "t_start",
        "trace_header",
        "truncated",
        "url",
    )

    def __init__(self, down: DownstreamProtocol, method: bytes, url: bytes, headers: list) -> None:
        self.down = down
        self.method = method
        self.url = url
        self.headers: list[tuple[bytes, bytes]] = headers
        self.http11 = True
        self.has_host = False
        self.keep_alive = True
        self.req_chunked = False
        # Transfer-Encoding with codings before chunked (e.g. "gzip, chunked"): sent on
        # as it came, since the parser removes only the chunked framing
        self.req_te: bytes | None = None
        self.content_length: int | None = None
        self.content_type: bytes | None = None
        self.noted: dict[bytes, bytes] = {}
        self.req_done = False
        self.body_parts: list[bytes] = []
        self.body_size = 0
        self.collect = True
        self.truncated = False
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.conn: UpstreamConnection | None = None
        self.retried = False
        self.local = False
        self.head_sent = False
        self.status = 0
        self.reason = b""
        self.out_mode = 0
        self.streamed = False
        self.resp_collect = False
        self.resp_parts: list[bytes] = []
        self.resp_size = 0
        self.resp_truncated = False
        self.resp_content_type: bytes | None = None
        self.stream: Any = None
        self.finished = False
        self.outcome = ""
        self.t_start = perf_counter()
        self.t_head = 0.0
        self.t_first = 0.0
        self.t_end = 0.0
        self.last_activity = 0.0
        self.route = c.ROUTE_UNMATCHED
        self.model_label = ""
        self.inference = False
        self.span: Any = None
        self.trace_header: bytes | None = None
        self.ctx: Any = None

    @property
    def path(self) -> str:
        """Request path without the query string (decoded as latin-1)."""
        url = self.url
        q = url.find(b"?")
        return (url if q < 0 else url[:q]).decode("latin-1")

    def header(self, name: bytes) -> bytes | None:
        """Request header named ``name`` (lower-case bytes), or None; the last one
        for the headers the proxy notes while parsing, else the first."""
        if name in _NOTED:
            return self.noted.get(name)
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


# Response body framing towards the client.
_OUT_NONE, _OUT_RAW, _OUT_CHUNKED, _OUT_CLOSE = range(4)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the model server, parsing its responses."""

    def __init__(self, proxy: ProxyServer, pool: UpstreamPool) -> None:
        self.proxy = proxy
        self.pool = pool  # the pool (upstream) it belongs to
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.closed = False
        self.reused = False
        self.received = False
        self.idle_since = 0.0
        self.skip_message = False
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        ex = self.exchange
        if ex is None:  # bytes while idle: the connection is unusable
            self.close()
            return
        self.received = True
        ex.last_activity = self.proxy.loop.time()
        down = ex.down
        down.cork()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.proxy.upstream_failed(ex, self, f"invalid response from upstream: {exc}")
        finally:
            down.uncork()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            self.proxy.upstream_lost(ex, self, exc)
        else:
            self.pool.discard(self)

    def pause_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.down.pause_reading()

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            ex.down.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim response (we answered 100-continue ourselves)
            self.skip_message = True
            return
        self.skip_message = False
        if ex is not None and not ex.finished:
            self.proxy.response_head(ex, status, self._reason, self._headers)

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is not None and not self.skip_message:
            self.proxy.response_body(ex, body)

    def on_message_complete(self) -> None:
        if self.skip_message:
            self.skip_message = False
            return
        ex = self.exchange
        if ex is not None:
            self.proxy.response_complete(ex, self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        """Close without returning to the pool (abort: unsent bytes are dropped)."""
        if not self.closed:
            self.closed = True
            self.exchange = None
            if self.transport is not None:
                self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one upstream ``host:port`` (LIFO reuse); one per upstream.

    Args:
        proxy: owner; connections report to it.
        host, port: the model server.
        connect_timeout: seconds before a connect attempt gives up.
        max_idle: idle connections kept (beyond, released ones are closed).
    """

    def __init__(
        self, proxy: ProxyServer, host: str, port: int, connect_timeout: float, max_idle: int = 256
    ) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self.host_header = b"Host: %b\r\n" % (
            host.encode("idna") if port == 80 else b"%b:%d" % (host.encode("idna"), port)
        )
        """Added to a request without ``Host`` (HTTP/1.0) sent to this upstream."""

    def acquire_idle(self) -> UpstreamConnection | None:
        """Pop a live idle connection that is fresh enough to reuse, or None."""
        now = self.proxy.loop.time()
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.closed or now - conn.idle_since > IDLE_KEEPALIVE_SECONDS:
                conn.close()
                continue
            conn.reused = True
            conn.received = False
            return conn
        return None

    async def connect(self) -> UpstreamConnection:
        """Open a new connection.

        Raises:
            TimeoutError: not connected within ``connect_timeout`` seconds.
            OSError: refused, unreachable, DNS failure.
        """
        _, conn = await asyncio.wait_for(
            self.proxy.loop.create_connection(
                lambda: UpstreamConnection(self.proxy, self), self.host, self.port
            ),
            self.connect_timeout,
        )
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose last response completed cleanly."""
        conn.exchange = None
        if conn.closed or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.proxy.loop.time()
        self.idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        """Forget a connection that closed while idle."""
        try:  # noqa: SIM105 - cheaper than contextlib.suppress
            self.idle.remove(conn)
        except ValueError:
            pass

    def close_all(self) -> None:
        """Close every idle connection."""
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class DownstreamProtocol(asyncio.Protocol):
    """One client connection: parses requests and hands them to the proxy in order."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: Exchange | None = None  # exchange being answered
        self.parsing: Exchange | None = None  # exchange whose request is being read
        self.queue: deque[Exchange] = deque()  # pipelined requests waiting their turn
        self.closed = False
        self.deferred: list[Exchange] = []  # started while parsing; dispatched after
        self._cork: list[bytes] | None = None
        self.last_activity = proxy.loop.time()
        self._paused = 0
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._head_size = 0
        self.head_started: float | None = None  # when the request head being read began
        self.poisoned: str | None = None  # unparseable bytes after a request: 400 once answered
        self._refusal: tuple[int, str] | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.proxy.loop.time()
        if self.poisoned is not None:
            return  # nothing after unparseable bytes is read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade and Connection are hop-by-hop and not forwarded, so the
            # upstream answers a plain request and the client, not seeing 101, knows
            # no upgrade happened (RFC 9110 7.8). Bytes after the head are not HTTP:
            # close once the response is sent.
            ex = self.current
            if ex is None:
                self.proxy.reject_local(self, None, 501, "protocol upgrade is not supported")
            else:
                ex.keep_alive = False
                self.pause_reading()
        except Exception as exc:  # httptools.HttpParserError, or a refusal from a callback
            status, why = self._refusal or (400, f"malformed HTTP request: {exc}")
            self._refusal = None
            self._bad_bytes(status, why)
        finally:
            if self.deferred:
                for ex in self.deferred:
                    self.proxy.dispatch(ex)
                self.deferred.clear()

    def _bad_bytes(self, status: int, why: str) -> None:
        """The client sent something that cannot be forwarded (``status`` 400 or 431)."""
        ex = self.parsing
        if ex is not None and ex is self.current:
            self.proxy.reject_local(self, ex, status, why)  # broken mid-request: answer it
            return
        if ex is not None:  # a pipelined request, not started: drop it
            with contextlib.suppress(ValueError):
                self.queue.remove(ex)
            self.parsing = None
        if self.current is None and not self.queue:
            self.proxy.reject_local(self, None, status, why)
            return
        # Requests before the bad bytes are answered first (pipelining), then the
        # error, then the connection closes.
        self.poisoned = f"{status} {why}"
        self.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.proxy.connections.discard(self)
        ex = self.current
        if ex is not None and not ex.finished:
            self.proxy.client_gone(ex)
        self.queue.clear()

    def pause_writing(self) -> None:
        ex = self.current
        if ex is not None and ex.conn is not None and ex.conn.transport is not None:
            ex.conn.transport.pause_reading()

    def resume_writing(self) -> None:
        ex = self.current
        if ex is not None and ex.conn is not None and ex.conn.transport is not None:
            ex.conn.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = []
        self._headers = []
        self._in_head = True
        self._head_size = 0
        self.head_started = self.proxy.loop.time()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > MAX_HEAD_BYTES:
            self._refuse(414, f"request target over {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a chunked trailer: never promoted to a header upstream
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD_BYTES or len(self._headers) > MAX_HEADERS:
            self._refuse(
                431,
                f"request head over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} header fields",
            )

    def _refuse(self, status: int, why: str) -> None:
        self._refusal = (status, why)
        raise _RefusedError(why)

    def on_headers_complete(self) -> None:
        p = self.parser
        self._in_head = False
        self.head_started = None
        ex = Exchange(self, p.get_method(), b"".join(self._url), self._headers)
        ex.http11 = p.get_http_version() == "1.1"
        ex.keep_alive = p.should_keep_alive()
        for name, value in ex.headers:
            n = name.lower()
            if n == b"content-length":
                try:  # noqa: SIM105 - cheaper than contextlib.suppress
                    ex.content_length = int(value)
                except ValueError:
                    pass
            elif n == b"transfer-encoding":
                low = value.lower()
                ex.req_chunked = b"chunked" in low
                if ex.req_chunked and low.replace(b" ", b"").replace(b"\t", b"") != b"chunked":
                    ex.req_te = value
            elif n == b"content-type":
                ex.content_type = value
            elif n == b"host":
                ex.has_host = True
            elif n in _NOTED:  # read once here, not by later scans of the header list
                ex.noted[n] = value
        self.parsing = ex
        if self.current is None:
            self.current = ex
            self.proxy.start(ex, defer=True)
        else:
            self.queue.append(ex)
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is not None:
            self.proxy.request_body(ex, body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is not None:
            self.parsing = None
            self.proxy.request_complete(ex)

    # flow control (counted: several reasons may pause at once)
    def pause_reading(self) -> None:
        self._paused += 1
        if self._paused == 1 and self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused > 0:
            self._paused -= 1
            if self._paused == 0 and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client (held back while corked)."""
        if self.closed or self.transport is None:
            return
        if self._cork is not None:
            self._cork.append(data)
        else:
            self.transport.write(data)

    def cork(self) -> None:
        """Hold writes until :meth:`uncork`: one syscall for a response head and body."""
        if self._cork is None:
            self._cork = []

    def uncork(self) -> None:
        """Send what was held back since :meth:`cork`, in one write."""
        held = self._cork
        self._cork = None
        if held and not self.closed and self.transport is not None:
            self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def linger(self, seconds: float) -> None:
        """Read and drop the rest of the current request, then close (at most ``seconds``)."""
        while self._paused:
            self.resume_reading()
        self.proxy.loop.call_later(seconds, self.close)

    def close(self) -> None:
        """Close the connection once buffered writes are sent."""
        if not self.closed and self.transport is not None:
            self.uncork()
            self.closed = True
            self.transport.close()

    def exchange_done(self, ex: Exchange) -> None:
        """Called when ``ex`` is answered and its request fully read: next one, or close."""
        if self.current is not ex:
            return
        self.current = None
        if self.closed:
            return
        if not ex.keep_alive:
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            self.current = nxt
            if not self.queue and self.poisoned is None:
                self.resume_reading()
            self.proxy.start(nxt)
        elif self.poisoned is not None:
            status, why = self.poisoned.split(" ", 1)
            body = orjson.dumps({"error": why, "source": "monitor-sidecar"})
            self.write(_local_response(int(status), body, keep_alive=False, http11=True))
            self.close()


class ProxyServer:
    """Forwards every request to an upstream and reports to an :class:`Observer`.

    Args:
        host, port: the upstream model server (the primary).
        observer: instrumentation (metrics, tracing, capture).
        fallback: ``(host, port)`` of a fallback model server, or None; requests go
            there with probability ``fallback_weight`` (see :meth:`set_control`).
        connect_timeout, read_timeout: seconds (see ``TimeoutSpec``).
        inspect_max_bytes: request/response bodies up to this size are kept for
            the observer; larger ones stream through uninspected.
        max_request_bytes: requests declaring a larger ``Content-Length`` get 413
            from the sidecar (None: no limit).
        client_idle_timeout: seconds after which a client connection with no
            request in progress and no bytes received is closed.
        client_header_timeout: seconds a request head may take to arrive (408 after).
    """

    def __init__(
        self,
        host: str,
        port: int,
        observer: Observer,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        inspect_max_bytes: int = 8 << 20,
        max_request_bytes: int | None = None,
        client_idle_timeout: float = 75.0,
        client_header_timeout: float = 30.0,
        fallback: tuple[str, int] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop or asyncio.get_running_loop()
        self.observer = observer
        self.read_timeout = read_timeout
        self.inspect_max_bytes = inspect_max_bytes
        self.max_request_bytes = max_request_bytes
        self.pool = UpstreamPool(self, host, port, connect_timeout)
        self.fallback_pool = (
            None if fallback is None else UpstreamPool(self, *fallback, connect_timeout)
        )
        self.fallback_weight = 0.0
        """Share of new requests sent to the fallback upstream (0: none, 1: all)."""
        self.concurrency_limit: int | None = None
        """Most requests in flight; beyond, new ones are shed with 503 (None: no limit)."""
        self.active = 0
        """Requests started and not finished (the count ``concurrency_limit`` bounds)."""
        self._random = random.random  # Mersenne Twister in C: ~30 ns a draw
        self.connections: set[DownstreamProtocol] = set()
        self.server: asyncio.base_events.Server | None = None
        self.client_idle_timeout = client_idle_timeout
        self.client_header_timeout = client_header_timeout
        self._sweeper: asyncio.TimerHandle | None = None

    def set_control(self, fallback_weight: float, concurrency_limit: int | None) -> None:
        """Set the routing share of the fallback and the concurrency limit.

        They apply to requests dispatched from now on; requests in flight keep their
        upstream.

        Raises:
            ValueError: a weight outside 0-1, a weight above 0 without a fallback
                upstream, or a limit below 1.
        """
        if not 0.0 <= fallback_weight <= 1.0:
            raise ValueError(f"fallback_weight {fallback_weight!r} is not within 0-1")
        if fallback_weight > 0 and self.fallback_pool is None:
            raise ValueError("fallback_weight > 0 needs a fallback upstream")
        if concurrency_limit is not None and concurrency_limit < 1:
            raise ValueError(f"concurrency_limit {concurrency_limit!r} is below 1")
        self.fallback_weight = float(fallback_weight)
        self.concurrency_limit = concurrency_limit

    async def listen(self, host: str, port: int) -> asyncio.base_events.Server:
        """Start accepting clients on ``host:port`` (port 0 picks a free one)."""
        self.server = await self.loop.create_server(
            lambda: DownstreamProtocol(self), host, port, reuse_address=True, backlog=1024
        )
        self._sweep()
        return self.server

    def _sweep(self) -> None:
        """Time out silent upstreams and close idle clients.

        One periodic pass instead of a timer per request (a timer costs a heap push
        and a cancel on every request); it runs every quarter of the shorter
        timeout, at most every second, so a timeout fires within 25 % (or 1 s) of
        its value.
        """
        now = self.loop.time()
        idle = self.client_idle_timeout
        read = self.read_timeout
        head_limit = self.client_header_timeout
        for d in list(self.connections):
            ex = d.current
            if ex is None:
                started = d.head_started
                if started is not None and now - started > head_limit:
                    # A head still incomplete after client_header_seconds (slowloris).
                    self.reject_local(d, None, 408, "request head not received in time")
                elif now - d.last_activity > idle:
                    d.close()
            elif ex.conn is not None and not ex.finished and now - ex.last_activity > read:
                self._timed_out(ex)
        self._sweeper = self.loop.call_later(
            min(1.0, idle / 4, read / 4, head_limit / 4), self._sweep
        )

    @property
    def port(self) -> int:
        """The bound listening port."""
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, close client and upstream connections."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        for d in list(self.connections):
            d.close()
        self.pool.close_all()
        if self.fallback_pool is not None:
            self.fallback_pool.close_all()
        if self.server is not None:
            await self.server.wait_closed()

    # -- request side ----------------------------------------------------------
    def start(self, ex: Exchange, defer: bool = False) -> None:
        """Begin an exchange: instrument it, then attach or open an upstream connection.

        With ``defer`` (called while the client's bytes are being parsed) the upstream
        side starts when that batch of bytes is parsed, so the request head and the
        body bytes that came with it leave in one write.
        """
        ex.t_start = perf_counter()
        self.active += 1
        self.observer.request_started(ex)
        mrb = self.max_request_bytes
        if mrb is not None and ex.content_length is not None and ex.content_length > mrb:
            self.reject_local(
                ex.down, ex, 413, f"request body of {ex.content_length} bytes exceeds {mrb}"
            )
            return
        limit = self.concurrency_limit
        if limit is not None and self.active > limit:  # ``active`` counts ``ex`` already
            self._shed(ex, limit)
            return
        cl = ex.content_length
        if cl is not None and cl > self.inspect_max_bytes:
            ex.collect = False
            ex.truncated = True
        expect = ex.header(b"expect")
        if expect is not None and ex.http11 and expect.lower() == b"100-continue":
            ex.down.write(_CONTINUE)
        if defer:
            ex.down.deferred.append(ex)
        else:
            self.dispatch(ex)

    def dispatch(self, ex: Exchange) -> None:
        """Pick the upstream of ``ex``; attach an idle connection to it, or open one."""
        if ex.finished or ex.local:
            return
        pool = self.pool
        weight = self.fallback_weight
        if weight and self._random() < weight:
            pool = self.fallback_pool  # type: ignore[assignment] # set_control checks it
        conn = pool.acquire_idle()
        if conn is not None:
            self._attach(ex, conn)
        else:
            self.loop.create_task(self._connect(ex, pool))

    def _shed(self, ex: Exchange, limit: int) -> None:
        """Answer 503 without contacting an upstream (load shedding).

        Called from :meth:`start`, so the body is never parsed for metrics. A small
        body is read and dropped and the connection kept (a shedding sidecar is
        overloaded: reconnects would cost more); a large or chunked one is dropped
        for a while and the connection closed, as after a 413.
        """
        ex.local = True  # request_body / request_complete now drop the body
        if not ex.req_done and (
            ex.req_chunked
            or (ex.content_length or 0) > SHED_DRAIN_BYTES
            or b"expect" in ex.noted  # the client may never send the body it announced
        ):
            ex.keep_alive = False
        why = f"load shed by the sidecar: concurrency limit {limit} reached"
        self._send_local(ex, 503, why, _RETRY_AFTER)
        self.finish(ex, None)  # outcome by status, as the upstream's 503s: server_error

    async def _connect(self, ex: Exchange, pool: UpstreamPool) -> None:
        try:
            conn = await pool.connect()
        except TimeoutError:
            self.fail(ex, 504, c.OUTCOME_TIMEOUT, "upstream connect timed out")
            return
        except OSError as exc:
            self.fail(
                ex, 502, c.OUTCOME_UNREACHABLE, f"upstream unreachable: {exc.strerror or exc}"
            )
            return
        if ex.finished:  # client left while we connected
            pool.release(conn)
            return
        self._attach(ex, conn)

    def _attach(self, ex: Exchange, conn: UpstreamConnection) -> None:
        conn.exchange = ex
        ex.conn = conn
        if ex.pending:
            conn.write(b"".join([self._request_head(ex, conn.pool), *ex.pending]))
            if ex.pending_bytes > PENDING_LIMIT_BYTES:
                ex.down.resume_reading()
            ex.pending = []
            ex.pending_bytes = 0
        else:
            conn.write(self._request_head(ex, conn.pool))
        ex.last_activity = self.loop.time()  # the sweep times out a silent upstream

    def _request_head(self, ex: Exchange, pool: UpstreamPool) -> bytes:
        parts = [ex.method, b" ", ex.url, b" HTTP/1.1\r\n"]
        drop = _STRIP_REQUEST
        conn_tokens: frozenset[bytes] | None = None
        trace = ex.trace_header
        for name, value in ex.headers:
            n = name.lower()
            if n in drop or (trace is not None and n in _TRACE_HEADERS):
                if n == b"connection":
                    conn_tokens = frozenset(t.strip().lower() for t in value.split(b","))
                continue
            parts += (name, b": ", value, _CRLF)
        if conn_tokens:  # headers named in Connection are hop-by-hop too (RFC 9110 7.6.1)
            parts = _rebuild_without(parts, conn_tokens - {b"host"})
        if ex.req_chunked:
            te = ex.req_te
            parts.append(b"Transfer-Encoding: chunked\r\n" if te is None else
                         b"Transfer-Encoding: %b\r\n" % te)  # fmt: skip
        if not ex.has_host:  # HTTP/1.0 may omit Host; the HTTP/1.1 request upstream needs one
            parts.append(pool.host_header)
        if trace is not None:
            parts.append(trace)
        parts.append(_CRLF)
        return b"".join(parts)

    def request_body(self, ex: Exchange, chunk: bytes) -> None:
        """Forward one piece of request body (already de-chunked by the parser)."""
        size = len(chunk)
        ex.body_size += size
        if ex.collect:
            if ex.body_size <= self.inspect_max_bytes:
                ex.body_parts.append(chunk)
            else:
                ex.collect = False
                ex.truncated = True
                ex.body_parts = []
        if ex.local or ex.finished:
            return
        data = b"%x\r\n%b\r\n" % (size, chunk) if ex.req_chunked else chunk
        conn = ex.conn
        if conn is not None:
            conn.write(data)
            ex.last_activity = self.loop.time()
        else:
            ex.pending.append(data)
            before = ex.pending_bytes
            ex.pending_bytes += len(data)
            if before <= PENDING_LIMIT_BYTES < ex.pending_bytes:
                ex.down.pause_reading()

    def request_complete(self, ex: Exchange) -> None:
        """The request message is fully read."""
        ex.req_done = True
        if not ex.local and not ex.finished:
            if ex.req_chunked:
                if ex.conn is not None:
                    ex.conn.write(_LAST_CHUNK)
                else:
                    ex.pending.append(_LAST_CHUNK)
            self.observer.request_complete(ex)
        if ex.finished:
            ex.down.exchange_done(ex)

    # -- response side ---------------------------------------------------------
    def response_head(
        self, ex: Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """Send the upstream's status line and headers to the client."""
        ex.t_head = perf_counter()
        ex.status = status
        ex.reason = reason
        has_length = False
        chunked_in = False
        parts = [b"HTTP/1.1 %d %b\r\n" % (status, reason)]
        conn_tokens: frozenset[bytes] | None = None
        for name, value in headers:
            n = name.lower()
            if n in HOP_BY_HOP:
                if n == b"transfer-encoding":
                    chunked_in = True
                elif n == b"connection":
                    conn_tokens = frozenset(t.strip().lower() for t in value.split(b","))
                continue
            if n == b"content-length":
                has_length = True
            elif n == b"content-type":
                ex.resp_content_type = value
            parts += (name, b": ", value, _CRLF)
        if conn_tokens:
            parts = _rebuild_without(parts, conn_tokens, start=1)
        if ex.method == b"HEAD" or status in (204, 304):
            ex.out_mode = _OUT_NONE
        elif has_length and not chunked_in:
            ex.out_mode = _OUT_RAW
        elif ex.http11:
            ex.out_mode = _OUT_CHUNKED
            parts.append(b"Transfer-Encoding: chunked\r\n")
            ex.streamed = True
        else:
            ex.out_mode = _OUT_CLOSE
            ex.keep_alive = False
            ex.streamed = True
        ctype = ex.resp_content_type
        if ctype is not None and ctype.startswith(b"text/event-stream"):
            ex.streamed = True
        if not ex.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif not ex.http11:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(_CRLF)
        self.observer.response_started(ex)
        ex.head_sent = True
        ex.down.write(b"".join(parts))
        if ex.method == b"HEAD":
            # llhttp would wait for the body a HEAD response announces; finish now
            # and never reuse this connection.
            conn = ex.conn
            if conn is not None:
                conn.close()
            self.finish(ex, None)

    def response_body(self, ex: Exchange, chunk: bytes) -> None:
        """Send one piece of response body to the client, as it arrives."""
        size = len(chunk)
        if not ex.resp_size and size:
            ex.t_first = perf_counter()
        ex.resp_size += size
        if ex.resp_collect:
            if ex.resp_size <= self.inspect_max_bytes:
                ex.resp_parts.append(chunk)
            else:
                ex.resp_collect = False
                ex.resp_truncated = True
                ex.resp_parts = []
        if ex.stream is not None:
            try:
                ex.stream.feed(chunk, perf_counter())
            except Exception:
                ex.stream = None
        mode = ex.out_mode
        if mode == _OUT_CHUNKED:
            if size:
                ex.down.write(b"%x\r\n%b\r\n" % (size, chunk))
        elif mode != _OUT_NONE:
            ex.down.write(chunk)

    def response_complete(self, ex: Exchange, conn: UpstreamConnection) -> None:
        """The upstream's response is complete: end the client's response, recycle."""
        if ex.finished:
            return
        if ex.out_mode == _OUT_CHUNKED:
            ex.down.write(_LAST_CHUNK)
        if ex.req_done and conn.parser.should_keep_alive() and not conn.closed:
            conn.pool.release(conn)
        else:
            conn.close()
        self.finish(ex, None)

    def upstream_lost(self, ex: Exchange, conn: UpstreamConnection, exc: Exception | None) -> None:
        """The upstream connection closed while ``ex`` was using it."""
        if ex.finished:
            return
        if ex.head_sent:
            if ex.out_mode in (_OUT_CHUNKED, _OUT_CLOSE) and not _has_framing(conn):
                # A close-delimited body ends at EOF (RFC 9112 6.3 rule 8).
                if ex.out_mode == _OUT_CHUNKED:
                    ex.down.write(_LAST_CHUNK)
                self.finish(ex, None)
                return
            # Broken mid-body: the client must see a truncated response, not a clean end.
            self._abort_client(ex)
            self.finish(ex, c.OUTCOME_SERVER_ERROR)
            return
        if conn.reused and not conn.received and not ex.retried and self._replayable(ex):
            # A kept-alive connection the server closed as we reused it: replay once
            # on a fresh connection (the request body is fully held in memory).
            ex.retried = True
            ex.conn = None
            ex.pending = self._replay_body(ex)
            ex.pending_bytes = 0
            self.loop.create_task(self._connect(ex, conn.pool))  # the same upstream
            return
        why = f"upstream closed the connection before answering{': ' + str(exc) if exc else ''}"
        self.fail(ex, 502, c.OUTCOME_UNREACHABLE, why)

    def upstream_failed(self, ex: Exchange, conn: UpstreamConnection, why: str) -> None:
        """The upstream sent something that is not HTTP."""
        conn.close()
        if ex.head_sent:
            self._abort_client(ex)
            self.finish(ex, c.OUTCOME_SERVER_ERROR)
        else:
            self.fail(ex, 502, c.OUTCOME_UNREACHABLE, why)

    def _timed_out(self, ex: Exchange) -> None:
        """``ex``'s upstream was silent for ``read_timeout``: 504, or cut the stream."""
        conn = ex.conn
        if conn is not None:
            conn.close()
        if ex.head_sent:
            self._abort_client(ex)
            self.finish(ex, c.OUTCOME_TIMEOUT)
        else:
            self.fail(
                ex,
                504,
                c.OUTCOME_TIMEOUT,
                f"upstream did not answer within {self.read_timeout:g} s",
            )

    def _replayable(self, ex: Exchange) -> bool:
        # Only requests without side effects are replayed: idempotent methods
        # (RFC 9110 9.2.2), inference calls (a pure function of the input) and
        # requests carrying an Idempotency-Key; never, e.g., a model load.
        if not (ex.req_done and not ex.truncated and ex.collect):
            return False
        return ex.method in _IDEMPOTENT or ex.inference or ex.header(b"idempotency-key") is not None

    def _replay_body(self, ex: Exchange) -> list[bytes]:
        if not ex.body_parts:
            return [_LAST_CHUNK] if ex.req_chunked else []
        if ex.req_chunked:
            body = b"".join(ex.body_parts)
            return [b"%x\r\n%b\r\n" % (len(body), body), _LAST_CHUNK]
        return list(ex.body_parts)

    def _abort_client(self, ex: Exchange) -> None:
        d = ex.down
        ex.keep_alive = False
        d._cork = None
        if not d.closed and d.transport is not None:
            d.closed = True
            d.transport.abort()

    # -- endings ------------------------------------------------------------------
    def client_gone(self, ex: Exchange) -> None:
        """The client disconnected before its response was complete."""
        conn = ex.conn
        if conn is not None:
            conn.close()  # never leak, never pool a half-used connection
        ex.keep_alive = False
        if not ex.status:
            ex.status = 499  # nginx's "client closed request"
        self.finish(ex, c.OUTCOME_CLIENT_CANCELLED)

    def fail(self, ex: Exchange, status: int, outcome: str, why: str) -> None:
        """Answer the client with a sidecar-made error (502/504) unless it has left."""
        if ex.finished:
            return
        conn = ex.conn
        if conn is not None:
            conn.close()
            ex.conn = None
        if not ex.req_done:
            ex.keep_alive = False
        self._send_local(ex, status, why)
        self.finish(ex, outcome)

    def reject_local(
        self, down: DownstreamProtocol, ex: Exchange | None, status: int, why: str
    ) -> None:
        """Answer a request the sidecar will not forward, then close the connection."""
        if ex is None or ex.finished:
            if down.current is None and not down.closed:
                body = orjson.dumps({"error": why, "source": "monitor-sidecar"})
                down.write(_local_response(status, body, keep_alive=False, http11=True))
            down.close()
            return
        ex.local = True
        ex.keep_alive = False
        if ex.conn is not None:
            ex.conn.close()
            ex.conn = None
        if down.current is ex:
            self._send_local(ex, status, why)
            self.finish(ex, c.OUTCOME_CLIENT_ERROR)
        if down.current is None:
            down.close()

    def _send_local(self, ex: Exchange, status: int, why: str, extra: bytes = b"") -> None:
        ex.status = status
        ex.head_sent = True
        ex.t_head = perf_counter()
        body = orjson.dumps({"error": why, "source": "monitor-sidecar"})
        ex.down.write(_local_response(status, body, ex.keep_alive, ex.http11, extra))

    def finish(self, ex: Exchange, outcome: str | None) -> None:
        """Record the exchange exactly once and move the client connection on."""
        if ex.finished:
            return
        ex.finished = True
        self.active -= 1
        ex.t_end = perf_counter()
        ex.outcome = c.outcome_for_status(ex.status) if outcome is None else outcome
        try:
            self.observer.request_finished(ex)
        except Exception:
            log.exception("observer failed on request_finished")
        if ex.req_done or ex.down.closed:
            ex.down.exchange_done(ex)
        elif not ex.keep_alive:
            # Answered before the request body was read (413, 502, 504): keep reading
            # and dropping it for a while, so the client, still sending, reads our
            # answer instead of a connection reset (nginx's lingering close).
            ex.down.linger(LINGER_SECONDS)


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large",
            414: b"URI Too Long", 431: b"Request Header Fields Too Large", 501: b"Not Implemented",
            502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout"}  # fmt: skip
_RETRY_AFTER = b"Retry-After: 1\r\n"


def _local_response(
    status: int, body: bytes, keep_alive: bool, http11: bool, extra: bytes = b""
) -> bytes:
    head = [
        b"HTTP/1.1 %d %b\r\n" % (status, _REASONS.get(status, b"Error")),
        b"Content-Type: application/json\r\n",
        b"Content-Length: %d\r\n" % len(body),
        b"X-Monitor-Sidecar: error\r\n",
        extra,
    ]
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    elif not http11:
        head.append(b"Connection: keep-alive\r\n")
    head.append(_CRLF)
    return b"".join(head) + body


def _rebuild_without(parts: list[bytes], names: frozenset[bytes], start: int = 4) -> list[bytes]:
    """Drop header quads (name, ': ', value, CRLF) whose name is in ``names``."""
    out = parts[:start]
    i = start
    while i + 3 < len(parts) and parts[i + 1] == b": ":
        if parts[i].lower() not in names:
            out += parts[i : i + 4]
        i += 4
    out += parts[i:]
    return out


def _has_framing(conn: UpstreamConnection) -> bool:
    for name, value in conn._headers:
        n = name.lower()
        if n == b"content-length" or (n == b"transfer-encoding" and b"chunked" in value.lower()):
            return True
    return False
