"""The loopback git servers of gitqueue.testing, exercised with real git.

Every test runs against both `git daemon` and smart HTTP.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitqueue.testing import GitDaemon, SmartHTTPServer, make_bare_repo

Server = GitDaemon | SmartHTTPServer

# Hermetic git: no user/system config, fixed identity, never prompt.
GIT_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


def git(*args: str | Path, cwd: Path | None = None) -> str:
    """Run git; return its stripped stdout, failing the test with stderr."""
    proc = subprocess.run(["git", *map(str, args)], cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {args} failed:\n{proc.stderr}"
    return proc.stdout.strip()


def git_fails(*args: str | Path, cwd: Path | None = None) -> bool:
    proc = subprocess.run(["git", *map(str, args)], cwd=cwd, env=GIT_ENV, capture_output=True)
    return proc.returncode != 0


def commit_file(repo: Path, name: str, content: bytes) -> str:
    """Commit `content` as `name` in the work tree `repo`; return the sha."""
    (repo / name).write_bytes(content)
    git("add", name, cwd=repo)
    git("commit", "--quiet", "--message", f"add {name}", cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def remote_main(url: str) -> str:
    """The sha of refs/heads/main on the server ('' if it has none)."""
    out = git("ls-remote", url, "refs/heads/main")
    return out.split()[0] if out else ""


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # the process exited while we looked
        if text in args:
            found.append(args)
    return found


@pytest.fixture(params=["daemon", "http"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    base = tmp_path / "served"
    base.mkdir()
    kind: type[Server] = GitDaemon if request.param == "daemon" else SmartHTTPServer
    with kind(base, log_path=tmp_path / "server.log") as srv:
        yield srv


@pytest.fixture
def url(server: Server) -> str:
    """URL of a fresh, empty bare repository on the server."""
    make_bare_repo(server.base_path / "queue.git")
    return server.url("queue.git")


def test_clone_push_round_trip(url: str, tmp_path: Path) -> None:
    git("clone", "--quiet", url, tmp_path / "a")
    sha = commit_file(tmp_path / "a", "task.yaml", b"title: hello\n")
    git("push", "--quiet", "origin", "HEAD:main", cwd=tmp_path / "a")

    assert remote_main(url) == sha
    git("clone", "--quiet", url, tmp_path / "b")
    assert (tmp_path / "b" / "task.yaml").read_bytes() == b"title: hello\n"


def test_large_push(server: Server, url: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    git("init", "--quiet", "--initial-branch=main", work)
    sha = commit_file(work, "blob.bin", os.urandom(3 * 1024 * 1024))
    trace = tmp_path / "curl-trace"
    proc = subprocess.run(
        ["git", "push", "--quiet", url, "HEAD:main"],
        cwd=work,
        env={**GIT_ENV, "GIT_TRACE_CURL": str(trace), "GIT_TRACE_CURL_NO_DATA": "1"},
        capture_output=True,
        text=True,
    )

    assert proc.returncode == 0, proc.stderr
    assert remote_main(url) == sha
    if isinstance(server, SmartHTTPServer):  # the case this test is about
        assert "Transfer-Encoding: chunked" in trace.read_text(errors="replace")


@pytest.mark.slow
def test_concurrent_pushes_exactly_one_wins(url: str, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    git("init", "--quiet", "--initial-branch=main", seed)
    parent = commit_file(seed, "README", b"queue\n")
    git("push", "--quiet", url, "HEAD:main", cwd=seed)
    clones = [tmp_path / f"worker{i}" for i in range(16)]
    heads = []
    for i, clone in enumerate(clones):
        git("clone", "--quiet", seed, clone)
        heads.append(commit_file(clone, f"claim-{i}", b"mine\n"))
    assert len(set(heads)) == len(clones)

    pushes = [
        subprocess.Popen(
            ["git", "push", "--quiet", url, "HEAD:refs/heads/main"],
            cwd=clone,
            env=GIT_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for clone in clones
    ]
    errors = [p.communicate(timeout=60)[1].decode() for p in pushes]

    winners = [head for head, p in zip(heads, pushes, strict=True) if p.returncode == 0]
    assert len(winners) == 1, errors
    assert remote_main(url) == winners[0] != parent


def test_stop_and_start_on_same_port(server: Server, url: str, tmp_path: Path) -> None:
    git("clone", "--quiet", url, tmp_path / "work")
    sha = commit_file(tmp_path / "work", "a", b"a\n")
    git("push", "--quiet", "origin", "HEAD:main", cwd=tmp_path / "work")
    port = server.port

    server.stop()
    server.stop()  # idempotent
    assert not port_open(port)
    assert processes_mentioning(f"--port={port}") == []
    assert git_fails("fetch", "--quiet", "origin", cwd=tmp_path / "work")
    # Meanwhile the repository changes behind the server's back.
    newer = commit_file(tmp_path / "work", "b", b"b\n")
    git("push", "--quiet", server.base_path / "queue.git", "HEAD:main", cwd=tmp_path / "work")

    server.start()
    assert server.port == port
    assert server.url("queue.git") == url
    assert git("rev-parse", "origin/main", cwd=tmp_path / "work") == sha
    git("fetch", "--quiet", "origin", cwd=tmp_path / "work")
    assert git("rev-parse", "origin/main", cwd=tmp_path / "work") == newer
