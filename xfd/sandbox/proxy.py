"""A counting reverse proxy: the origin's own view of the traffic, independent of xfd's counters.

Put it in front of an S3-protocol server and point clients at :attr:`CountingProxy.endpoint`. Every
request is forwarded unchanged (the ``Host`` header included, so request signatures still verify) and
recorded with the number of body bytes the origin actually sent back. Tests assert "origin bytes ==
unique artifact bytes" with it; benchmarks count origin egress with it.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import attrs

# Headers that describe one hop, not the message: never forwarded as they are.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade"}
)
_BLOCK = 1 << 20


@attrs.frozen
class RequestRecord:
    """One request as the origin saw it."""

    method: str
    path: str
    range: str | None
    status: int
    body_bytes: int


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

    def traffic(self) -> OriginTraffic:
        with self._lock:
            return OriginTraffic(tuple(entry.freeze() for entry in self._records))

    def reset(self) -> None:
        """Clears the counters and every refusal rule."""
        with self._lock:
            self._records.clear()
            self._refusals.clear()

    def refuse(self, path_prefix: str, status: int = 403) -> None:
        """Answers every request whose path starts with ``path_prefix`` with ``status`` and an S3-style
        error body, without forwarding it: how tests make a store deny access or fail."""
        with self._lock:
            self._refusals.append((path_prefix, status))

    def _refusal(self, path: str) -> int | None:
        with self._lock:
            return next((status for prefix, status in self._refusals if path.startswith(prefix)), None)

    def _begin(self, method: str, path: str, byte_range: str | None) -> _Entry:
        entry = _Entry(method, urlsplit(path).path, byte_range)
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

    def freeze(self) -> RequestRecord:
        return RequestRecord(self.method, self.path, self.range, self.status, self.body_bytes)


class _ForwardingHandler(BaseHTTPRequestHandler):
    proxy: CountingProxy
    protocol_version = "HTTP/1.1"
    _upstream: http.client.HTTPConnection | None = None

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """Silent: one line per request would drown a ranged download's output."""

    def _forward(self) -> None:
        body = self._read_request_body()
        if (status := self.proxy._refusal(urlsplit(self.path).path)) is not None:
            self._refuse(status)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        response = self._send_upstream(body, headers)
        if response is None:
            self.send_error(502, "upstream unreachable")
            return
        self._relay(response, self.proxy._begin(self.command, self.path, self.headers.get("Range")))

    def _refuse(self, status: int) -> None:
        entry = self.proxy._begin(self.command, self.path, self.headers.get("Range"))
        entry.status = status
        code = {403: "AccessDenied", 404: "NoSuchKey", 503: "SlowDown"}.get(status, "InternalError")
        body = b"" if self.command == "HEAD" else (
            f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
            f"<Message>refused by the test proxy</Message></Error>".encode()
        )
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
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

    def _relay(self, response: http.client.HTTPResponse, entry: _Entry) -> None:
        """Sends the upstream response back, counting its body bytes into ``entry``."""
        entry.status = response.status
        length = response.getheader("Content-Length")
        no_body = self.command == "HEAD" or response.status in (204, 304)
        if length is None and not no_body:
            # Upstream streamed without a length (chunked): re-frame with one, so keep-alive stays simple.
            payload = response.read()
            blocks: Iterator[bytes] = iter([payload])
            length = str(len(payload))
        else:
            blocks = iter(lambda: response.read(_BLOCK), b"")
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
        for block in blocks:
            entry.body_bytes += len(block)
            try:
                self.wfile.write(block)
            except OSError:
                # The client went away mid-body: this block did not arrive, and the origin stops here too.
                entry.body_bytes -= len(block)
                self._drop_connection()
                self.close_connection = True
                return

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
