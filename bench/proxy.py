"""A TCP proxy on 127.0.0.1 that adds a fixed one-way latency, as a forge far away would.

Every chunk read from one side is forwarded to the other ``delay`` seconds after it arrived,
in order, on sockets with TCP_NODELAY (so the proxy adds no Nagle stalls of its own: see
GIT-NOTES, "Stock git daemon ... lose ~40 ms per round trip"). An 80 ms round trip is
``LatencyProxy(upstream_port, delay=0.040)``. It runs in one background thread with an asyncio
loop and is a context manager: the listening socket and every connection close on exit, and
no task of its own outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any


class LatencyProxy:
    """Listen on 127.0.0.1:``port`` and forward to 127.0.0.1:``upstream`` with ``delay`` each way."""

    def __init__(self, upstream: int, *, delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """A task of the proxy's own, referenced until it ends (a task nothing references may be
        collected while it waits, and asyncio then reports it destroyed while pending)."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __enter__(self) -> LatencyProxy:
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._thread.start()
        self._loop.call_soon_threadsafe(self._spawn, self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            # Every task here is the proxy's own (its accept loop, each connection, each pipe and
            # its sender): cancelled, each closes what it holds. (Not asyncio.start_server: in
            # Python 3.11 closing it while connections are being accepted leaks their sockets,
            # and a cancelled connection handler is logged as an error.)
            for _ in range(10):  # a pipe's sender is cancelled by its pipe: again until none is left
                others = list(self._tasks)
                if not others:
                    break
                for task in others:
                    task.cancel()
                await asyncio.wait(others, timeout=10)
            self._listener.close()  # connections still waiting to be accepted are reset

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._listener.close()

    def url(self, name: str) -> str:
        """A ``git://`` URL through the proxy, for a ``git daemon`` upstream."""
        return f"git://127.0.0.1:{self.port}/{name}"

    async def _listen(self) -> None:
        """Accept connections until cancelled, each served by a task of its own."""
        while True:
            conn, _ = await self._loop.sock_accept(self._listener)
            self._spawn(self._accept(conn))

    async def _accept(self, conn: socket.socket) -> None:
        self.connections += 1
        writers: list[asyncio.StreamWriter] = []
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader, writer = await asyncio.open_connection(sock=conn)
            writers.append(writer)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            writers.append(up_writer)
            up_writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipes = self._spawn(self._pipe(reader, up_writer)), self._spawn(self._pipe(up_reader, writer))
            await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass  # the upstream is away
        finally:
            if not writers:
                conn.close()
            for w in writers:
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

        sender = self._spawn(send())
        try:
            while True:
                data = await reader.read(65536)
                chunks.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()  # the connection broke, or the proxy is closing (which waits for it)


@contextlib.contextmanager
def latency(upstream: int, *, delay: float) -> Iterator[LatencyProxy]:
    with LatencyProxy(upstream, delay=delay) as proxy:
        yield proxy
