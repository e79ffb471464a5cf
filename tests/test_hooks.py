"""The server and client hooks, installed in real repositories, hit by real pushes.

The server hook runs over a local bare repository and behind ``git daemon``: every gitqueue
command's push goes through; a push that would leave the queue invalid is refused with a
message naming each file, and the remote does not move.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clones import Clone, remote_file, remote_tip
from corpus import CASES, small, stage_submodule, write_corpus
from typer.testing import CliRunner

from gitqueue import Queue, State
from gitqueue.cli import app
from gitqueue.errors import GitqueueError, PushRefused
from gitqueue.hooks import MARK, install
from gitqueue.queue import Report
from gitqueue.testing import GitDaemon, make_bare_repo

HOOKS_DIR = Path(__file__).resolve().parent.parent / "hooks"
runner = CliRunner()


@dataclass
class Hooked:
    url: str
    bare: Path

    def clone(self, path: Path, **who: str) -> Clone:
        return Clone(self.url, path, **who)

    def tip(self) -> str:
        return remote_tip(self.bare)


@pytest.fixture(params=["path", "daemon"])
def hooked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hooked]:
    """An empty remote with gitqueue's pre-receive hook, by path or over git daemon."""
    base = tmp_path / "srv"
    bare = make_bare_repo(base / "queue.git")
    install(server=bare)
    if request.param == "path":
        yield Hooked(str(bare), bare)
        return
    with GitDaemon(base) as daemon:
        yield Hooked(daemon.url("queue.git"), bare)


@pytest.fixture
def local_hooked(tmp_path: Path) -> Hooked:
    bare = make_bare_repo(tmp_path / "srv" / "queue.git")
    install(server=bare)
    return Hooked(str(bare), bare)


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The hook's message from a refused push (asserting it was refused by the hook)."""
    assert proc.returncode != 0, f"the push was accepted:\n{proc.stderr}"
    assert "pre-receive hook declined" in proc.stderr or "hook declined" in proc.stderr, proc.stderr
    return "\n".join(line.removeprefix("remote:").strip() for line in proc.stderr.splitlines())


def test_every_gitqueue_command_passes_the_hook(hooked: Hooked) -> None:
    with Queue.init(hooked.url, worker="gpu-box/0") as q:
        ids = q.submit([{"args": {"lr": lr}, "tags": ["s1"]} for lr in (0.1, 0.01, 0.001, 0.0001)])
        run = q.claim()
        assert run is not None
        finished = q.finish(Report(run.id, run.token, "done", result={"acc": 0.9}), then_claim={})
        assert finished.next is not None
        q.fail(finished.next.id, token=finished.next.token, error="CUDA out of memory")  # back to pending
        q.requeue([ids[0]])
        q.cancel([ids[3]])
        q.set_fields(ids[2], {"priority": 50, "args.lr": 0.002})
        q.edit(ids[1], lambda text: text.replace("tags: [s1]", "tags: [s1, rerun]  # by hand"))
        q.requeue(where='state == "cancelled"')
        states = {t.id: t.state for t in q.tasks()}
    assert states == {i: State.PENDING for i in ids}
    assert b"tags: [s1, rerun]  # by hand" in remote_file(hooked.bare, f"pending/{ids[1]}.yaml")


def test_a_hostile_push_is_refused_with_a_message_naming_each_file(hooked: Hooked, tmp_path: Path) -> None:
    with Queue.init(hooked.url, worker="w/0") as q:
        q.submit([{"args": {"lr": 0.1}}])
    before = hooked.tip()
    alice = hooked.clone(tmp_path / "alice")
    cases = write_corpus(alice.path, CASES if hooked.url.startswith("/") else small())
    assert alice.commit("add broken tasks", also=lambda: cases.append(stage_submodule(alice.run))).returncode == 0
    message = refused(alice.push())
    assert "gitqueue: push to main refused: it would leave the queue invalid:" in message
    for case in cases:
        assert any(line.startswith(case.shown) and case.expect in line for line in message.splitlines()), case.name
    assert hooked.tip() == before


@dataclass(frozen=True)
class Scenario:
    name: str
    act: Callable[[Clone, list[str]], None]
    expect: str


def _mv(src: str, dst: str) -> Callable[[Clone, list[str]], None]:
    def act(clone: Clone, ids: list[str]) -> None:
        (clone.path / dst.format(*ids)).parent.mkdir(exist_ok=True)
        clone.run("mv", src.format(*ids), dst.format(*ids))

    return act


def _write(path: str, text: str) -> Callable[[Clone, list[str]], None]:
    def act(clone: Clone, ids: list[str]) -> None:
        clone.write(path.format(*ids), text)

    return act


def _edit(path: str, old: str, new: str) -> Callable[[Clone, list[str]], None]:
    def act(clone: Clone, ids: list[str]) -> None:
        file = clone.path / path.format(*ids)
        file.write_text(file.read_text().replace(old, new, 1))

    return act


def _rm(path: str) -> Callable[[Clone, list[str]], None]:
    def act(clone: Clone, ids: list[str]) -> None:
        clone.run("rm", "-q", path.format(*ids))

    return act


# ids[0] is running (claimed), ids[1] done, ids[2] pending
NO_COMMAND = "no gitqueue command moves a task from"
SCENARIOS = [
    Scenario("pending-to-done", _mv("pending/{2}.yaml", "done/{2}.yaml"), f"{NO_COMMAND} pending/ to done/"),
    Scenario("done-to-running", _mv("done/{1}.yaml", "running/{1}.yaml"), f"{NO_COMMAND} done/ to running/"),
    Scenario("delete-running", _rm("running/{0}.yaml"), "only pending tasks may be deleted"),
    Scenario("delete-done", _rm("done/{1}.yaml"), "only pending tasks may be deleted"),
    Scenario("new-in-done", _write("done/new.yaml", "args: {lr: 1}\n"), "a new task must start in pending/"),
    Scenario("second-copy", _write("pending/{1}.yaml", "args: {lr: 1}\n"), "is also in done/"),
    Scenario("running-args", _edit("running/{0}.yaml", "{lr: 0.1}", "{lr: 0.5}"), "args of a running task cannot"),
    Scenario("run-token", _edit("running/{0}.yaml", "token: ", "token: x"), "run token of a running task cannot"),
    Scenario("done-args", _edit("done/{1}.yaml", "{lr: 0.01}", "{lr: 0.02}"), "args of a done task cannot change"),
    Scenario("settings-gone", _rm("gitqueue.yaml"), "gitqueue.yaml: deleting it would unmake the queue"),
    Scenario("settings-bad", _write("gitqueue.yaml", "defaults: {lease: soon}\n"), "lease must be an integer"),
]


def test_each_change_no_command_makes_is_refused(local_hooked: Hooked, tmp_path: Path) -> None:
    with Queue.init(local_hooked.url, worker="w/0") as q:
        ids = q.submit([{"args": {"lr": lr}, "tags": ["s1"]} for lr in (0.1, 0.01, 0.001)])
        runs = [q.claim(), q.claim()]
        assert [r.id for r in runs if r] == ids[:2]
        runs[1].done({"acc": 1})  # type: ignore[union-attr]
    before = local_hooked.tip()
    bob = local_hooked.clone(tmp_path / "bob")
    for scenario in SCENARIOS:
        bob.run("reset", "-q", "--hard", "origin/main")
        scenario.act(bob, ids)
        assert bob.commit(f"by hand: {scenario.name}").returncode == 0, scenario.name
        message = refused(bob.push())
        assert scenario.expect in message, f"{scenario.name}: {message}"
        assert local_hooked.tip() == before, scenario.name


def test_history_is_never_rewritten_nor_the_branch_deleted(local_hooked: Hooked, tmp_path: Path) -> None:
    with Queue.init(local_hooked.url, worker="w/0") as q:
        q.submit([{"args": {"lr": 0.1}}])
        q.submit([{"args": {"lr": 0.2}}])
    carol = local_hooked.clone(tmp_path / "carol")
    before = local_hooked.tip()
    carol.run("reset", "-q", "--hard", "HEAD~1")
    assert "not a fast-forward" in refused(carol.push("--force"))
    assert "deleting the queue's branch is refused" in refused(carol.run("push", "origin", ":main", check=False))
    assert local_hooked.tip() == before


def test_what_people_do_by_hand_is_accepted(local_hooked: Hooked, tmp_path: Path) -> None:
    with Queue.init(local_hooked.url, worker="w/0") as q:
        ids = q.submit([{"args": {"lr": lr}} for lr in (0.1, 0.01, 0.001)])
        run = q.claim()
        assert run is not None
        run.fail("boom")  # back to pending
        failing = q.claim()
        assert failing is not None
        q.set_fields(failing.id, {"max_attempts": 1})
        failing.fail("boom again")  # out of attempts: failed/
    dana = local_hooked.clone(tmp_path / "dana")
    steps = [
        ("add a task", lambda: dana.write("pending/urgent.yaml", "# for the paper\nargs: {lr: 0.5}\npriority: 9\n")),
        ("reprioritise", _edit_now(dana, f"pending/{ids[1]}.yaml", "{lr: 0.01}", "{lr: 0.01}\npriority: 3")),
        ("withdraw", lambda: dana.run("rm", "-q", f"pending/{ids[2]}.yaml")),
        ("requeue by hand with new args", lambda: _requeue_by_hand(dana, ids[0])),
    ]  # fmt: skip
    for what, step in steps:
        step()
        assert dana.commit(what).returncode == 0
        pushed = dana.push()
        assert pushed.returncode == 0, f"{what}: {pushed.stderr}"
    with Queue.open(local_hooked.url, worker="w/1") as q:
        assert [t.id for t in q.tasks(State.PENDING)] == ["urgent", ids[1], ids[0]]


def _edit_now(clone: Clone, path: str, old: str, new: str) -> Callable[[], None]:
    return lambda: _edit(path, old, new)(clone, [])


def _requeue_by_hand(clone: Clone, task_id: str) -> None:
    clone.run("mv", f"failed/{task_id}.yaml", f"pending/{task_id}.yaml")
    _edit(f"pending/{task_id}.yaml", "args: {lr: 0.1}", "args: {lr: 0.05}")(clone, [])


def test_a_file_broken_before_the_hook_does_not_block_other_pushes(tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path / "srv" / "queue.git")
    with Queue.init(str(bare), worker="w/0") as q:
        q.submit([{"args": {"lr": 0.1}}])
    erin = Clone(str(bare), tmp_path / "erin")
    erin.write("pending/bad.yaml", "args: [oops\n")
    erin.commit("a broken task, before the hook was installed")
    assert erin.push().returncode == 0
    install(server=bare)
    with Queue.open(str(bare), worker="w/0") as q:
        run = q.claim()  # the claim push passes: only what it changes is checked
        assert run is not None and run.id == "000001-lr0.1"
        run.done()
    erin.pull()
    erin.write("pending/bad.yaml", "args: [fixed]\n")
    erin.commit("try to fix it, still wrong")
    assert "'args' must be a mapping" in refused(erin.push())
    erin.write("pending/bad.yaml", "args: {fixed: true}\n")
    erin.commit("fix it")
    assert erin.push().returncode == 0


def test_lease_refs_and_tags_pass_but_a_new_branch_is_refused(local_hooked: Hooked, tmp_path: Path) -> None:
    """A task pushed to another branch would never run: the hook refuses to create one."""
    with Queue.init(local_hooked.url, worker="w/0") as q:
        q.submit([{"args": {"lr": 0.1}}])
    fred = local_hooked.clone(tmp_path / "fred")
    fred.write("anything.yaml", "args: not checked here\n")
    fred.commit("a scratch branch")
    assert fred.run("push", "origin", "HEAD:refs/gitqueue/leases/abc", check=False).returncode == 0
    assert fred.run("push", "origin", "HEAD:refs/tags/v1", check=False).returncode == 0
    fred.run("checkout", "-q", "-b", "master")
    message = refused(fred.run("push", "origin", "master", check=False))
    assert "refs/heads/master: this repository is a gitqueue queue on branch main" in message
    assert "Push to main instead" in message
    listed = subprocess.run(["git", "branch", "--list"], cwd=local_hooked.bare, capture_output=True, text=True)
    assert listed.stdout.split() == ["*", "main"]


def test_a_push_refused_by_a_hook_raises_push_refused_and_stops_retrying(tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path / "srv" / "queue.git")
    with Queue.init(str(bare), worker="w/0") as q:
        hook = bare / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'policy: the queue is frozen for the deadline' >&2\nexit 1\n")
        hook.chmod(0o755)
        before, pushes = remote_tip(bare), q.store.pushes
        with pytest.raises(PushRefused, match="the queue is frozen for the deadline"):
            q.submit([{"args": {"lr": 0.1}}])
        assert q.store.pushes == pushes + 1  # refused once, not retried as a lost race
    assert remote_tip(bare) == before


def test_the_client_pre_commit_hook(bare_remote: Path, tmp_path: Path) -> None:
    with Queue.init(str(bare_remote), worker="w/0") as q:
        q.submit([{"args": {"lr": 0.1}}])
    gina = Clone(str(bare_remote), tmp_path / "gina")
    result = runner.invoke(app, ["hooks", "install", "--client", str(gina.path)])
    assert result.exit_code == 0, result.output
    gina.write("pending/bad.yaml", "args: {lr: 0.1\n")
    gina.write("lr0.3.yaml", "args: {lr: 0.3}\n")
    committed = gina.commit("two mistakes")
    assert committed.returncode == 1
    assert "gitqueue: commit refused: it would leave the queue invalid:" in committed.stderr
    assert "  lr0.3.yaml: looks like a task but is outside the state folders" in committed.stderr
    assert "  pending/bad.yaml:2:1: " in committed.stderr
    head = gina.head()
    gina.run("mv", "lr0.3.yaml", "pending/lr0.3.yaml")
    gina.write("pending/bad.yaml", "args: {lr: 0.1}\n")
    assert gina.commit("fixed").returncode == 0 and gina.head() != head
    gina.run("mv", "pending/000001-lr0.1.yaml", "done/000001-lr0.1.yaml")
    moved = gina.commit("skip the queue")
    assert moved.returncode == 1 and "no gitqueue command moves a task from pending/ to done/" in moved.stderr
    assert gina.commit("skip the queue", verify=False).returncode == 0  # --no-verify: the person's call


def test_install_keeps_a_hook_it_did_not_write(tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path / "queue.git")
    theirs = bare / "hooks" / "pre-receive"
    theirs.write_text("#!/bin/sh\nexec /usr/local/bin/audit\n")
    with pytest.raises(GitqueueError, match="gitqueue did not write it"):
        install(server=bare)
    assert "audit" in theirs.read_text()
    assert install(server=bare, force=True) == [theirs]
    assert MARK in theirs.read_text()
    assert install(server=bare) == [theirs]  # its own hook it replaces without asking


@pytest.mark.parametrize("name", ["pre-receive", "update"])
def test_the_thin_scripts_in_hooks_work_when_copied(name: str, tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path / "srv" / "queue.git")
    with Queue.init(str(bare), worker="w/0") as q:
        q.submit([{"args": {"lr": 0.1}}])
    shutil.copy(HOOKS_DIR / name, bare / "hooks" / name)
    env = {**os.environ, "GITQUEUE_PYTHON": sys.executable}
    clone = Clone(str(bare), tmp_path / "hal")
    clone.write("running/sneaky.yaml", "args: {lr: 1}\nrun: {token: abc}\n")
    clone.commit("a task that skips the queue")
    push = ["git", "push", "origin", "HEAD:main"]
    proc = subprocess.run(push, cwd=clone.path, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "running/sneaky.yaml: a new task must start in pending/" in proc.stderr
    with Queue.open(str(bare), worker="w/0") as q:  # and the queue's own pushes pass
        os.environ["GITQUEUE_PYTHON"] = sys.executable
        try:
            run = q.claim()
            assert run is not None
            run.done()
        finally:
            del os.environ["GITQUEUE_PYTHON"]


def test_hooks_ci_prints_the_workflows_the_package_ships() -> None:
    """A pip install has no examples/: the workflows are package data, printed by `hooks ci`."""
    import gitqueue

    package = Path(gitqueue.__file__).parent
    for forge, name in (("github", "github-actions.yml"), ("gitlab", "gitlab-ci.yml")):
        said = runner.invoke(app, ["hooks", "ci", forge])
        assert said.exit_code == 0, said.output
        assert said.stdout == (package / "ci" / name).read_text() and "gitqueue validate" in said.stdout
    wrong = runner.invoke(app, ["hooks", "ci", "bitbucket"])
    assert wrong.exit_code == 2 and "'bitbucket': choose github or gitlab" in wrong.output
    install_help = runner.invoke(app, ["hooks", "install", "--help"]).stdout
    assert "examples/ci" not in install_help and "gitqueue hooks ci" in install_help
    pyproject = (package.parent / "pyproject.toml").read_text()
    assert '"ci/*.yml"' in pyproject.split("[tool.setuptools.package-data]")[1], "shipped in the wheel as package data"
