"""The step loop's HTTP wire: aiohttp under the backends' httpx-shaped contract.

:class:`AiohttpWire` sends a try with aiohttp (its HTTP parser is in C, its pool is cheap
with hundreds of connections) and hands back an ``httpx.Response``, raising httpx's
exceptions, so that ``worker.backends.client.judge`` and ``transport_failure`` judge it
exactly as they judge the sync client's tries. Measured on this project's machine against
the emulator (3,000 PUTs, 100 at once): 0.26 CPU ms per call, against 1.37 for
``httpx.AsyncClient`` (httpcore's async pool and anyio) and 0.71 for the sync
``httpx.Client`` one call at a time. Redirects are not followed (as with httpx).
"""

from __future__ import annotations

import json as jsonlib
import ssl
from typing import Any

import aiohttp
import httpx

from worker.settings import BackendSettings


class AiohttpWire:
    """One aiohttp session for the three backends, created on first use on the loop that
    uses it; a pool of up to ``connections`` kept-alive connections (HTTP/1.1)."""

    def __init__(self, settings: BackendSettings, connections: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                              sock_read=settings.read_timeout)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._connections, limit_per_host=0,
                                             ttl_dns_cache=300,
                                             ssl=ssl.create_default_context())
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout,
                                                  auto_decompress=True)
        return self._session

    async def request(self, method: str, url: str, *, json: Any = None,
                      headers: dict[str, str] | None = None, **_: Any) -> httpx.Response:
        """One try; raises httpx's exceptions when no answer came (see the module
        docstring)."""
        sent = dict(headers or {})
        data = None
        if json is not None:
            data = jsonlib.dumps(json, ensure_ascii=False, separators=(",", ":")).encode()
            sent["Content-Type"] = "application/json"
        request = httpx.Request(method, url)
        try:
            async with self._open().request(method, url, data=data, headers=sent,
                                            allow_redirects=False) as answer:
                content = await answer.read()
                return httpx.Response(
                    answer.status, content=content, request=request,
                    headers=[(k.decode("latin-1"), v.decode("latin-1"))
                             for k, v in answer.raw_headers])
        except (aiohttp.InvalidUrlClientError, aiohttp.NonHttpUrlClientError) as exc:
            raise httpx.UnsupportedProtocol(str(exc), request=request) from exc
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timeout", request=request) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise httpx.ReadTimeout(str(exc) or "read timeout", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise httpx.RemoteProtocolError(str(exc) or "server disconnected",
                                            request=request) from exc
        except aiohttp.ClientError as exc:  # payload, reset, OS errors mid-answer
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
