"""An HTTP/1.1 server on one asyncio event loop: the emulators' answers with latency, and
no thread per request or connection.

:class:`AsyncReplyServer` reads requests with a Content-Length body on kept-alive
connections, awaits an :class:`AsyncResponder` and writes each reply in one write (so
Nagle's algorithm never holds a body back; TCP_NODELAY is set anyway). A thousand requests
waiting out an emulated latency are a thousand sleeping coroutines, so a benchmark measures
the worker rather than the emulator's threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from email.message import Message
from http import HTTPStatus
from typing import Protocol, Self

import structlog

from worker.emulators.serving import Reply

__all__ = ["AsyncReplyServer", "AsyncResponder"]

log = structlog.get_logger(__name__)

MAX_HEADER_BYTES = 64 * 1024


class AsyncResponder(Protocol):
    """Answers one request: method, request target (path and query), body, headers."""

    async def __call__(self, method: str, raw_path: str, body: bytes,
                       headers: Message) -> Reply: ...


def _encode(reply: Reply, keep_alive: bool) -> bytes:
    reason = HTTPStatus(reply.status).phrase if reply.status in HTTPStatus._value2member_map_ \
        else ""
    lines = [f"HTTP/1.1 {reply.status} {reason}"]
    lines.extend(f"{name}: {value}" for name, value in reply.headers)
    if reply.status != 204:
        lines.append(f"Content-Length: {len(reply.content)}")
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + (reply.content if reply.status != 204 else b"")


class AsyncReplyServer:
    """``respond`` over HTTP/1.1 from an event loop on a daemon thread (``start()``), or
    on the calling thread (``serve_forever()``). ``shutdown()`` stops it."""

    thread_name = "emulator"

    def __init__(self, address: tuple[str, int], respond: AsyncResponder, *,
                 nodelay: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.respond = respond
        self.nodelay = nodelay
        self.tls = tls  # serve HTTPS with this server-side context (tests of TLS clients)
        self._loop = asyncio.new_event_loop()
        self._socket = socket.create_server(address, reuse_port=False, backlog=1024)
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()  # open connections, closed at stop

    @property
    def server_address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, name=self.thread_name,
                                        daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` (or KeyboardInterrupt) on this thread."""
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, sock=self._socket, limit=MAX_HEADER_BYTES,
                                     ssl=self.tls))
            self._loop.run_forever()
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serving (when started): close every open connection on the loop, then stop
        it and close the socket."""
        if self._thread is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close_connections(), self._loop
                                                 ).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None
        self.server_close()

    async def _close_connections(self) -> None:
        if self._server is not None:
            self._server.close()
        # abort, not close: a TLS close waits for the peer's close_notify, which a client
        # keeping its connection alive never sends.
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)  # let the aborted transports finish closing

    def server_close(self) -> None:
        if self._server is not None:
            self._server.close()
        if not self._loop.is_running() and not self._loop.is_closed():
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            settle = asyncio.sleep(0)
            try:
                self._loop.run_until_complete(settle)
            except RuntimeError:  # another loop runs in this thread (e.g. Playwright's)
                settle.close()  # never awaited: closed, so no "never awaited" warning
            self._loop.close()
        self._socket.close()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None and self.nodelay:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while await self._one(reader, writer):
                pass
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # gone mid-request; an empty read is a client that hung up
                log.info("emulator.client_gone", error=f"{type(exc).__name__}: {exc}")
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            # A client that went away mid-answer (a killed worker, hundreds of connections
            # at once) is normal here.
            log.debug("emulator.client_gone", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection is to close."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = Message()
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip()] = value.strip()
        keep_alive = (version == "HTTP/1.1"
                      and headers.get("Connection", "").lower() != "close")
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            # The body's end would be unknown to this simple reader; refuse rather than
            # leave it in the kept-alive connection.
            writer.write(_encode(Reply.of(411, "send a Content-Length"), False))
            await writer.drain()
            return False
        length = int(headers.get("Content-Length") or 0)
        body = await reader.readexactly(length) if length else b""
        reply = await self.respond(method, target, body, headers)
        writer.write(_encode(reply, keep_alive))
        await writer.drain()
        return keep_alive
