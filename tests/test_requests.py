"""Requests for work (issue 12): a worker that needs work asks on a ref of its own, and whoever
lands on the branch next claims for it in the same push, deleting the request ref atomically."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RemoteRepo, poll_until

from gitqueue.lifecycle import Report, report_json
from gitqueue.queue import Queue
from gitqueue.requests import DEFER_FOR, REQUEST_TTL, Ask, ref_name
from gitqueue.requests import message as requests_message
from gitqueue.requests import read as requests_read
from gitqueue.task import State
from gitqueue.testing import GitDaemon, make_bare_repo

REPO = Path(__file__).resolve().parent.parent
REQUESTS = "refs/gitqueue/requests"


def request_refs(remote: RemoteRepo) -> dict[str, str]:
    """The remote's request refs: name -> commit."""
    out = remote.git("for-each-ref", "--format=%(refname) %(objectname)", REQUESTS)
    return {line.split()[0].removeprefix(f"{REQUESTS}/"): line.split()[1] for line in out.splitlines()}


def tip_message(remote: RemoteRepo) -> str:
    return remote.git("log", "-1", "--format=%B", "refs/heads/main")


def submit(url: str, *specs: dict[str, Any]) -> list[str]:
    with Queue.open(url, worker="submitter") as q:
        return q.submit(specs)


ASK_AND_DIE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from gitqueue.queue import Ask, Queue
    url, worker, cache, ago = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    q = Queue.open(url, worker=worker, cache=Path(cache), clock=lambda: time.time() - ago)
    assert q.ask_for_work(1, Ask())
    os._exit(0)  # dies at once: nothing taken back, nothing closed
    """
)


def ask_and_die(url: str, worker: str, *, ago: float = 0.0) -> None:
    """A worker process (its clock ``ago`` seconds behind) that asks for work and dies."""
    cache = Path.cwd().parent / "caches" / ref_name(worker)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-c", ASK_AND_DIE, url, worker, str(cache), str(ago)]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)


def url_of(srv: Path) -> str:
    return str(srv / "queue.git")


def machine(url: str, worker: str, **options: Any) -> Queue:
    """A queue opened as a worker on a machine of its own (a cache of its own)."""
    return Queue.open(url, worker=worker, cache=Path.cwd().parent / "caches" / ref_name(worker), **options)


def test_a_request_is_served_by_the_next_push_which_deletes_its_ref(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {"i": i}} for i in range(4)))
    with machine(url, "box-a/1") as server, machine(url, "box-b/1") as asker:
        assert asker.ask_for_work(2, Ask())
        assert list(request_refs(remote_repo)) == [ref_name("box-b/1")]
        before = remote_repo.count()

        mine = server.claim_batch(1)

        assert [run.id for run in mine] == ["t0"]
        assert remote_repo.count() == before + 1  # one push: our claim and the two for box-b
        assert request_refs(remote_repo) == {}  # deleted by that very push
        message = tip_message(remote_repo)
        assert "claim t1 for box-b/1 (attempt 1)" in message
        assert "claim t2 for box-b/1 (attempt 1)" in message
        assert "Gitqueue-Served: box-b/1" in message
        assert "t3" not in message

        pushes = asker.store.pushes
        served = asker.claim_batch(2, ask=Ask())  # found on the branch: no push of its own
        assert sorted(run.id for run in served) == ["t1", "t2"]
        assert asker.store.pushes == pushes
        assert asker.adopt() == []  # each served run is handed over once
        for run in served:
            assert run.record["worker"] == "box-b/1" and run.record["claimed_by"] == "box-a/1"
            run.done(result={"i": run.args["i"]})
        states = remote_repo.states()
        assert states == {"t0": "running", "t1": "done", "t2": "done", "t3": "pending"}
        done = asker.get("t1")
        assert [a["worker"] for a in done.attempts] == ["box-b/1"]


def test_adopt_returns_the_runs_claimed_for_us(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}}, {"id": "b", "args": {}})
    with machine(url, "box-a/1") as server, machine(url, "box-b/1") as asker:
        assert asker.adopt() == []  # asked for nothing
        asker.ask_for_work(1, Ask())
        assert asker.adopt() == []  # asked, not served yet
        server.claim_batch(1)
        adopted = asker.adopt()
        assert [run.id for run in adopted] == ["b"]
        assert asker.adopt() == []
        assert asker.get("b").run["token"] == adopted[0].token


def test_a_subject_counts_the_claims_made_for_others(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(6)))
    askers = [machine(url, f"box-{n}/1") for n in "bcd"]
    try:
        for asker in askers:
            asker.ask_for_work(1, Ask())
        with machine(url, "box-a/1") as server:
            server.claim_batch(1)
        subject = tip_message(remote_repo).splitlines()[0]
        assert subject == "claim 4 tasks by box-a/1 (3 for 3 other workers)"
        assert request_refs(remote_repo) == {}
        assert sorted(run.id for asker in askers for run in asker.adopt()) == ["t1", "t2", "t3"]
    finally:
        for asker in askers:
            asker.close()


def test_a_stale_request_is_ignored_and_deleted(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}}, {"id": "b", "args": {}})
    ask_and_die(url, "box-b/1", ago=REQUEST_TTL + 5)
    assert list(request_refs(remote_repo)) == [ref_name("box-b/1")]
    with machine(url, "box-a/1") as server:
        assert [run.id for run in server.claim_batch(1)] == ["a"]
    assert request_refs(remote_repo) == {}  # dropped in the same push
    assert remote_repo.states() == {"a": "running", "b": "pending"}
    assert "for box-b/1" not in tip_message(remote_repo)


def test_a_report_alone_serves_requests_too(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}}, {"id": "b", "args": {}})
    with machine(url, "box-a/1") as server, machine(url, "box-b/1") as asker:
        run = server.claim()
        assert run is not None and run.id == "a"
        asker.ask_for_work(1, Ask())
        # Another machine moves the branch, so the report is built on a fetch, which brings
        # the requests (a try right after our own landing builds on it unfetched: it sees none).
        submit(url, {"id": "c", "args": {}, "priority": -1})
        run.done()
        assert remote_repo.states() == {"a": "done", "b": "running", "c": "pending"}
        assert [r.id for r in asker.adopt()] == ["b"]


def test_requests_respect_labels_and_what_the_asker_can_run(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(
        url,
        {"id": "a100", "args": {}, "requires": {"gpu": "a100"}, "priority": 9},
        {"id": "own", "args": {}, "cmd": ["true"], "priority": 5},
        {"id": "plain", "args": {}},
    )
    with (
        machine(url, "server/1") as server,
        machine(url, "v100/1") as v100,
        machine(url, "cmds/1") as cmds,
        machine(url, "a100/1") as a100,
    ):
        v100.ask_for_work(1, Ask(labels={"gpu": "v100"}, own_cmd_only=True))  # nothing it may take but "own"
        cmds.ask_for_work(1, Ask(own_cmd_only=True))
        a100.ask_for_work(1, Ask(labels={"gpu": "a100"}))
        assert server.claim_batch(1, eligible=lambda task: task.id == "plain")[0].id == "plain"
        assert [r.id for r in a100.adopt()] == ["a100"]
        served = [(run.record["worker"], run.id) for run in v100.adopt() + cmds.adopt()]
        assert served in ([("v100/1", "own")], [("cmds/1", "own")])  # the one task both may run, once
        assert len(request_refs(remote_repo)) == 1  # the request nothing was left for stays, for later
        assert remote_repo.states() == {"a100": "running", "own": "running", "plain": "running"}


def test_claims_for_a_dead_asker_go_back_unspent_after_the_lease(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}, "lease": 60}, {"id": "b", "args": {}, "lease": 60})
    ask_and_die(url, "box-b/1")  # it never adopts what it gets
    now = [time.time()]
    ticks = [0.0]
    with machine(url, "box-a/1", clock=lambda: now[0], monotonic=lambda: ticks[0]) as server:
        server.claim_batch(1)
        assert server.get("b").run["worker"] == "box-b/1"
        assert server.reap() == []  # its lease has not run out
        now[0] += 61 + server.max_skew
        ticks[0] += 61
        reaped = server.reap_runs()
        assert [(r.id, r.worker, r.spent) for r in reaped] == [("a", "box-a/1", False), ("b", "box-b/1", False)]
    with Queue.open(url) as q:
        task = q.get("b")
    assert task.state is State.PENDING and task.attempts_spent == 0 and task.run is None
    assert "reap b by box-b/1 (attempt 1): never started, no attempt spent" in remote_repo.log()[-1]


def test_a_worker_that_stops_takes_its_request_back(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}}, {"id": "b", "args": {}}, {"id": "c", "args": {}})
    with machine(url, "box-b/1") as asker:
        asker.ask_for_work(1, Ask())
        asker.claim_batch(0)  # a queue that claimed (or tried to)
    assert request_refs(remote_repo) == {}  # closing deleted it: nobody claims for a worker gone
    with machine(url, "box-c/1") as asker, machine(url, "box-a/1") as server:
        asker.ask_for_work(1, Ask())
        server.claim_batch(1)
        assert remote_repo.states()["b"] == "running"
        assert [task.id for task in asker.withdraw()] == ["b"]  # served, never adopted: given back
    assert remote_repo.states() == {"a": "running", "b": "pending", "c": "pending"}
    with Queue.open(url) as q:
        assert q.get("b").attempts_spent == 0
    assert "release b by box-c/1 (attempt 1): not started" in remote_repo.log()[-1]


SERVER = textwrap.dedent(
    """
    import sys
    from gitqueue.queue import Queue
    url, name, go = sys.argv[1:4]
    import os, time
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    with Queue.open(url, worker=name) as q:
        runs = q.claim_batch(1)
        print(" ".join(run.id for run in runs))
    """
)


def test_two_servers_racing_never_claim_one_task_twice(tmp_path: Path, remote_repo: RemoteRepo) -> None:
    srv = make_bare_repo(tmp_path / "srv" / "queue.git").parent
    with GitDaemon(srv) as daemon:
        url = daemon.url("queue.git")
        Queue.init(url).close()
        submit(url, *({"id": f"t{i:02d}", "args": {}} for i in range(12)))
        askers = [machine(url, f"asker-{n}/1") for n in range(6)]
        try:
            for asker in askers:
                asker.ask_for_work(1, Ask())
            script = tmp_path / "server.py"
            script.write_text(SERVER)
            go = tmp_path / "go"
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            procs = []
            for n in range(4):  # a cache each: four machines
                env_n = {**env, "GITQUEUE_CACHE": str(tmp_path / f"cache-{n}")}
                cmd = [sys.executable, str(script), url, f"server-{n}/1", str(go)]
                procs.append(subprocess.Popen(cmd, env=env_n, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            go.touch()
            outs = [proc.communicate(timeout=120) for proc in procs]
            assert all(proc.returncode == 0 for proc in procs), [err.decode() for _, err in outs]
            own = [out.decode().split() for out, _ in outs]
            served = [run.id for asker in askers for run in asker.adopt()]
        finally:
            for asker in askers:
                asker.close()
        assert all(len(ids) == 1 for ids in own)  # each server claimed one for itself
        claimed = [tid for ids in own for tid in ids] + served
        assert len(claimed) == len(set(claimed)) == 10  # nobody's task is anybody else's too
        assert request_refs(remote_repo) == {}
        holders = Counter(remote_repo.read(f"running/{tid}.yaml").split("worker: ")[1].split()[0] for tid in served)
        assert set(holders) == {f"asker-{n}/1" for n in range(6)}
        trailers = remote_repo.git("log", "--format=%(trailers:key=Gitqueue-Task,valueonly,separator= )", "main")
        claims = Counter(trailers.split())
        assert all(n == 1 for n in claims.values()) and len(claims) == 10  # one claim commit per task
        remote_repo.fsck()


JOB = textwrap.dedent(
    """
    import os, sys, time
    marks, go = sys.argv[1:3]
    with open(os.path.join(marks, os.environ["GITQUEUE_TASK_ID"]), "a") as f:
        f.write(os.environ["GITQUEUE_WORKER"] + "\\n")
    deadline = time.monotonic() + 120
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.02)
    """
)


def test_eight_workers_started_together_run_after_fewer_pushes_than_workers(
    tmp_path: Path, remote_repo: RemoteRepo
) -> None:
    srv = make_bare_repo(tmp_path / "srv" / "queue.git").parent
    marks, go = tmp_path / "marks", tmp_path / "go"
    marks.mkdir()
    job = tmp_path / "job.py"
    job.write_text(JOB)
    with GitDaemon(srv) as daemon:
        url = daemon.url("queue.git")
        Queue.init(url).close()
        submit(url, *({"id": f"t{i:02d}", "args": {}} for i in range(8)))
        before = remote_repo.count()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        procs = []
        for n in range(8):
            folder = tmp_path / f"w{n}"
            folder.mkdir()
            argv = [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", f"box-{n}/1"]
            argv += ["--log-dir", str(folder / "logs"), "--", sys.executable, str(job), str(marks), str(go)]
            with open(folder / "stderr", "wb") as err:
                cache = {"GITQUEUE_CACHE": str(tmp_path / f"cache-{n}")}  # a machine each
                procs.append(subprocess.Popen(argv, env={**env, **cache}, stderr=err, cwd=folder))
        try:
            poll_until(lambda: len(list(marks.iterdir())) == 8, what="all eight workers running", timeout=60)
            landed = remote_repo.count() - before
            landings = remote_repo.log()[-landed:] if landed else []
            go.touch()
            for proc in procs:
                proc.wait(timeout=60)
        finally:
            go.touch()
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    ran = {mark.name: mark.read_text().split() for mark in marks.iterdir()}
    assert sorted({worker for workers in ran.values() for worker in workers}) == [f"box-{n}/1" for n in range(8)]
    assert all(len(workers) == 1 for workers in ran.values())  # each task ran once
    assert landed < 8, f"{landed} landed pushes before all eight ran: {landings}"
    assert set(remote_repo.states().values()) == {"done"}
    assert all(proc.returncode == 0 for proc in procs)
    with Queue.open(url_of(srv)) as q:  # each recorded done once, by the worker that ran it
        for task in q.tasks():
            assert [(a["outcome"], a["worker"]) for a in task.attempts] == [("done", ran[task.id][0])]


def test_a_worker_restarted_under_its_name_can_ask_again(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}})
    ask_and_die(url, "box-b/1")  # its request is still out, a commit the new process never made
    old = request_refs(remote_repo)[ref_name("box-b/1")]
    with machine(url, "box-b/1") as again:
        assert again.ask_for_work(1, Ask())
        new = request_refs(remote_repo)[ref_name("box-b/1")]
        assert new != old and remote_repo.git("rev-parse", f"{new}^").strip() == old  # a fast-forward
        with machine(url, "box-a/1") as server:
            server.claim_batch(0)
        assert [run.id for run in again.adopt()] == ["a"]


BEAT_HOOK = """#!/bin/sh
# Another writer lands just before every branch push of box-a while the flag file exists: the
# branch moves under it (a real commit), so git refuses box-a's compare-and-swap.
flag="$GIT_DIR/beat-box-a"
while read old new ref; do
    [ -e "$flag" ] && [ "$ref" = refs/heads/main ] || continue
    git cat-file commit "$new" | grep -q '^Gitqueue-Worker: box-a$' || continue
    [ -e "$GIT_DIR/slow-beat" ] && sleep 1  # a push that takes a while, then loses
    unset GIT_QUARANTINE_PATH GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
    tip=$(git rev-parse refs/heads/main)
    moved=$(git -c user.name=someone -c user.email=someone@example.org \
        commit-tree -p "$tip" -m "someone else landed first" "$tip^{tree}") || exit 1
    git update-ref refs/heads/main "$moved" "$tip" 2>/dev/null || continue  # another push landed meanwhile
    echo beaten >> "$GIT_DIR/beaten"
done
exit 0
"""

HOLD_JOB = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    folder = Path(sys.argv[1])
    task = os.environ["GITQUEUE_TASK_ID"]
    with open(folder / "ran", "a") as ran:
        ran.write(task + "\\n")
    Path(os.environ["GITQUEUE_RESULT_FILE"]).write_text('{"task": "%s"}' % task)
    deadline = time.monotonic() + 120
    while not (folder / f"release-{task}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    """
)


def start_box_a(tmp_path: Path, url: str, *options: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Install BEAT_HOOK on the remote at ``url`` (a path) and start worker box-a running
    HOLD_JOB, with a cache of its own and ``options`` before ``--``; returns the process and
    its folder (``ran``, the ``release-*`` files and its ``stderr``)."""
    hook = Path(url) / "hooks" / "pre-receive"
    hook.write_text(BEAT_HOOK)
    hook.chmod(0o755)
    folder = tmp_path / "a"
    folder.mkdir()
    (tmp_path / "job.py").write_text(HOLD_JOB)
    argv = [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", "box-a", *options]
    argv += ["--log-dir", str(folder / "logs"), "--", sys.executable, str(tmp_path / "job.py"), str(folder)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GITQUEUE_CACHE": str(tmp_path / "cache-a")}
    with open(folder / "stderr", "wb") as err:
        return subprocess.Popen(argv, env=env, stderr=err, cwd=folder), folder


@contextlib.contextmanager
def box_a_running_t1(
    tmp_path: Path, url: str, *options: str, release: Iterable[str]
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    """:func:`start_box_a`, then wait until it runs t1; yields the process, its folder and the
    file of what it ran. On the way out every run named in ``release`` is let go, and a worker
    still running is killed (so a failed test leaves no process behind)."""
    proc, folder = start_box_a(tmp_path, url, *options)
    ran = folder / "ran"
    try:
        poll_until(lambda: ran.exists() and ran.read_text().split() == ["t1"], what="box-a running t1", timeout=60)
        yield proc, folder, ran
    finally:
        for name in release:
            (folder / f"release-{name}").touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("slots", ["1", "2"])
def test_a_worker_whose_pushes_keep_losing_runs_what_others_claimed_for_it(
    tmp_path: Path, bare_remote: Path, remote_repo: RemoteRepo, slots: str
) -> None:
    """Its report push loses every race; another machine serves its request meanwhile: it runs
    the run claimed for it at once, without waiting for its own push to land."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "t1", "args": {}})
    options = ("--idle-timeout", "3", "--slots", slots)
    with box_a_running_t1(tmp_path, url, *options, release=("t1", "t2", "t3")) as (proc, folder, ran):
        (bare_remote / "beat-box-a").touch()  # from now on every branch push of box-a loses
        (folder / "release-t1").touch()
        poll_until(lambda: request_refs(remote_repo), what="box-a asking for work", timeout=60)
        submit(url, {"id": "t2", "args": {}}, {"id": "t3", "args": {}})
        with machine(url, "box-b") as server:
            [mine] = server.claim_batch(1)  # and, in the same push, one for box-a
            served = [t for t, s in remote_repo.states().items() if t not in (mine.id, "t1") and s == "running"]
            [for_a] = served
            poll_until(lambda: for_a in ran.read_text().split(), what=f"box-a running {for_a}", timeout=60)
            own = [m for m in remote_repo.log("%B") if "Gitqueue-Worker: box-a\n" in m + "\n"]
            assert len(own) == 1 and own[0].startswith("claim t1 by box-a")  # no push of its own landed since
            assert (bare_remote / "beaten").read_text().count("beaten") >= 1  # (the try finding the run may not push)
            (bare_remote / "beat-box-a").unlink()
            (folder / f"release-{for_a}").touch()
            mine.done()
        proc.wait(timeout=90)
    assert proc.returncode == 0, (folder / "stderr").read_text()
    assert sorted(ran.read_text().split()) == sorted(["t1", for_a])  # each ran once, t1 first
    assert remote_repo.states() == {"t1": "done", "t2": "done", "t3": "done"}
    with Queue.open(url) as q:
        assert [a["worker"] for a in q.get(for_a).attempts] == ["box-a"]


@pytest.mark.parametrize("slots", ["1", "2"])
def test_a_worker_whose_pushes_keep_losing_hands_its_reports_to_whoever_lands(
    tmp_path: Path, bare_remote: Path, remote_repo: RemoteRepo, slots: str
) -> None:
    """Its report push loses every race: the report goes out on its request ref, the next push
    of another machine records it (fenced by the run's token), and the worker stops, done."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "t1", "args": {}})
    with box_a_running_t1(tmp_path, url, "--slots", slots, release=("t1",)) as (proc, folder, _):
        (bare_remote / "beat-box-a").touch()  # from now on every branch push of box-a loses
        (folder / "release-t1").touch()
        poll_until(lambda: request_refs(remote_repo), what="box-a handing its report over", timeout=60)
        assert remote_repo.states() == {"t1": "running"}
        submit(url, {"id": "t2", "args": {}})
        with machine(url, "box-b") as server:
            [mine] = server.claim_batch(1)  # and, in the same push, box-a's report
            assert remote_repo.states() == {"t1": "done", "t2": "running"}
            proc.wait(timeout=60)  # nothing left to report or to claim: it stops
            mine.done()
    assert proc.returncode == 0, (folder / "stderr").read_text()
    assert request_refs(remote_repo) == {}  # deleted by the push that recorded the report
    with Queue.open(url) as q:
        t1 = q.get("t1")
    assert t1.result == {"task": "t1"}
    assert [(a["worker"], a["outcome"]) for a in t1.attempts] == [("box-a", "done")]
    recording = [m for m in remote_repo.log("%B") if "done t1 by box-a" in m]
    assert len(recording) == 1 and "Gitqueue-Worker: box-b" in recording[0]  # box-b's push recorded it
    assert "Gitqueue-Served: box-a" in recording[0]
    assert (bare_remote / "beaten").exists()  # box-a's own pushes kept losing


def test_a_lander_records_only_reports_whose_run_still_holds_its_task_in_the_requesters_name(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(4)))
    with machine(url, "box-a") as a, machine(url, "box-c") as c, machine(url, "box-b") as b:
        [r0, r1] = a.claim_batch(2)
        [theirs] = c.claim_batch(1)
        reports = [
            Report("t0", r0.token, "done", result={"score": 1}),  # sound: recorded
            Report("t1", "0123456789abcdef", "done"),  # a token that does not hold t1
            Report(theirs.id, theirs.token, "failed", error="not box-a's run"),  # box-c's run
        ]
        assert a.lifecycle.asker.ask(0, Ask(), reports=[report_json(r) for r in reports])
        b.claim_batch(1)
        states = remote_repo.states()
        assert states == {"t0": "done", "t1": "running", "t2": "running", "t3": "running"}
        assert b.get("t0").result == {"score": 1} and b.get("t0").attempts[0]["worker"] == "box-a"
        assert request_refs(remote_repo) == {}  # it asked for no task: deleted once its reports were seen
        finished = a.finish([Report("t0", r0.token, "done", result={"score": 1})], hand_off=True)
        assert finished.losses == [] and finished.tasks == []  # recorded for it already: not a loss
        r1.done()
        assert remote_repo.states()["t1"] == "done"


def spy_drops(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The request refs ``queue`` deletes from now on (deleted as before)."""
    dropped: list[str] = []
    drop = queue.store.drop_request
    monkeypatch.setattr(queue.store, "drop_request", lambda name: (dropped.append(name), drop(name)))
    return dropped


def test_a_worker_whose_request_was_answered_stops_without_a_push_or_a_fetch(
    bare_remote: Path, remote_repo: RemoteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(3)))
    with machine(url, "box-a") as a, machine(url, "box-b") as b:
        [run] = a.claim_batch(1)
        assert a.lifecycle.asker.ask(0, Ask(), reports=[report_json(Report("t0", run.token, "done"))])
        b.claim_batch(1)  # records box-a's report and deletes its request ref
        assert remote_repo.states()["t0"] == "done" and request_refs(remote_repo) == {}
        a.store.fetch(requests=True)  # as a worker's next try does: it shows the ref gone
        dropped, fetches = spy_drops(a, monkeypatch), a.store.fetches
        assert a.withdraw() == []
        assert (dropped, a.store.fetches) == ([], fetches)  # nothing left to take back or look for
    assert remote_repo.states() == {"t0": "done", "t1": "running", "t2": "pending"}


def test_a_worker_whose_request_may_still_be_out_takes_it_back_and_looks_again(
    bare_remote: Path, remote_repo: RemoteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(3)))
    with machine(url, "box-a") as a, machine(url, "box-b") as b:
        a.claim_batch(0)  # (it fetched before asking: that view cannot show the request)
        assert a.ask_for_work(1, Ask())
        b.claim_batch(1)  # serves box-a, deleting its ref, after box-a's last fetch
        assert remote_repo.states()["t1"] == "running" and request_refs(remote_repo) == {}
        dropped, fetches = spy_drops(a, monkeypatch), a.store.fetches
        assert [task.id for task in a.withdraw()] == ["t1"]  # found by fetching, and given back
        assert dropped == [a.lifecycle.asker.ref] and a.store.fetches > fetches
    assert remote_repo.states() == {"t0": "running", "t1": "pending", "t2": "pending"}


def test_a_worker_whose_reports_were_recorded_pushes_nothing_only_to_record_others(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """At a drain's end every machine whose last reports another's push had recorded (its
    request carried them) still pushed, to record the reports other machines' requests carried:
    one more racer against those machines (each landing records them all), for nothing of its own."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "t0", "args": {}}, {"id": "t1", "args": {}})
    with machine(url, "box-a") as a, machine(url, "box-b") as b, machine(url, "box-c") as c:
        [mine] = a.claim_batch(1)
        [theirs] = c.claim_batch(1)
        report = Report("t0", mine.token, "done")
        assert a.lifecycle.asker.ask(0, Ask(), reports=[report_json(report)])
        b.claim_batch(0)  # it serves: records box-a's report
        assert remote_repo.states()["t0"] == "done"
        assert c.lifecycle.asker.ask(0, Ask(), reports=[report_json(Report("t1", theirs.token, "done"))])
        tip = remote_repo.tip()
        finished = a.finish([report], hand_off=True)  # its own report: recorded already
        assert finished.losses == [] and finished.tasks == []
        assert remote_repo.tip() == tip, "box-a pushed only to record box-c's report"
        assert list(request_refs(remote_repo)) == [ref_name("box-c")]
        assert [task.id for task in c.finish([Report("t1", theirs.token, "done")], hand_off=True).tasks] == ["t1"]
    assert remote_repo.states() == {"t0": "done", "t1": "done"} and request_refs(remote_repo) == {}


def test_a_worker_with_nothing_to_claim_pushes_nothing_to_record_others_reports(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """At a drain's end every idle worker pushed to record the reports other machines' requests
    carried, racing those machines (each landing records them all) and one another: a crowd of
    pushes for nothing of its own. It claims nothing and leaves them to land their own."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "t0", "args": {}})
    with machine(url, "box-a") as a, machine(url, "box-b") as b:
        [run] = a.claim_batch(1)
        report = Report("t0", run.token, "done", result={"score": 1})
        assert a.lifecycle.asker.ask(0, Ask(), reports=[report_json(report)])
        tip = remote_repo.tip()
        assert b.claim_batch(1) == []  # nothing pending for it
        assert remote_repo.tip() == tip, "box-b pushed to the branch"
        assert list(request_refs(remote_repo)) == [ref_name("box-a")]
        finished = a.finish([report], hand_off=True)  # box-a lands its own report
        assert [task.id for task in finished.tasks] == ["t0"]
        assert remote_repo.states() == {"t0": "done"} and request_refs(remote_repo) == {}


def test_reports_a_request_carried_unrecorded_for_a_while_are_recorded_by_anyone(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """Its worker may be gone, and its runs' results with it: after DEFER_FOR seconds a worker
    with nothing of its own to push records them all the same."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "t0", "args": {}})
    with machine(url, "box-a", clock=lambda: time.time() - DEFER_FOR - 1) as a, machine(url, "box-b") as b:
        [run] = a.claim_batch(1)
        assert a.lifecycle.asker.ask(0, Ask(), reports=[report_json(Report("t0", run.token, "done"))])
        assert b.claim_batch(1) == []  # nothing pending for it: it pushes for box-a's report alone
        assert remote_repo.states() == {"t0": "done"} and request_refs(remote_repo) == {}


def test_a_request_with_broken_reports_is_dropped_and_the_push_still_lands(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "t0", "args": {}}, {"id": "t1", "args": {}})
    with machine(url, "box-a") as a, machine(url, "box-b") as b:
        [run] = a.claim_batch(1)
        text = requests_message("box-a", 1, Ask(), now=time.time(), nonce="n").replace(
            "Gitqueue-Nonce: n", 'Gitqueue-Nonce: n\nGitqueue-Reports: [{"token": 3}, "not json'
        )
        a.store.push_request(ref_name("box-a"), message=text, author=a.protocol.identity, parent=None)
        assert list(request_refs(remote_repo)) == [ref_name("box-a")]
        [mine] = b.claim_batch(1)
        assert mine.id == "t1" and remote_repo.states() == {"t0": "running", "t1": "running"}
        assert request_refs(remote_repo) == {}  # unsound: deleted, nothing claimed for it
        run.done()


def test_a_worker_whose_push_beside_its_last_runs_lost_reports_them_before_it_stops(
    tmp_path: Path, bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """The push that reports and claims goes on beside the next run; when it loses and the
    batch runs out, the worker reports again (here handing its reports to another machine's
    push, as its own keep losing) and only then stops: nothing is left running on the branch."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(1, 6)))
    with box_a_running_t1(tmp_path, url, release=[f"t{i}" for i in range(1, 6)]) as (proc, folder, ran):
        (folder / "release-t1").touch()  # its report claims the rest in one batch
        poll_until(lambda: set(remote_repo.states().values()) == {"done", "running"}, what="t1 done", timeout=60)
        assert remote_repo.states() == {"t1": "done", **dict.fromkeys(["t2", "t3", "t4", "t5"], "running")}
        (bare_remote / "beat-box-a").touch()  # from now on every branch push of box-a loses
        (bare_remote / "slow-beat").touch()  # after a while: the batch runs out meanwhile
        for i in range(2, 6):
            (folder / f"release-t{i}").touch()
        poll_until(lambda: ran.read_text().split() == ["t1", "t2", "t3", "t4", "t5"], what="the batch run", timeout=60)

        def handing_all_four() -> bool:
            refs = request_refs(remote_repo)
            return bool(refs) and "with 4 reports" in remote_repo.git("log", "-1", "--format=%s", *refs.values())

        poll_until(handing_all_four, what="box-a handing its four reports over", timeout=60)
        assert proc.poll() is None  # it does not stop with reports not recorded
        with machine(url, "box-b") as server:
            server.claim_batch(0)  # records what box-a's request carries
        proc.wait(timeout=60)
    assert proc.returncode == 0, (folder / "stderr").read_text()
    assert remote_repo.states() == dict.fromkeys(["t1", "t2", "t3", "t4", "t5"], "done")
    with Queue.open(url) as q:
        assert all(q.get(f"t{i}").result == {"task": f"t{i}"} for i in range(1, 6))


def test_a_request_older_than_its_workers_own_claim_gets_nothing_more(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """The request ref outlived its answer (its worker's own claim landed after it asked, but
    did not delete it): the next lander claims nothing more for it and deletes it."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(4)))
    ask_and_die(url, "box-b/1")  # the ref stays: this process never learnt of it
    assert list(request_refs(remote_repo)) == [ref_name("box-b/1")]
    with machine(url, "box-b/1") as b, machine(url, "box-a/1") as a:
        [own] = b.claim_batch(1)
        assert list(request_refs(remote_repo)) == [ref_name("box-b/1")]  # not its to know
        [mine] = a.claim_batch(1)
        assert request_refs(remote_repo) == {}
        states = remote_repo.states()
        assert sorted(t for t, s in states.items() if s == "running") == sorted([own.id, mine.id])
        assert "for box-b/1" not in tip_message(remote_repo)


def test_runs_claimed_for_any_request_a_worker_pushed_are_found_after_an_earlier_answer(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """A worker asked twice (its second request carries a report); runs served for its first
    are taken up (which answers it) before a server answers the second: those are found too."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(4)))
    with machine(url, "box-a/1") as a, machine(url, "box-b/1") as b:
        [held] = a.claim_batch(1)
        asker = a.lifecycle.asker
        assert asker.ask(1, Ask())
        assert asker.ask(1, Ask(), reports=[report_json(Report(held.id, held.token, "done"))])
        asker.answered()  # as when the runs served for the first request were taken up
        b.claim_batch(0)  # serves the second: records t0, claims one for box-a
        [served] = a.adopt()
        assert served.record["worker"] == "box-a/1" and served.record["claimed_by"] == "box-b/1"
        assert remote_repo.states()[held.id] == "done"
        served.done()
    assert remote_repo.states()[served.id] == "done"


@pytest.mark.parametrize(("tasks", "each"), [(40, 4), (12, 2), (6, 1)])
def test_with_plenty_pending_a_request_for_one_gets_the_next_runs_too(
    bare_remote: Path, remote_repo: RemoteRepo, tasks: int, each: int
) -> None:
    """Asked for one run: with plenty pending it is served up to half its fair share, at most
    AHEAD (4) per slot: the one to start and the next ones (claimed ahead); with little
    pending, only the one."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i:02d}", "args": {}} for i in range(tasks)))
    askers = [machine(url, f"box-{n}/1") for n in "bc"]
    try:
        for asker in askers:
            assert asker.ask_for_work(1, Ask())
        with machine(url, "box-a/1") as server:
            server.claim_batch(1)
        for asker in askers:
            assert len(asker.adopt()) == each
    finally:
        for asker in askers:
            asker.close()


def test_a_younger_asker_pushes_nothing_while_the_older_askers_push_serves_it(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """Many askers, one push: a worker whose request is younger than another's does not race the
    branch (all but one racer would lose); it looks again after a pause and finds its run,
    claimed by the older asker's push."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(4)))
    older = machine(url, "box-b/1")
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 1:  # while the younger asker waits, the older one races and lands for both
            older.claim_batch(1, ask=Ask())

    younger = machine(url, "box-c/1", sleep=sleep)
    try:
        assert older.ask_for_work(1, Ask()) and younger.ask_for_work(1, Ask())
        runs = younger.claim_batch(1, ask=Ask())
        assert runs and all(run.record.get("claimed_by") == "box-b/1" for run in runs)
        assert younger.store.pushes == 0, "the younger asker never pushed to the branch"
        assert older.store.pushes == 1 and len(pauses) == 1
        assert request_refs(remote_repo) == {}, "the older asker's push deleted both requests"
    finally:
        older.close()
        younger.close()


def test_a_younger_asker_races_after_a_while_if_the_older_asker_never_pushes(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """An older asker busy with a run (or gone) is not waited for long: after DEFER_FOR seconds
    of its clock the younger asker claims for itself."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}}, {"id": "b", "args": {}})
    now = [time.time()]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += DEFER_FOR  # the older asker does nothing meanwhile

    older = machine(url, "box-b/1")
    younger = machine(url, "box-c/1", sleep=sleep, clock=lambda: now[0])
    try:
        assert older.ask_for_work(1, Ask())
        now[0] += 1.0
        assert younger.ask_for_work(1, Ask())
        runs = younger.claim_batch(1, ask=Ask())
        assert [run.id for run in runs] == ["a"] and "request" not in runs[0].record
        assert younger.store.pushes == 1 and len(pauses) == 1
        assert remote_repo.states() == {"a": "running", "b": "running"}, "its push served the older request too"
    finally:
        older.close()
        younger.close()


def test_a_worker_that_saw_requests_looks_before_each_push_and_serves_new_ones(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """Right after its own push landed a worker may build on it without fetching, unless it has
    seen others asking for work: then it fetches first, so a request pushed meanwhile is served."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(6)))
    server, first, second = (machine(url, f"box-{n}/1") for n in "abc")
    try:
        assert first.ask_for_work(1, Ask())
        server.claim_batch(1)  # serves box-b
        assert len(first.adopt()) >= 1
        assert second.ask_for_work(1, Ask())  # asks right after that push landed
        server.claim_batch(1)  # within the optimistic window of its last landing
        assert len(second.adopt()) >= 1, "the second push did not see the request made after the first"
    finally:
        for queue in (server, first, second):
            queue.close()


def test_a_worker_looks_before_its_second_push_though_its_first_fetch_showed_nobody_asking(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """Workers started together: one lands its first claim, the others lose to it and ask. Its
    first fetch came before they asked, so it has never seen a request; it must still fetch
    before its next push, or it builds on its own landing again and again while every other
    machine waits for it (seen in bench/fleet: 15 machines idle for 8 s)."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(6)))
    with machine(url, "box-a/1") as server, machine(url, "box-b/1") as asker:
        assert [run.id for run in server.claim_batch(1)] == ["t0"]  # nobody asking yet
        assert asker.ask_for_work(1, Ask())  # lost to that push: asks
        server.claim_batch(1)  # right after its landing, within the optimistic window
        assert [run.id for run in asker.adopt()] == ["t2"], "the second push did not look for requests"
        assert request_refs(remote_repo) == {}


def test_claims_for_a_request_taken_back_meanwhile_never_land(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    """A server read a request, and its worker took it back (it stopped) before the server's push:
    the push must not land claims for a worker that is gone (they would sit running until their
    lease ran out). The request ref's deletion is a compare-and-swap: the push loses, and the try
    on a fresh fetch claims for the server alone."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, *({"id": f"t{i}", "args": {}} for i in range(8)))
    asker = machine(url, "box-b/1")
    server = machine(url, "box-a/1")
    assert asker.ask_for_work(1, Ask())
    serve = server.lifecycle.claims.serve
    left: list[bool] = []

    def serve_then_the_asker_stops(*args: Any, **kwargs: Any) -> Any:
        change = serve(*args, **kwargs)
        if not left:  # between the server's fetch and its push
            asker.close()  # takes its request back
            left.append(True)
        return change

    server.lifecycle.claims.serve = serve_then_the_asker_stops  # type: ignore[method-assign]
    try:
        runs = server.claim_batch(1)
    finally:
        server.close()
    assert left and len(runs) == 1
    with Queue.open(url, worker="look") as look:
        holders = {task.run["worker"] for task in look.tasks(State.RUNNING) if task.run}
    assert holders == {"box-a/1"}, holders
    assert request_refs(remote_repo) == {}


def test_a_request_a_damaged_cache_cannot_write_is_not_pushed_and_the_worker_goes_on(
    bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """Asking is best effort: a cache whose objects folder went away (another worker of the
    machine is rebuilding it) pushes no request and raises nothing; the next claim heals the
    cache and claims. Before, the damage escaped the claim's lost race and stopped the worker."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "t1", "args": {}})
    with machine(url, "box-b/1") as asker:
        asker.snapshot()
        shutil.rmtree(asker.store.path / "objects")
        assert asker.ask_for_work(1, Ask()) is False
        assert request_refs(remote_repo) == {}
        assert [run.id for run in asker.claim_batch(1)] == ["t1"]


def test_each_request_commit_is_read_from_the_cache_once(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    """Every build of a claim reads the live requests (and a deferring asker reads them twice):
    a request commit never changes, so its message is read once, not one git process per read."""
    url = str(bare_remote)
    Queue.init(url).close()
    submit(url, {"id": "a", "args": {}})
    for worker in ("box-b/1", "box-c/1"):
        ask_and_die(url, worker)
    with machine(url, "box-a/1") as server:
        server.store.fetch(requests=True)
        looked: list[str] = []
        real_has = server.store.has

        def has(sha: str) -> bool:
            looked.append(sha)
            return real_has(sha)

        server.store.has = has  # type: ignore[method-assign]
        first = requests_read(server.store, now=time.time())
        again = requests_read(server.store, now=time.time())
        assert [r.worker for r in first[0]] == ["box-b/1", "box-c/1"]
        assert again == first
        assert sorted(looked) == sorted(request_refs(remote_repo).values())  # once each
