"""What a remote's failures look like to a user: git's own words, at once when retrying cannot
help (a refused password, no repository there), retried for ``--patience`` when it can."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli import gq

from gitqueue import Queue, config
from gitqueue.errors import AuthenticationFailed, QueueNotFound, RemoteUnavailable
from gitqueue.git import remote_error, ssh_socket
from gitqueue.gitstore import GitStore
from gitqueue.testing import SmartHTTPServer, SSHServer, free_port, make_bare_repo

USER, PASSWORD = "alice", "s3cret"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    """An initialised queue served over smart HTTP that wants basic auth (alice / s3cret)."""
    base = tmp_path / "srv"
    Queue.init(str(make_bare_repo(base / "queue.git"))).close()
    with SmartHTTPServer(base, auth=(USER, PASSWORD)) as server:
        yield server.url("queue.git")


class FakeTime:
    """The clock and sleep a Queue is given: sleeping moves the clock, nobody waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_refused_password_is_reported_at_once_in_gits_words(guarded: str) -> None:
    time = FakeTime()
    with pytest.raises(AuthenticationFailed, match=r"Authentication failed for 'http://127\.0\.0\.1:\d+/queue\.git/'"):
        Queue.open(guarded, clock=time.clock, sleep=time.sleep)
    assert time.slept == []  # not one retry: no password gets better by waiting


def test_a_refused_password_exits_6_without_waiting_out_the_patience(guarded: str) -> None:
    result = gq("--patience", "600", "ls", "--queue", guarded, code=6)
    assert "Authentication failed" in result.stderr and "credential helper" in result.stderr
    assert config.patience() == 120  # one command's --patience does not outlive it


def test_the_right_credentials_from_a_credential_helper_get_in(guarded: str, isolated_env: Path) -> None:
    store = isolated_env / "git-credentials"
    store.write_text(f"http://{USER}:{PASSWORD}@{guarded.split('/')[2]}\n")
    subprocess.run(["git", "config", "--global", "credential.helper", f"store --file={store}"], check=True)
    gq("submit", "--id", "t1", "lr=0.1", "--queue", guarded)
    with Queue.open(guarded) as q:
        assert [t.id for t in q.tasks("pending")] == ["t1"]


def test_no_repository_at_that_address_is_final(tmp_path: Path) -> None:
    time = FakeTime()
    (tmp_path / "srv").mkdir()
    with SmartHTTPServer(tmp_path / "srv") as server, pytest.raises(QueueNotFound, match="not a git repository"):
        Queue.open(server.url("nothing-here.git"), clock=time.clock, sleep=time.sleep)
    assert time.slept == []


def test_a_refused_connection_is_retried_for_the_patience_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    time = FakeTime()
    url = f"http://127.0.0.1:{free_port()}/queue.git"
    with caplog.at_level(logging.WARNING, logger="gitqueue"), pytest.raises(RemoteUnavailable) as caught:
        Queue.open(url, patience=30, clock=time.clock, sleep=time.sleep)
    assert "Failed to connect to 127.0.0.1" in str(caught.value)
    assert (
        len(time.slept) > 3 and 30 - 5 <= sum(time.slept) <= 30 + 7.5
    )  # the patience, give or take one jittered pause
    told = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert len(told) == 1 and "Failed to connect" in told[0] and "up to 30s" in told[0]


def test_patience_from_the_environment() -> None:
    url = f"git://127.0.0.1:{free_port()}/queue.git"
    result = gq("status", "--queue", url, code=5, env={"GITQUEUE_PATIENCE": "0"})
    assert "Connection refused" in result.stderr
    assert "GITQUEUE_PATIENCE" in gq("status", "--queue", url, code=2, env={"GITQUEUE_PATIENCE": "soon"}).stderr


def test_ssh_says_connection_refused_not_only_its_last_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real ssh client against a closed port on loopback."""
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=5")
    with pytest.raises(RemoteUnavailable) as caught:
        Queue.open(f"ssh://git@127.0.0.1:{free_port()}/srv/queue.git", patience=0)
    message = str(caught.value)
    assert "Connection refused" in message
    assert "and the repository exists" not in message and "correct access rights" not in message


@pytest.mark.parametrize(
    "stderr",
    [
        # what git over ssh prints for a key the server does not take, and for an unknown host key
        "git@127.0.0.1: Permission denied (publickey).\r\nfatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.\n",
        "Host key verification failed.\r\nfatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.\n",
        "remote: HTTP Basic: Access denied\nfatal: Authentication failed for 'https://gitlab.example/q.git/'\n",
    ],
)
def test_ssh_and_forge_refusals_are_authentication_failures(stderr: str) -> None:
    error = remote_error("ssh://git@127.0.0.1/q.git", stderr, doing="fetch from")
    assert isinstance(error, AuthenticationFailed) and error.exit_code == 6
    first = stderr.splitlines()[0].strip().removeprefix("remote: ")
    assert first in str(error) and "and the repository exists" not in str(error)


# ---------------------------------------------------------------- one ssh connection per cache


@pytest.fixture
def short_cache() -> Iterator[Path]:
    """A cache folder with a short path, as ~/.cache/gitqueue is: a control socket's path must
    fit in 108 bytes, which a deep pytest folder may not leave room for."""
    folder = Path(tempfile.mkdtemp(prefix="gq-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_ssh_remotes_reuse_one_connection_per_cache(
    tmp_path: Path, short_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git runs ssh with ControlMaster=auto and a control socket in the cache: seen in the
    arguments the real ssh client gets (a wrapper on PATH logs them, then runs ssh)."""
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.delenv("GIT_SSH", raising=False)
    bin_dir, log = tmp_path / "bin", tmp_path / "ssh-args"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {shutil.which("ssh")} -o BatchMode=yes "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    store = GitStore(f"ssh://git@127.0.0.1:{free_port()}/srv/queue.git", cache=short_cache)
    with store, pytest.raises(RemoteUnavailable, match="Connection refused"):
        store.fetch()
    control = ssh_socket(store.url, store.path.parent)
    assert control.parent == short_cache  # beside the caches: one connection per remote, any branch
    assert f"-o ControlMaster=auto -o ControlPersist=60 -o ControlPath={control}" in log.read_text()
    assert GitStore("git@127.0.0.1:srv/queue.git", cache=short_cache).git_env["GIT_SSH_COMMAND"].startswith("ssh ")


def test_a_users_own_ssh_command_wins(short_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = "ssh://git@127.0.0.1:2222/srv/queue.git"
    monkeypatch.setenv("GIT_SSH_COMMAND", "ssh -i ~/.ssh/lab_key")
    assert GitStore(url, cache=short_cache).git_env == {}
    monkeypatch.delenv("GIT_SSH_COMMAND")
    subprocess.run(["git", "config", "--global", "core.sshCommand", "ssh -i ~/.ssh/lab_key"], check=True)
    assert GitStore(url, cache=short_cache).git_env == {}
    subprocess.run(["git", "config", "--global", "--unset", "core.sshCommand"], check=True)
    assert "ControlMaster=auto" in GitStore(url, cache=short_cache).git_env["GIT_SSH_COMMAND"]


def test_other_transports_get_no_ssh_command(tmp_path: Path, bare_remote: Path) -> None:
    for url in (str(bare_remote), "http://127.0.0.1:1/q.git", "git://127.0.0.1:1/q.git", "file:///srv/q.git"):
        assert GitStore(url, cache=tmp_path / "c").git_env == {}


# ---------------------------------------------------------------- over a real sshd


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SSHServer]:
    """OpenSSH's sshd on loopback serving tmp_path/srv, with an initialised queue in queue.git."""
    base = tmp_path / "srv"
    Queue.init(str(make_bare_repo(base / "queue.git"))).close()
    with SSHServer(base, tmp_path / "sshd", log_path=tmp_path / "sshd.log") as server:
        yield server


def test_over_ssh_the_right_key_drains_the_queue(sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_SSH_COMMAND", sshd.ssh_command())
    with Queue.open(sshd.url("queue.git"), worker="box/0") as q:
        q.submit([{"id": "t1", "args": {"n": 1}}])
        with q.claim() as run:
            assert run.id == "t1"
    with Queue.open(str(sshd.base_path / "queue.git")) as q:
        assert [t.id for t in q.tasks("done")] == ["t1"]


def test_over_ssh_a_rejected_key_is_reported_at_once(sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_SSH_COMMAND", sshd.ssh_command(key=sshd.stranger_key))
    time = FakeTime()
    with pytest.raises(AuthenticationFailed, match=r"Permission denied \(publickey\)") as caught:
        Queue.open(sshd.url("queue.git"), clock=time.clock, sleep=time.sleep)
    assert time.slept == [] and "and the repository exists" not in str(caught.value)


def test_over_ssh_an_unknown_host_key_exits_6(sshd: SSHServer, tmp_path: Path) -> None:
    empty = tmp_path / "no-known-hosts"
    empty.write_text("")
    env = {"GIT_SSH_COMMAND": sshd.ssh_command(known_hosts=empty)}
    result = gq("--patience", "600", "ls", "--queue", sshd.url("queue.git"), code=6, env=env)
    assert "Host key verification failed" in result.stderr


def test_over_ssh_no_repository_there_is_final(sshd: SSHServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_SSH_COMMAND", sshd.ssh_command())
    time = FakeTime()
    with pytest.raises(QueueNotFound, match="does not appear to be a git repository"):
        Queue.open(sshd.url("elsewhere.git"), clock=time.clock, sleep=time.sleep)
    assert time.slept == []


def test_over_ssh_fetches_and_pushes_share_one_connection(
    sshd: SSHServer, short_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real sshd, gitqueue's own ssh command keeps one connection open for a cache.

    The user's ssh settings (this server's host key and the client key) come from an ``ssh``
    earlier on PATH that adds them, as a user's ~/.ssh/config would: gitqueue's command is
    then in force, since GIT_SSH_COMMAND and core.sshCommand stay unset."""
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_ssh = shutil.which("ssh")
    user_settings = sshd.ssh_command().removeprefix("ssh ")
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nexec {real_ssh} {user_settings} "$@"\n')
    (bin_dir / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    control = None
    try:
        with Queue.open(sshd.url("queue.git"), worker="box/0", cache=short_cache) as q:
            control = ssh_socket(q.store.url, q.store.path.parent)
            q.submit([{"id": f"t{n}", "args": {"n": n}} for n in range(3)])
            for _ in range(3):
                with q.claim() as run:
                    assert run.id.startswith("t")
            assert control.exists()
        with Queue.open(str(sshd.base_path / "queue.git")) as q:
            assert sorted(t.id for t in q.tasks("done")) == ["t0", "t1", "t2"]
        log = (tmp_path / "sshd.log").read_text()
        assert log.count("Accepted publickey") == 1  # one login (one handshake) ...
        assert log.count("Starting session") >= 7  # ... for all the fetches and pushes
    finally:
        if control is not None:
            subprocess.run([real_ssh or "ssh", "-o", f"ControlPath={control}", "-O", "exit", "x"], capture_output=True)
