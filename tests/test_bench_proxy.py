"""bench/proxy.py's LatencyProxy, which every fleet figure goes through: bytes pass intact, in
order and delayed both ways, and closing it with connections still open closes them all and
leaves no task of its own behind (asyncio reported such tasks in the middle of bench output)."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bench.proxy import LatencyProxy


@pytest.fixture
def echo() -> Iterator[int]:
    """An echo server on 127.0.0.1 (one thread per connection); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    server.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
    server.close()
    for conn in conns:
        conn.close()
    thread.join(timeout=10)


def _received(sock: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _closed(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (a reset, with bytes unread, is a close too)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_bytes_pass_intact_and_in_order_both_ways(echo: int) -> None:
    payload = bytes(range(256)) * 2000  # 512 KB: many chunks, each delayed
    with LatencyProxy(echo, delay=0.01) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert _received(sock, len(payload)) == payload
        sender.join()
        assert proxy.connections == 1
        started = time.monotonic()
        sock.sendall(b"ping")
        assert _received(sock, 4) == b"ping"
        assert time.monotonic() - started >= 2 * 0.01, "each way is delayed"


def test_closing_with_connections_open_leaves_no_task_pending(echo: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    socks = []
    with LatencyProxy(echo, delay=0.2) as proxy:
        for n in range(8):
            sock = socket.create_connection(("127.0.0.1", proxy.port))
            sock.sendall(b"x" * (n + 1))  # still in the proxy's delay when it closes
            socks.append(sock)
        socks[0].sendall(b"y")  # a second chunk on one of them
    for sock in socks:
        sock.settimeout(10)
        assert _closed(sock), "the proxy closed every connection on exit"
        sock.close()
    gc.collect()
    assert not [r.getMessage() for r in caplog.records], "a task of the proxy outlived it"
