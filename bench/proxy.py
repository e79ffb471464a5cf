"""A TCP proxy on 127.0.0.1 that adds a fixed one-way latency, as a forge far away would.

Every chunk read from one side is forwarded to the other ``delay`` seconds after it arrived,
in order, on sockets with TCP_NODELAY (so the proxy adds no Nagle stalls of its own: see
GIT-NOTES, "Stock git daemon ... lose ~40 ms per round trip"). An 80 ms round trip is
``LatencyProxy(upstream_port, delay=0.040)``. It runs in one background thread with an asyncio
loop and is a context manager: the listening socket and every connection close on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator


class LatencyProxy:
    """Listen on 127.0.0.1:``port`` and forward to 127.0.0.1:``upstream`` with ``delay`` each way."""

    def __init__(self, upstream: int, *, delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self) -> LatencyProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for _ in range(10):  # cancelling a connection's task may leave its pipes' tasks: again
                others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                if not others:
                    break
                for task in others:
                    task.cancel()
                await asyncio.gather(*others, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def url(self, name: str) -> str:
        """A ``git://`` URL through the proxy, for a ``git daemon`` upstream."""
        return f"git://127.0.0.1:{self.port}/{name}"

    async def _listen(self) -> asyncio.base_events.Server:
        return await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)
        except asyncio.CancelledError:
            pass  # the proxy is closing
        finally:
            for w in (writer, up_writer):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward chunks in order, each ``delay`` after it arrived; EOF follows the last one."""
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await chunks.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(65536)
                chunks.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)  # let it end before the loop stops
            raise


@contextlib.contextmanager
def latency(upstream: int, *, delay: float) -> Iterator[LatencyProxy]:
    with LatencyProxy(upstream, delay=delay) as proxy:
        yield proxy
