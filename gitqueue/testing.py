"""Real git servers on loopback, for tests and benchmarks.

Two servers with the same small interface, both listening on 127.0.0.1 only:

* :class:`GitDaemon` runs stock ``git daemon`` (``git://`` URLs).
* :class:`SmartHTTPServer` runs ``git http-backend`` as CGI behind a threaded
  Python HTTP server (``http://`` URLs).
* :class:`SSHServer` runs OpenSSH's ``sshd`` (``ssh://`` URLs, key login as the
  user running it; needs the ``openssh-server`` package).

Both serve every repository below ``base_path`` (no export marker needed) and
accept pushes without authentication.  Both are context managers::

    with SmartHTTPServer(tmp_path) as server:
        make_bare_repo(tmp_path / "queue.git")
        subprocess.run(["git", "clone", server.url("queue.git"), "work"])

``port`` is fixed when the object is created and stays the same across
``stop()``/``start()``, so a test can take the server away mid-run and bring it
back on the same URL.  ``stop()`` behaves like an outage: the port is closed
at once and in-flight connections are cut (an update that git had already
started applying may still land).  ``GitDaemon.stop()`` lets a connection
that is still working finish first, for up to STOP_GRACE seconds, so that the
outage never leaves a ref locked (see its docstring).
"""

from __future__ import annotations

import base64
import getpass
import io
import os
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Self

from gitqueue import leftovers

__all__ = ["GitDaemon", "SSHServer", "SmartHTTPServer", "free_port", "make_bare_repo"]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0  # seconds to wait for a server to accept connections
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL / to wait for the port

# Variables that point git at a particular repository (`git rev-parse
# --local-env-vars`).  They must not leak from the caller (e.g. a test run
# from a git hook) into the server processes.
_LOCAL_GIT_ENV = frozenset(
    (
        "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS",
        "GIT_CONFIG_COUNT", "GIT_OBJECT_DIRECTORY", "GIT_DIR", "GIT_WORK_TREE",
        "GIT_IMPLICIT_WORK_TREE", "GIT_GRAFT_FILE", "GIT_INDEX_FILE",
        "GIT_NO_REPLACE_OBJECTS", "GIT_REPLACE_REF_BASE", "GIT_PREFIX",
        "GIT_INTERNAL_SUPER_PREFIX", "GIT_SHALLOW_FILE", "GIT_COMMON_DIR",
    )
)  # fmt: skip


def _server_env() -> dict[str, str]:
    """The caller's environment without repository-selecting git variables."""
    return {k: v for k, v in os.environ.items() if k not in _LOCAL_GIT_ENV}


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is not reserved: another process could take it before use.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_bare_repo(path: Path) -> Path:
    """Create a bare repository at ``path`` whose initial branch is ``main``.

    ``http.receivepack`` is set to true so the repository accepts pushes over
    smart HTTP without authentication (any server, not only ours).  Everything
    else is git's default; in particular ``receive.denyNonFastForwards`` is
    off, so a forced push is accepted.  Returns ``path``.
    """
    env = _server_env()
    subprocess.run(
        ["git", "init", "--quiet", "--bare", "--initial-branch=main", str(path)],
        check=True,
        env=env,
    )
    subprocess.run(
        ["git", "-C", str(path), "config", "http.receivepack", "true"],
        check=True,
        env=env,
    )
    return path


def _port_open(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate()`` until true; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_running(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies awaiting their reaper do not)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return not leftovers.ENABLED or bool(leftovers.members(pgid))  # without /proc a zombie counts


class _Server:
    """Shared port handling and context-manager protocol."""

    scheme = ""
    _proc: subprocess.Popen[bytes] | None = None  # the server process, for those that run one

    def __init__(self, base_path: Path, port: int | None = None, log_path: Path | None = None) -> None:
        self.base_path = Path(base_path).resolve()
        self.port: int = free_port() if port is None else port
        self.log_path = log_path

    def url(self, repo_name: str) -> str:
        """URL of the repository ``base_path / repo_name``."""
        return f"{self.scheme}://{HOST}:{self.port}/{repo_name}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _open_log(self) -> BinaryIO | None:
        return None if self.log_path is None else open(self.log_path, "ab")

    def _launch(self, cmd: list[str], what: str) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a session of its own (stop() signals its whole process group, the
        per-connection children included), its output in the log; return once the port
        accepts connections. RuntimeError if it exits first (e.g. the port is taken),
        TimeoutError if it does not listen within START_TIMEOUT seconds."""
        log = self._open_log()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log or subprocess.DEVNULL,
                stderr=log or subprocess.DEVNULL,
                env=_server_env(),
                start_new_session=True,
            )
        finally:
            if log is not None:
                log.close()  # the child holds its own descriptor
        self._proc = proc

        def ready() -> bool:
            if proc.poll() is not None:
                self._proc = None
                raise RuntimeError(
                    f"{what} exited with {proc.returncode} on port {self.port}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            return _port_open(self.port)

        try:
            _wait_until(ready, START_TIMEOUT, f"{what} on port {self.port}")
        except TimeoutError:
            self.stop()
            raise
        return proc


class GitDaemon(_Server):
    """``git daemon`` serving ``base_path`` on ``git://127.0.0.1:port/``.

    Every repository under ``base_path`` is exported and accepts pushes
    (``--export-all --enable=receive-pack``); there is no connection limit.
    The daemon's output goes to ``log_path`` if given, else is discarded.

    Stock ``git daemon`` behaviour worth knowing when measuring:

    * it does not set TCP_NODELAY, so request/response exchanges stall on
      Nagle + delayed ACK (~40 ms per ls-remote/fetch/push on loopback);
    * it listens with a backlog of 5, so a burst of many simultaneous
      connections (~100) overflows it and some clients fail with
      "Connection reset by peer" instead of a clean rejection.
    """

    scheme = "git"

    def __init__(self, base_path: Path, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(base_path, port, log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon; return once the port accepts connections.

        Raises RuntimeError if the daemon exits (e.g. port taken) and
        TimeoutError if it does not listen within START_TIMEOUT seconds.
        """
        if self._proc is not None:
            raise RuntimeError("GitDaemon already started")
        if _port_open(self.port):  # else we might mistake that server for ours
            raise RuntimeError(f"port {self.port} is already in use")
        cmd = [
            "git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
            "--enable=receive-pack", "--max-connections=0",
            f"--base-path={self.base_path}", f"--listen={HOST}", f"--port={self.port}",
        ]  # fmt: skip
        self._launch(cmd, "git daemon")

    def stop(self) -> None:
        """Kill the daemon and its children; return once they are gone and the port is closed.

        Sends SIGTERM to the process group, which ends the daemon (the port closes at
        once) but not the per-connection processes: ``git daemon`` starts them ignoring
        SIGTERM. They get up to STOP_GRACE seconds to finish, and whatever is left then
        (a connection held in a hook, say) gets SIGKILL.  Killing them at once instead
        can stop a ``receive-pack`` between locking the branch and moving it: that leaves
        ``refs/heads/main.lock`` behind, and the restarted server refuses every push to
        the branch, as after a real crash (5 stops in 40 did so under load). Idempotent.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            _wait_until(
                lambda: proc.poll() is not None and not _group_running(proc.pid),
                STOP_GRACE,
                f"git daemon on port {self.port} to stop",
            )
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _wait_until(lambda: not _port_open(self.port), STOP_GRACE, f"port {self.port} to close")


class _CGIHandler(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` for each request (one request per connection).

    Request bodies (plain or ``Transfer-Encoding: chunked``) are read into
    memory and fed to the backend; its CGI output is parsed and streamed back.
    Responses carry ``Connection: close`` and are delimited by closing.
    """

    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # so that "Expect: 100-continue" is honoured
    timeout = 60  # seconds; a silent client cannot block stop() forever

    def do_GET(self) -> None:
        self._run_backend()

    def do_POST(self) -> None:
        self._run_backend()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) != length:
            raise ValueError("request body shorter than Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            size_line = self.rfile.readline(1024)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                break
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(3).strip():
                raise ValueError("truncated or malformed chunked request body")
            parts.append(chunk)
        while self.rfile.readline(65537).strip():  # optional trailer headers
            pass
        return b"".join(parts)

    def _cgi_env(self, body_length: int) -> dict[str, str]:
        path, _, query = self.path.partition("?")
        env = _server_env()
        for key in [k for k in env if k.startswith("HTTP_")] + ["REMOTE_USER"]:
            env.pop(key, None)
        env.update(
            GIT_PROJECT_ROOT=str(self.server.base_path),
            GIT_HTTP_EXPORT_ALL="1",
            # Accept pushes although no user is authenticated.
            GIT_CONFIG_COUNT="1",
            GIT_CONFIG_KEY_0="http.receivepack",
            GIT_CONFIG_VALUE_0="true",
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL=self.request_version,
            SERVER_SOFTWARE="gitqueue.testing",
            REQUEST_METHOD=self.command,
            PATH_INFO=path,
            QUERY_STRING=query,
            REMOTE_ADDR=self.client_address[0],
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
            CONTENT_LENGTH=str(body_length),
        )
        for name, value in self.headers.items():  # standard CGI HTTP_* variables
            key = name.upper().replace("-", "_")
            if key.replace("_", "").isalnum() and key not in (
                "CONTENT_TYPE", "CONTENT_LENGTH", "TRANSFER_ENCODING"
            ):  # fmt: skip
                env["HTTP_" + key] = value
        if "Git-Protocol" in self.headers:
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        return env

    def _run_backend(self) -> None:
        self.close_connection = True
        if not self._authorised():
            return
        try:
            body = self._read_body()
        except ValueError as e:
            self.send_error(400, str(e))
            return
        proc = subprocess.Popen(
            ["git", "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.server.log or subprocess.DEVNULL,
            env=self._cgi_env(len(body)),
        )
        assert proc.stdin is not None
        assert isinstance(proc.stdout, io.BufferedReader)
        # Feed stdin from a thread: the backend may write before reading it all.
        feeder = threading.Thread(target=_feed, args=(proc.stdin, body), daemon=True)
        feeder.start()
        try:
            self._relay(proc.stdout)
        finally:
            proc.stdout.close()
            proc.wait()
            feeder.join()

    def _authorised(self) -> bool:
        """With ``auth`` on the server, answer 401 to a request without those credentials."""
        expected = self.server.auth
        if expected is None:
            return True
        token = base64.b64encode(f"{expected[0]}:{expected[1]}".encode()).decode()
        if self.headers.get("Authorization", "") == f"Basic {token}":
            return True
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="gitqueue test"')
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        return False

    def _relay(self, out: io.BufferedReader) -> None:
        """Turn CGI output into an HTTP response, streamed to the client."""
        status = "200 OK"
        headers: list[str] = []
        while True:
            line = out.readline().rstrip(b"\r\n").decode("latin-1")
            if not line:
                break
            name, _, value = line.partition(":")
            if name.strip().lower() == "status":
                status = value.strip()
            else:
                headers.append(f"{name.strip()}: {value.strip()}")
        self.log_request(status.split(" ", 1)[0])
        head = "\r\n".join([f"{self.protocol_version} {status}", *headers, "Connection: close", "", ""])
        # Headers and the first piece of body in one write (no tiny packets).
        data = head.encode("latin-1") + out.read1(65536)
        while data:
            self.wfile.write(data)
            data = out.read1(65536)

    def log_message(self, format: str, *args: Any) -> None:
        log = self.server.log
        if log is not None:
            log.write(("http: " + format % args + "\n").encode("utf-8", "replace"))
            log.flush()


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except BrokenPipeError:
        pass  # the backend gave up early; its response says why
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with TCP_NODELAY, a deep backlog and abortable
    connections."""

    allow_reuse_address = True
    daemon_threads = False  # server_close() joins the handler threads
    block_on_close = True
    request_queue_size = 128  # many concurrent pushers connect at once

    def __init__(self, port: int, base_path: Path, log: BinaryIO | None, auth: tuple[str, str] | None = None) -> None:
        self.base_path = base_path
        self.log = log
        self.auth = auth
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__((HOST, port), _CGIHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = self.socket.accept()
        # Without this, a request/response exchange can stall ~40 ms on
        # loopback (Nagle's algorithm vs. the client's delayed ACK).
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def abort_connections(self) -> None:
        """Cut every open client connection (handlers then finish quickly)."""
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Mostly clients that went away (or stop() cutting them off).
        if self.log is not None:
            self.log.write(f"http: error serving {client_address}\n".encode())
            self.log.write(traceback.format_exc().encode())
            self.log.flush()


class SmartHTTPServer(_Server):
    """Smart HTTP git server on ``http://127.0.0.1:port/``.

    A ThreadingHTTPServer in a background thread runs ``git http-backend``
    (CGI) per request, serving every repository under ``base_path``; pushes
    are allowed for all of them without authentication (with ``auth=(user,
    password)``, every request needs those basic-auth credentials, as behind a
    forge or an nginx ``auth_basic``, and others get 401).  Chunked request
    bodies (large pushes) and gzip-encoded ones (large fetch negotiations) are
    supported.  Backend stderr and request lines go to ``log_path`` if given.
    """

    scheme = "http"

    def __init__(
        self,
        base_path: Path,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        auth: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(base_path, port, log_path)
        self.auth = auth
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the port and serve in a background thread.

        The port accepts connections when this returns (it is bound and
        listening before the thread starts).
        """
        if self._server is not None:
            raise RuntimeError("SmartHTTPServer already started")
        log = self._open_log()
        try:
            self._server = _HTTPServer(self.port, self.base_path, log, self.auth)
        except BaseException:
            if log is not None:
                log.close()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"SmartHTTPServer:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the port; cut in-flight connections.

        Returns after the listening socket is closed and every handler thread
        (and its http-backend process) has finished.  Idempotent.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # serve_forever() returns; no more accept()
        assert self._thread is not None
        self._thread.join()
        server.abort_connections()
        server.server_close()  # closes the listening socket, joins handlers
        if server.log is not None:
            server.log.close()


class SSHServer(_Server):
    """OpenSSH's ``sshd`` on ``ssh://USER@127.0.0.1:port/``, as the user running it.

    Repositories are addressed by their absolute path below ``base_path``. Keys live in
    ``state`` (made once): the server's host key, a client key it accepts, and one it does
    not. The client's ssh reads its own config and known hosts from the real home folder
    (not ``$HOME``), so a test names them with :meth:`ssh_command` (``GIT_SSH_COMMAND``).
    """

    scheme = "ssh"

    def __init__(self, base_path: Path, state: Path, port: int | None = None, log_path: Path | None = None) -> None:
        super().__init__(base_path, port, log_path)
        self.state = Path(state).resolve()
        self.user = getpass.getuser()
        self.client_key = self.state / "client_key"
        self.stranger_key = self.state / "stranger_key"
        self.known_hosts = self.state / "known_hosts"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, repo_name: str) -> str:
        return f"ssh://{self.user}@{HOST}:{self.port}{self.base_path}/{repo_name}"

    def ssh_command(self, *, key: Path | None = None, known_hosts: Path | None = None) -> str:
        """A ``GIT_SSH_COMMAND`` that trusts this server (or ``known_hosts``) and logs in with
        ``key`` (the accepted client key unless told otherwise), never asking anything."""
        options = [
            "-F /dev/null", "-o BatchMode=yes", "-o IdentitiesOnly=yes", "-o StrictHostKeyChecking=yes",
            f"-o UserKnownHostsFile={known_hosts or self.known_hosts}", f"-i {key or self.client_key}",
        ]  # fmt: skip
        return "ssh " + " ".join(options)

    def _keys(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "client_key", "stranger_key"):
            if not (self.state / name).exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(self.state / name)],
                    check=True,
                )
        (self.state / "authorized_keys").write_text((self.state / "client_key.pub").read_text())
        host = (self.state / "host_key.pub").read_text().split()
        self.known_hosts.write_text(f"[{HOST}]:{self.port} {host[0]} {host[1]}\n")
        (self.state / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}", f"ListenAddress {HOST}", f"HostKey {self.state / 'host_key'}",
                    f"PidFile {self.state / 'sshd.pid'}", f"AuthorizedKeysFile {self.state / 'authorized_keys'}",
                    f"AllowUsers {self.user}", "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
                    "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                    "LogLevel VERBOSE", "",
                ]
            )
        )  # fmt: skip

    def start(self) -> None:
        """Start sshd; return once the port accepts connections."""
        if self._proc is not None:
            raise RuntimeError("SSHServer already started")
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not os.path.exists(sshd):
            raise RuntimeError("sshd is not installed (apt-get install openssh-server)")
        self._keys()
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self._launch([sshd, "-D", "-e", "-f", str(self.state / "sshd_config")], "sshd")

    def stop(self) -> None:
        """Stop sshd and its sessions; return once the port is closed. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            _wait_until(lambda: proc.poll() is not None, STOP_GRACE, f"sshd on port {self.port} to stop")
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        _wait_until(lambda: not _port_open(self.port), STOP_GRACE, f"port {self.port} to close")


REF_UPDATES_HOOK = """#!/bin/sh
# gitqueue.testing: one line per ref update the server accepted: time, receive-pack's pid, ref.
[ "$1" = committed ] || exit 0
now=$(date +%s.%N)
while read -r old new ref; do echo "$now $PPID $ref" >> {log}; done
"""


def log_ref_updates(remote: Path, log: Path) -> None:
    """Make the bare repository ``remote`` append every ref update it accepts to ``log`` (a
    ``reference-transaction`` hook): pushes of every kind, counted on the server. One push is
    one receive-pack, so the lines of one pid are one push however many refs it moved."""
    hook = remote / "hooks" / "reference-transaction"
    hook.write_text(REF_UPDATES_HOOK.replace("{log}", shlex.quote(str(log))))
    hook.chmod(0o755)


def ref_updates(log: Path) -> list[tuple[float, str, str]]:
    """What :func:`log_ref_updates` wrote: (server time, receive-pack's pid, ref) per update
    (the symbolic HEAD, logged beside the branch it points to, left out)."""
    found = []
    try:
        lines = log.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[2] != "HEAD":
            found.append((float(parts[0]), parts[1], parts[2]))
    return found
