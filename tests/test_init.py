"""Where a queue lives and what `gitqueue init` does to a repository.

The queue's branch is the one the remote's HEAD names (what `git clone` checks out), so a
task a person pushes from a plain clone is one workers run. `init` refuses to put a queue
beside a project's code unless told which branch to use, guards a repository it creates
with the server hook, and never prints or stores a password a URL carries.
"""

from __future__ import annotations

import base64
import subprocess
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from clones import Clone
from conftest import RemoteRepo
from typer.testing import CliRunner, Result

from gitqueue import Queue
from gitqueue.cli import app
from gitqueue.errors import QueueNotFound
from gitqueue.hooks import MARK
from gitqueue.testing import GitDaemon, SmartHTTPServer
from gitqueue.urls import redact, scrub

runner = CliRunner()


def gq(*args: str | Path, code: int = 0, env: dict[str, str] | None = None) -> Result:
    result = runner.invoke(app, [str(a) for a in args], env=env)
    if result.exit_code != code:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"gitqueue {args}: exit {result.exit_code}, wanted {code}\n{result.output}\n{trace}")
    return result


def git(*args: str, cwd: Path) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def plain_bare(path: Path) -> Path:
    """`git init --bare` as a person types it: HEAD names git's own default, master."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "-c", "init.defaultBranch=master", "init", "-q", "--bare", str(path)], check=True)
    return path


def head_of(bare: Path) -> str:
    return git("symbolic-ref", "HEAD", cwd=bare).strip()


def branches_of(bare: Path) -> list[str]:
    return git("for-each-ref", "--format=%(refname:short)", "refs/heads/", cwd=bare).split()


@pytest.fixture(params=["path", "daemon", "http"])
def plain_remote(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh `git init --bare` remote (HEAD: master), over each transport: (url, bare path)."""
    bare = plain_bare(tmp_path / "srv" / "plain.git")
    if request.param == "path":
        yield str(bare), bare
        return
    server_class = GitDaemon if request.param == "daemon" else SmartHTTPServer
    with server_class(tmp_path / "srv") as server:
        yield server.url("plain.git"), bare


def code_repo(bare: Path, tmp_path: Path) -> Path:
    """A project's repository: main holds code, no queue."""
    plain_bare(bare)
    work = tmp_path / "project-work"
    git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    (work / "train.py").write_text("print('training')\n")
    (work / "README.md").write_text("# my project\n")
    git("add", "-A", cwd=work)
    git("-c", "user.name=Dev", "-c", "user.email=dev@example.org", "commit", "-q", "-m", "code", cwd=work)
    git("push", "-q", str(bare), "main", cwd=work)
    git("symbolic-ref", "HEAD", "refs/heads/main", cwd=bare)
    return bare


# ---------------------------------------------------------------- the queue's branch is the remote's HEAD


def test_a_task_pushed_from_a_plain_clone_of_a_plain_bare_repository_runs(
    plain_remote: tuple[str, Path], tmp_path: Path
) -> None:
    """`git init --bare` names master: the queue goes there, so a clone shows it and a task
    a person writes and pushes with a bare `git push` is the one a worker claims."""
    url, bare = plain_remote
    with Queue.init(url, worker="w/0") as q:
        assert q.branch == "master"
        assert q.head_warning() is None
    assert branches_of(bare) == ["master"] and head_of(bare) == "refs/heads/master"
    alice = Clone(url, tmp_path / "alice")
    assert (alice.path / "gitqueue.yaml").is_file(), "git clone checks out the queue"
    alice.write("pending/by-hand.yaml", "args: {lr: 0.3}\n")
    alice.commit("a task by hand")
    alice.run("push", "-q")  # to wherever the clone's branch goes: no refspec
    with Queue.open(url, worker="gpu/0") as worker:
        run = worker.claim()
        assert run is not None and run.id == "by-hand" and run.args == {"lr": 0.3}
        run.done()
    assert "done/by-hand.yaml" in git("ls-tree", "-r", "--name-only", "master", cwd=bare).split()


def test_branch_chooses_and_a_local_head_is_pointed_at_it(tmp_path: Path) -> None:
    bare = plain_bare(tmp_path / "srv" / "q.git")
    result = gq("init", bare, "--branch", "queue")
    assert "on branch queue" in result.stdout
    assert head_of(bare) == "refs/heads/queue" and branches_of(bare) == ["queue"]
    assert "branch: queue" in (Path.cwd() / ".gitqueue").read_text()
    gq("submit", "--id", "one", "lr=0.1")  # later commands find the branch in .gitqueue
    clone = Clone(str(bare), tmp_path / "clone")
    assert (clone.path / "pending" / "one.yaml").is_file()


def test_an_old_queue_on_main_under_a_master_head_is_found_warned_about_and_mended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queues made before: on main, while HEAD names a master that does not exist. Commands
    still find the queue; status, validate and workers warn; init again points HEAD at main."""
    bare = plain_bare(tmp_path / "srv" / "old.git")
    with Queue.init(str(bare), branch="main", worker="w/0") as q:
        q.submit([{"id": "t1", "args": {"n": 1}}])
    git("symbolic-ref", "HEAD", "refs/heads/master", cwd=bare)  # as an old gitqueue left it
    with Queue.open(str(bare)) as q:
        assert q.branch == "main" and [t.id for t in q.tasks()] == ["t1"]
        warning = q.head_warning()
    assert warning is not None and "HEAD names master, a branch that does not exist" in warning
    assert "`git clone` checks out nothing" in warning
    for command in (["status"], ["validate"]):
        assert "warning: " + warning in gq(*command, "--queue", bare).stderr
    worker = gq("work", "--queue", bare, "--", "true")
    assert "warning: " + warning in worker.stderr
    assert git("ls-tree", "-r", "--name-only", "main", cwd=bare).split().count("done/t1.yaml") == 1
    result = gq("init", bare)
    assert "pointed" in result.stderr and head_of(bare) == "refs/heads/main"
    assert "warning" not in gq("status").stderr


def test_a_remote_whose_head_names_another_branch_is_warned_about_over_the_network(tmp_path: Path) -> None:
    bare = plain_bare(tmp_path / "srv" / "q.git")
    with Queue.init(str(bare), branch="main", worker="w/0"):
        pass
    git("symbolic-ref", "HEAD", "refs/heads/master", cwd=bare)
    with GitDaemon(tmp_path / "srv") as daemon:
        url = daemon.url("q.git")
        stderr = gq("status", "--queue", url, env={"GITQUEUE_BRANCH": "main"}).stderr
        assert f"{url}: the remote's HEAD names master, a branch that does not exist" in stderr
        assert "on the server `git symbolic-ref HEAD refs/heads/main`" in stderr
        info = Queue.open(url, branch="main")
        try:
            assert info.status()["warnings"] == [stderr.strip().removeprefix("gitqueue: warning: ")]
        finally:
            info.close()


# ---------------------------------------------------------------- a project's repository is not a queue


def test_init_refuses_a_repository_that_holds_code_unless_told_the_branch(tmp_path: Path) -> None:
    bare = code_repo(tmp_path / "srv" / "project.git", tmp_path)
    code_tip = git("rev-parse", "main", cwd=bare)
    refused = gq("init", bare, code=1).stderr
    assert "is a repository that is not a gitqueue queue (its branches: main)" in refused
    assert f"`gitqueue init {bare} --branch gitqueue`" in refused
    assert git("rev-parse", "main", cwd=bare) == code_tip and branches_of(bare) == ["main"]
    assert not (Path.cwd() / ".gitqueue").exists()
    # opening it names the way out, not the way in: no `gitqueue init URL` onto the code
    opened = gq("ls", "--queue", bare, code=1).stderr
    assert "its branch main holds other files and no gitqueue.yaml" in opened
    assert f"run `gitqueue init {bare}`" not in opened and "--branch gitqueue" in opened
    gq("init", bare, "--branch", "gitqueue")
    gq("submit", "--id", "t1", "lr=0.1")
    assert git("rev-parse", "main", cwd=bare) == code_tip and head_of(bare) == "refs/heads/main"
    queue_files = git("ls-tree", "-r", "--name-only", "gitqueue", cwd=bare).split()
    assert "pending/t1.yaml" in queue_files and "train.py" not in queue_files  # a branch of its own
    assert [line.split()[0] for line in gq("ls", "--format", "ids").stdout.splitlines()] == ["t1"]


def test_init_in_a_folder_that_remembers_another_queue_says_so(tmp_path: Path) -> None:
    first, second = tmp_path / "srv" / "first.git", tmp_path / "srv" / "second.git"
    gq("init", first)
    assert "named another queue" not in gq("init", first).stderr  # the same queue again: nothing to say
    said = gq("init", second).stderr
    assert f"named another queue, {first.resolve()} (branch main); it now names this one" in said
    assert f"`--queue {first.resolve()}` still reaches it" in said
    assert str(second.resolve()) in (Path.cwd() / ".gitqueue").read_text()


def test_open_refuses_what_is_not_a_queue_naming_the_branch(tmp_path: Path) -> None:
    bare = code_repo(tmp_path / "srv" / "project.git", tmp_path)
    with pytest.raises(QueueNotFound, match="has no queue on branch nowhere, which does not exist"):
        Queue.open(str(bare), branch="nowhere")


# ---------------------------------------------------------------- the server hook on what init creates


def _hand_edit_running_args(url: str, tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    clone = Clone(url, tmp_path / name)
    [path] = [p for p in (clone.path / "running").glob("*.yaml")]
    path.write_text(path.read_text().replace("lr: 0.1", "lr: 0.9"))
    clone.commit("change a running task's args by hand")
    return clone.run("push", "origin", "HEAD", check=False)


def test_init_on_a_path_it_creates_installs_the_server_hook(tmp_path: Path) -> None:
    guarded = tmp_path / "srv" / "guarded.git"
    result = gq("init", guarded)
    hook = guarded / "hooks" / "pre-receive"
    assert MARK in hook.read_text() and f"installed {hook}" in result.stderr
    gq("submit", "lr=0.1")
    with Queue.open(str(guarded), worker="w/0") as q:
        assert q.claim() is not None
    push = _hand_edit_running_args(str(guarded), tmp_path, "alice")
    assert push.returncode != 0 and "args of a running task cannot change" in push.stderr, push.stderr
    assert "lr: 0.1" in git("show", "main:" + RemoteRepo(guarded).locations()["000001-lr0.1"][0], cwd=guarded)


def test_no_hooks_installs_none_and_the_embedded_queue_is_guarded_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_ = tmp_path / "srv" / "open.git"
    gq("init", open_, "--no-hooks")
    assert not (open_ / "hooks" / "pre-receive").exists()
    gq("submit", "lr=0.1")
    with Queue.open(str(open_), worker="w/0") as q:
        assert q.claim() is not None
    assert _hand_edit_running_args(str(open_), tmp_path, "bob").returncode == 0  # nothing refuses it
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    gq("init")
    assert MARK in (project / ".gitqueue.git" / "hooks" / "pre-receive").read_text()


def test_init_attaching_to_an_existing_repository_installs_no_hook(bare_remote: Path) -> None:
    gq("init", bare_remote)
    assert not (bare_remote / "hooks" / "pre-receive").exists()  # not ours to change


# ---------------------------------------------------------------- secrets in URLs


class _BasicAuth:
    """The test server's handler, asking for one user and password as a forge does."""

    user, password = "alice", "s3cret"


def _with_basic_auth(server: SmartHTTPServer) -> None:
    handler = server._server.RequestHandlerClass  # type: ignore[union-attr]
    expected = "Basic " + base64.b64encode(f"{_BasicAuth.user}:{_BasicAuth.password}".encode()).decode()

    class AuthHandler(handler):  # type: ignore[valid-type,misc]
        def _run_backend(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.close_connection = True
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="queue"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super()._run_backend()

    server._server.RequestHandlerClass = AuthHandler  # type: ignore[union-attr]


def test_a_password_in_the_url_works_but_is_never_printed_or_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitqueue.testing import make_bare_repo

    make_bare_repo(tmp_path / "srv" / "queue.git")
    with SmartHTTPServer(tmp_path / "srv") as server:
        _with_basic_auth(server)
        plain = server.url("queue.git")
        secret_url = plain.replace("http://", "http://alice:s3cret@")
        result = gq("init", secret_url)
        said = result.stdout + result.stderr
        assert "s3cret" not in said and f"queue ready: {plain} on branch main" in result.stdout
        assert "credential helper" in result.stderr
        remembered = (Path.cwd() / ".gitqueue").read_text()
        assert "s3cret" not in remembered and "alice" not in remembered and plain in remembered
        caches = [p.read_text() for p in (tmp_path / "cache").rglob("config")]
        assert caches and not any("s3cret" in text for text in caches)
        assert RemoteRepo(tmp_path / "srv" / "queue.git").files(), "init's push went through with the password"
        # The password given on the command line works for that command and is not echoed.
        status = gq("status", "--queue", secret_url, "--format", "json")
        assert "s3cret" not in status.stdout + status.stderr and f'"queue": "{plain}"' in status.stdout
        monkeypatch.setitem(Queue.__init__.__kwdefaults__, "patience", 0.2)
        missing = gq("ls", "--queue", secret_url.replace("queue.git", "missing.git"), code=1)
        assert "s3cret" not in missing.stderr and "missing.git" in missing.stderr
        # What people are told to do: a credential helper; then .gitqueue alone reaches the queue.
        store = tmp_path / "home" / "git-credentials"
        store.write_text(secret_url.rsplit("/", 1)[0] + "\n")
        gitconfig = tmp_path / "home" / "gitconfig"
        gitconfig.write_text(f"[credential]\n\thelper = store --file {store}\n")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
        gq("submit", "--id", "t1", "lr=0.1")
        assert "pending/t1.yaml" in RemoteRepo(tmp_path / "srv" / "queue.git").files()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:s3cret@example.org/q.git", "https://example.org/q.git"),
        ("https://ghp_token@github.com/me/q.git", "https://github.com/me/q.git"),  # a token alone is the secret
        ("ssh://git:pw@example.org:2222/q.git", "ssh://git@example.org:2222/q.git"),  # the login stays
        ("ssh://git@example.org/q.git", "ssh://git@example.org/q.git"),
        ("git@github.com:me/q.git", "git@github.com:me/q.git"),
        ("http://127.0.0.1:8080/q.git", "http://127.0.0.1:8080/q.git"),
        ("/srv/git/q.git", "/srv/git/q.git"),
        ("https://a:b@c@example.org/x@y.git", "https://example.org/x@y.git"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "s3cret" not in scrub(f"fatal: unable to access '{url}/': 403", url)


def test_finding_the_branch_waits_for_an_unreachable_remote(tmp_path: Path) -> None:
    """A worker started while the remote is down asks its HEAD again, within its patience."""
    bare = plain_bare(tmp_path / "srv" / "q.git")
    Queue.init(str(bare), worker="setup/0").close()
    server = GitDaemon(tmp_path / "srv")
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        server.start()

    try:
        with Queue(server.url("q.git"), worker="w/0", sleep=sleep) as q:
            assert q.branch == "master" and q.tasks() == []
    finally:
        server.stop()
    assert len(pauses) == 1


def test_a_remote_that_never_answers_is_unreachable_and_its_password_stays_unsaid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """git's timeout would print the whole command line, URL and password included."""
    import socket

    import gitqueue.gitstore

    monkeypatch.setitem(gitqueue.gitstore.run_git.__kwdefaults__, "timeout", 1.0)
    monkeypatch.setitem(Queue.__init__.__kwdefaults__, "patience", 0.2)
    with socket.socket() as silent:  # accepts connections (the backlog does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        url = f"http://alice:s3cret@127.0.0.1:{port}/q.git"
        result = gq("status", "--queue", url, code=5)
    assert "s3cret" not in result.output + result.stderr
    assert f"cannot fetch from http://127.0.0.1:{port}/q.git: no answer" in result.stderr


def test_hooks_install_guards_the_branch_the_queue_is_on(tmp_path: Path) -> None:
    """No --branch: the one HEAD names, or an old queue's main while HEAD names a master
    that does not exist; a person's push that creates master is refused."""
    bare = plain_bare(tmp_path / "srv" / "old.git")
    with Queue.init(str(bare), branch="main", worker="w/0"):
        pass
    git("symbolic-ref", "HEAD", "refs/heads/master", cwd=bare)
    gq("hooks", "install", "--server", bare)
    assert "refs/heads/main" in (bare / "hooks" / "pre-receive").read_text()
    clone = Clone(str(bare), tmp_path / "dora")  # checks out nothing: HEAD names no branch
    clone.write("pending/lost.yaml", "args: {lr: 0.1}\n")
    clone.commit("a task that would be lost")
    push = clone.run("push", "origin", "HEAD:master", check=False)
    assert push.returncode != 0
    assert "refs/heads/master: this repository is a gitqueue queue on branch main" in push.stderr
    assert branches_of(bare) == ["main"]
