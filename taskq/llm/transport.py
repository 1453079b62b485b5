"""The SDK client's HTTP transport: its connection pool split in shards.

The HTTP library's pool looks at every connection it holds each time a request starts or an answer ends, and
probes the socket of each idle one (a system call): with hundreds of model calls in flight that scan was a
quarter of the worker's event-loop time. :class:`ShardedTransport` keeps the same total connection limit
in several smaller pools (:func:`sharded_transport`) and sends each request to the pool with the fewest
answers open, so each scan covers a few dozen connections. Behaviour is otherwise the library's own
(timeouts, errors, keep-alive).
"""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from typing import Any

SHARD_CONNECTIONS = 32  # connections a shard should hold at most (fewer shards for smaller limits)
MAX_SHARDS = 16


def keepalive_options() -> list[tuple[int, int, int]]:
    """TCP keep-alive as the anthropic SDK's default client sets it (probe after 60 s idle)."""
    options: list[tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPINTVL", 60), ("TCP_KEEPCNT", 5), ("TCP_KEEPIDLE", 60)):
        opt = getattr(socket, name, None)
        if opt is not None:
            options.append((socket.IPPROTO_TCP, opt, value))
    return options


def shard_count(max_connections: int) -> int:
    return max(1, min(MAX_SHARDS, max_connections // SHARD_CONNECTIONS))


def sharded_transport(httpx: Any, max_connections: int) -> Any:
    """A transport for ``httpx.AsyncClient(transport=...)`` (``httpx``: the SDK's HTTP library module)
    holding at most ``max_connections`` in all."""
    shards = shard_count(max_connections)
    per = math.ceil(max_connections / shards)
    sizes = [n for n in (min(per, max_connections - i * per) for i in range(shards)) if n > 0]
    tls = httpx.create_ssl_context()  # one for all shards (loading the CA bundle costs ~50 ms of CPU)
    transports = [httpx.AsyncHTTPTransport(verify=tls, limits=httpx.Limits(max_connections=n,
                                                                           max_keepalive_connections=n),
                                           socket_options=keepalive_options()) for n in sizes]

    class Counted(httpx.AsyncByteStream):
        """An answer's body; closing it frees its place in its shard's count (once)."""

        def __init__(self, stream: Any, open_: list[int], i: int) -> None:
            self._stream = stream
            self._open: list[int] | None = open_
            self._i = i

        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._stream.__aiter__()

        async def aclose(self) -> None:
            try:
                await self._stream.aclose()
            finally:
                if self._open is not None:
                    self._open[self._i] -= 1
                    self._open = None

    class ShardedTransport(httpx.AsyncBaseTransport):
        """Each request to the shard with the fewest open answers (open until the body is closed)."""

        def __init__(self) -> None:
            self.shards = transports
            self.open = [0] * len(transports)

        async def handle_async_request(self, request: Any) -> Any:
            open_ = self.open
            i = open_.index(min(open_))
            open_[i] += 1
            try:
                response = await self.shards[i].handle_async_request(request)
            except BaseException:
                open_[i] -= 1
                raise
            response.stream = Counted(response.stream, open_, i)
            return response

        async def aclose(self) -> None:
            for transport in self.shards:
                await transport.aclose()

    return ShardedTransport()
