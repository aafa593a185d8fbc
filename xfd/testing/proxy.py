"""A counting reverse proxy: the origin's own view of the traffic, independent of xfd's counters.

Put it in front of an S3-protocol server and point clients at :attr:`CountingProxy.endpoint`. Every
request is forwarded unchanged (the ``Host`` header included, so request signatures still verify) and
recorded with the number of body bytes the origin actually sent back. Tests assert "origin bytes ==
unique artifact bytes" with it; benchmarks count origin egress with it.

It can also misbehave the way S3 does, so tests can show that clients survive a real origin: bursts of
``503 SlowDown`` (:meth:`CountingProxy.fail_next`), connections reset mid-body
(:meth:`CountingProxy.reset_next`), stalled responses (:meth:`CountingProxy.stall_next`) and an egress
cap (:meth:`CountingProxy.throttle`). Faults apply to GETs only: HEAD, PUT and LIST requests are
forwarded as they are.
"""

from __future__ import annotations

import http.client
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

import attrs

# Headers that describe one hop, not the message: never forwarded as they are.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_BLOCK = 1 << 20
# Smaller blocks while throttled, so a capped response trickles out evenly instead of in 1 MiB lurches.
_THROTTLED_BLOCK = 64 << 10

FaultKind = Literal["slowdown", "reset", "stall"]


@attrs.frozen
class RequestRecord:
    """One request as the origin saw it."""

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int
    fault: FaultKind | None = None
    """The fault injected into this response, if any: body_bytes then counts only what was sent."""


@attrs.frozen
class OriginTraffic:
    """A snapshot of everything the proxy forwarded since it started (or since :meth:`CountingProxy.reset`)."""

    requests: tuple[RequestRecord, ...]

    @property
    def get_requests(self) -> int:
        return sum(1 for r in self.requests if r.method == "GET")

    @property
    def get_bytes(self) -> int:
        """Body bytes of successful GETs: the object bytes downloaded from the origin."""
        return sum(r.body_bytes for r in self.requests if r.method == "GET" and r.status < 300)

    @property
    def object_bytes(self) -> int:
        """Body bytes of successful GETs of objects: :attr:`get_bytes` without the stores' listings (a
        listing is a GET of the bucket itself, ``/bucket`` path-style), so a run that plans counts the same."""
        return sum(
            r.body_bytes for r in self.requests if r.method == "GET" and r.status < 300 and "/" in r.path.strip("/")
        )

    def get_bytes_for(self, key_path: str) -> int:
        """GET body bytes for one object, addressed as ``/bucket/key`` (path-style)."""
        return sum(r.body_bytes for r in self.requests if r.method == "GET" and r.status < 300 and r.path == key_path)


class CountingProxy:
    """Forwards HTTP to ``upstream`` (``http://host:port``) and counts what comes back.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must look like http://host:port, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.host = host
        self._records: list[_Entry] = []
        self._lock = threading.Lock()
        self._refusals: list[tuple[str, int]] = []
        self._faults: list[_Fault] = []
        self._throttle: _TokenBucket | None = None
        # Set to cut every stall and throttle wait short; replaced by a fresh one each time.
        self._wake = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CountingProxy:
        handler = type("Handler", (_ForwardingHandler,), {"proxy": self})
        self._server = ThreadingHTTPServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="xfd-counting-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._end_pauses()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def responses_in_flight(self) -> int:
        """Responses the proxy is still sending (or waiting to send, throttled or stalled)."""
        with self._lock:
            return sum(1 for entry in self._records if entry.method == "GET" and not entry.finished)

    def traffic(self) -> OriginTraffic:
        with self._lock:
            return OriginTraffic(tuple(entry.freeze() for entry in self._records))

    def reset(self) -> None:
        """Clears the counters, every refusal rule, pending fault and the throttle.

        Stalls and throttled responses in progress are cut short, so one test's slow responses never
        outlive it into the next.
        """
        with self._lock:
            self._records.clear()
            self._refusals.clear()
            self._faults.clear()
            self._throttle = None
        self._end_pauses()

    def refuse(self, path_prefix: str, status: int = 403) -> None:
        """Answers every request whose path starts with ``path_prefix`` with ``status`` and an S3-style
        error body, without forwarding it: how tests make a store deny access or fail."""
        with self._lock:
            self._refusals.append((path_prefix, status))

    def fail_next(self, count: int, status: int = 503, path_prefix: str = "/") -> None:
        """Answers the next ``count`` GETs under ``path_prefix`` with ``status`` and an S3 error body,
        without forwarding them: S3's bursts of ``503 SlowDown`` (or ``500 InternalError``)."""
        self._add_fault(_Fault("slowdown", path_prefix, _non_negative("count", count), status=status))

    def reset_next(self, count: int, after_bytes: int = 0, path_prefix: str = "/") -> None:
        """Forwards the next ``count`` GETs under ``path_prefix`` but resets the connection after the
        headers (with the full Content-Length) and at most ``after_bytes`` body bytes: S3 dropping a
        connection mid-download, which the client sees as ``ECONNRESET``."""
        after_bytes = _non_negative("after_bytes", after_bytes)
        fault = _Fault("reset", path_prefix, _non_negative("count", count), after_bytes=after_bytes)
        self._add_fault(fault)

    def stall_next(self, count: int, seconds: float, after_bytes: int = 0, path_prefix: str = "/") -> None:
        """Forwards the next ``count`` GETs under ``path_prefix`` but, after the headers and at most
        ``after_bytes`` body bytes, sends nothing for ``seconds`` and then closes the connection: a
        stalled S3 response, which only a client's read timeout gets out of. Other requests go on; the
        stall ends early on :meth:`reset` or :meth:`stop`."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        after_bytes = _non_negative("after_bytes", after_bytes)
        fault = _Fault("stall", path_prefix, _non_negative("count", count), after_bytes=after_bytes, seconds=seconds)
        self._add_fault(fault)

    def throttle(self, bytes_per_second: float | None) -> None:
        """Caps the body bytes of all GET responses together at ``bytes_per_second`` (None removes the
        cap): an origin's egress limit, shared by every connection."""
        bucket = None if bytes_per_second is None else _TokenBucket(bytes_per_second)
        with self._lock:
            self._throttle = bucket

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _claim_fault(self, method: str, path: str) -> _Fault | None:
        """The first pending fault for this request, counted as used; faults apply to GETs only."""
        if method != "GET":
            return None
        with self._lock:
            fault = next((f for f in self._faults if f.remaining > 0 and path.startswith(f.path_prefix)), None)
            if fault is not None:
                fault.remaining -= 1
                self._faults = [f for f in self._faults if f.remaining > 0]
            return fault

    def _throttle_bucket(self) -> _TokenBucket | None:
        with self._lock:
            return self._throttle

    def _wake_event(self) -> threading.Event:
        """Set by the next :meth:`reset` or :meth:`stop`. Taken when a request arrives, so that a reset
        between then and the request's first pause still cuts that pause short."""
        with self._lock:
            return self._wake

    def _end_pauses(self) -> None:
        with self._lock:
            self._wake.set()
            self._wake = threading.Event()

    def _refusal(self, path: str) -> int | None:
        with self._lock:
            return next((status for prefix, status in self._refusals if path.startswith(prefix)), None)

    def _begin(self, method: str, path: str, byte_range: str | None, fault: FaultKind | None = None) -> _Entry:
        entry = _Entry(method, urlsplit(path).path, byte_range, fault=fault)
        with self._lock:
            self._records.append(entry)
        return entry


@attrs.define
class _Entry:
    """A request being answered. Counted *before* bytes are handed to the socket, so that a client that
    has read a whole response always finds it counted."""

    method: str
    path: str
    range: str | None
    status: int = 0
    body_bytes: int = 0
    fault: FaultKind | None = None
    finished: bool = False

    def freeze(self) -> RequestRecord:
        return RequestRecord(self.method, self.path, self.range, self.status, self.body_bytes, self.fault)


@attrs.define
class _Fault:
    """A pending fault: applies to the next ``remaining`` GETs whose path starts with ``path_prefix``."""

    kind: FaultKind
    path_prefix: str
    remaining: int
    status: int = 503
    after_bytes: int = 0
    seconds: float = 0.0


def _non_negative(name: str, value: int) -> int:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


class _TokenBucket:
    """An egress cap shared by every connection: tokens are bytes, refilled at ``rate`` per second up to
    ``burst``.

    A caller reserves its tokens at once and then waits the time :meth:`reserve` returns. The balance may
    go negative, so concurrent callers queue behind each other's reservations and the cap holds for all
    of them together, not per connection.
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError(f"the rate must be > 0 bytes per second, got {rate}")
        self.rate = rate
        # At most one second's worth: an idle origin must not then serve a large burst above its cap.
        self.burst = min(rate, _THROTTLED_BLOCK) if burst is None else burst
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self, tokens: float) -> float:
        """Takes ``tokens`` now; returns the seconds the caller must wait before spending them."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= tokens
            return max(0.0, -self._tokens / self.rate)


class _ForwardingHandler(BaseHTTPRequestHandler):
    proxy: CountingProxy
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None
    _wake: threading.Event

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: object) -> None:
        """Silent: one line per request would drown a ranged download's output."""

    def _forward(self) -> None:
        self._wake = self.proxy._wake_event()
        body = self._read_request_body()
        path = urlsplit(self.path).path
        fault = None if self.proxy._refusal(path) is not None else self.proxy._claim_fault(self.command, path)
        # Recorded as it arrives, before the upstream answers: the upstream may take long (moto serves
        # ranged GETs of one object one at a time), and a request counts from when the client sent it.
        entry = self.proxy._begin(self.command, self.path, self.headers.get("Range"), fault and fault.kind)
        try:
            self._answer(entry, body, path, fault)
        finally:
            entry.finished = True

    def _answer(self, entry: _Entry, body: bytes | None, path: str, fault: _Fault | None) -> None:
        if (status := self.proxy._refusal(path)) is not None:
            self._refuse(entry, status)
            return
        if fault is not None and fault.kind == "slowdown":
            self._refuse(entry, fault.status)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        response = self._send_upstream(body, headers)
        if response is None:
            entry.status = 502
            self.send_error(502, "upstream unreachable")
            return
        self._relay(response, entry, fault)

    def _refuse(self, entry: _Entry, status: int) -> None:
        entry.status = status
        code = {403: "AccessDenied", 404: "NoSuchKey", 503: "SlowDown"}.get(status, "InternalError")
        body = (
            b""
            if self.command == "HEAD"
            else (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                f"<Message>refused by the test proxy</Message></Error>".encode()
            )
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        entry.body_bytes = len(body)
        self.wfile.write(body)

    def _send_upstream(self, body: bytes | None, headers: dict[str, str]) -> http.client.HTTPResponse | None:
        # A kept-alive upstream connection may have been closed by the server meanwhile: one fresh retry.
        for _attempt in range(2):
            try:
                upstream = self._connection()
                upstream.request(self.command, self.path, body=body, headers=headers)
                return upstream.getresponse()
            except (http.client.HTTPException, OSError):
                self._drop_connection()
        return None

    def _relay(self, response: http.client.HTTPResponse, entry: _Entry, fault: _Fault | None = None) -> None:
        """Sends the upstream response back, counting its body bytes into ``entry``, and plays ``fault``."""
        entry.status = response.status
        length = response.getheader("Content-Length")
        no_body = self.command == "HEAD" or response.status in (204, 304)
        payload = None
        if length is None and not no_body:
            # Upstream streamed without a length (chunked): re-frame with one, so keep-alive stays simple.
            payload = response.read()
            length = str(len(payload))
        self.send_response(response.status, response.reason)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if no_body:
            response.read()
            return
        limit = None if fault is None else fault.after_bytes
        complete = self._send_body(self._body_blocks(response, payload), entry, limit)
        if fault is not None and fault.kind == "stall":
            self._pause(fault.seconds)
        if fault is not None or not complete:
            self._abandon(response, reset=fault is not None and fault.kind == "reset")

    def _body_blocks(self, response: http.client.HTTPResponse, payload: bytes | None) -> Iterator[bytes]:
        size = _BLOCK if self.proxy._throttle_bucket() is None else _THROTTLED_BLOCK
        if payload is not None:
            return (payload[start : start + size] for start in range(0, len(payload), size))
        return iter(lambda: response.read(size), b"")

    def _send_body(self, blocks: Iterator[bytes], entry: _Entry, limit: int | None) -> bool:
        """Sends ``blocks``, at most ``limit`` bytes of them, at the throttle's pace; True if all were sent."""
        for block in blocks:
            if limit is not None:
                block = block[: limit - entry.body_bytes]
                if not block:
                    return False
            if not self._wait_for_tokens(len(block)) or self._client_gone():
                return False
            entry.body_bytes += len(block)
            try:
                self.wfile.write(block)
            except OSError:
                # The client went away mid-body: this block did not arrive, and the origin stops here too.
                entry.body_bytes -= len(block)
                return False
        return True

    def _client_gone(self) -> bool:
        """True once the client has closed its side. A write into a connection the client closed still
        succeeds locally (the kernel buffers it until the peer's RST comes back), so without this check a
        throttled response would be counted as served after its client had let go."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _wait_for_tokens(self, size: int) -> bool:
        bucket = self.proxy._throttle_bucket()
        return bucket is None or self._pause(bucket.reserve(size))

    def _pause(self, seconds: float) -> bool:
        """Waits ``seconds``; False if the proxy's :meth:`~CountingProxy.reset` or
        :meth:`~CountingProxy.stop` cut the wait short."""
        return not self._wake.wait(seconds)

    def _abandon(self, response: http.client.HTTPResponse, reset: bool) -> None:
        """Ends a response before its body is complete. The upstream connection is mid-body too, so it
        cannot be reused. With ``reset``, the client socket closes with an RST instead of a FIN (linger
        on, timeout zero), so the client sees ECONNRESET, as when S3 or a load balancer drops it."""
        response.close()
        self._drop_connection()
        self.close_connection = True
        if reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # Really closed once finish() closes rfile; the server's own shutdown(SHUT_WR) would send a FIN first.
            self.connection.close()

    def _read_request_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return b"".join(self._read_chunks())
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _read_chunks(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    def _connection(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            self._upstream = http.client.HTTPConnection(*self.proxy.upstream, timeout=120)
        return self._upstream

    def finish(self) -> None:
        self._drop_connection()
        super().finish()

    def _drop_connection(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None
