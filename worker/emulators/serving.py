"""What both emulators share on the wire: the :class:`Reply` they answer, and a threaded
HTTP/1.1 server that sends the replies of any :class:`Responder`.

A reply is independent of how it is sent: the same ``Reply`` goes out through
:class:`ReplyServer` (real HTTP, ``http.server``) or through an in-process
``httpx.MockTransport``. The server is deliberately small (the standard library's, as
werkzeug's ``serving`` module is for its development server): it reads a request with a
Content-Length body, asks the responder, and writes the reply on a kept-alive connection.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, Self

import structlog

__all__ = ["JSON", "Reply", "ReplyServer", "Responder"]

log = structlog.get_logger(__name__)

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, independent of the server or transport that sends it."""

    status: int
    content: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, status: int, body: object = None, headers: Iterable[tuple[str, str]] = (), *,
        content_type: str = JSON,
    ) -> Reply:
        """``body`` encoded: None is no content, a ``str`` is sent as text/plain, anything
        else as JSON with ``content_type``. The Content-Type header comes first, then
        ``headers`` in order."""
        extra = tuple(headers)
        if status == 204 or body is None:  # RFC 9110: a 204 has no content
            return cls(status, b"", extra)
        if isinstance(body, str):
            return cls(status, body.encode(), (("Content-Type", "text/plain"), *extra))
        return cls(status, json.dumps(body).encode(), (("Content-Type", content_type), *extra))


class Responder(Protocol):
    """Answers one request: method, request target (path and query), body, headers."""

    def __call__(self, method: str, raw_path: str, body: bytes, headers: Message) -> Reply: ...


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so that httpx's connection pool can keep connections alive.
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, the second waits for the
    # client's delayed ACK (about 40 ms) on every kept-alive request.
    disable_nagle_algorithm = True

    def _dispatch(self) -> None:
        assert isinstance(self.server, ReplyServer)
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            # The body's end would be unknown to this simple reader; refuse rather than
            # leave it in the kept-alive connection.
            self.close_connection = True
            self.send_error(411, "send a Content-Length")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.respond(self.command, self.path, body, self.headers)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.status != 204:
            self.send_header("Content-Length", str(len(reply.content)))
        self.end_headers()
        self.wfile.write(reply.content)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _dispatch  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:
        # http.server writes to stderr; route it through structlog instead.
        log.debug("emulator.http", message=format % args)


class ReplyServer(ThreadingHTTPServer):
    """``respond`` over real HTTP, one thread per connection. ``start()`` serves from a
    daemon thread; ``shutdown()`` stops it and closes the socket."""

    daemon_threads = True
    thread_name = "emulator"

    def __init__(self, address: tuple[str, int], respond: Responder) -> None:
        super().__init__(address, _Handler)
        self.respond = respond
        self._thread: threading.Thread | None = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer (a killed worker) is normal here: one log
        line, not a traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.info("emulator.client_gone", client=str(client_address), error=str(error))
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving (when started) and close the socket."""
        if self._thread is not None:
            super().shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()
