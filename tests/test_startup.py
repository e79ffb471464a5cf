"""A worker's start costs little: what `gitqueue work` loads and spawns before its first claim.

Issue 12: a fleet launched at once spends its first seconds starting Python and reaching the
forge. These tests run the real command in a fresh process against a real bare remote and look
at what it did: which modules it imported (nothing a worker does not use) and which git
processes it started (GIT_TRACE2_EVENT, written by git itself), before and after its first claim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gitqueue import Queue
from gitqueue.gitstore import SHARED_FOR

# Loaded only by the commands that need them: never by a worker.
NOT_FOR_WORK = (
    "rich",
    "plotly",
    "optuna",
    "gitqueue.hooks",
    "gitqueue.progress",
    "gitqueue.report",
    "gitqueue.report_cache",
    "gitqueue.report_data",
    "gitqueue.report_page",
    "gitqueue.tune",
    "gitqueue.sweep",
    "gitqueue.localrepo",
    "gitqueue.slurm",
    "gitqueue.kubernetes",
    "gitqueue.ci",
)

# Runs `gitqueue work` in this process, then prints the modules it ended with.
RUN_WORK = """
import json, sys
from gitqueue.cli import main
sys.argv = ["gitqueue", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _seed(url: str, count: int) -> list[str]:
    with Queue.init(url, worker="seed") as q:
        return q.submit([{"args": {"i": i}} for i in range(count)])


def test_work_loads_nothing_it_does_not_use(bare_remote: Path, tmp_path: Path) -> None:
    ids = _seed(str(bare_remote), 1)
    argv = ["work", "--queue", str(bare_remote), "--worker", "w1", "--log-dir", str(tmp_path / "logs"), "--", "true"]
    proc = subprocess.run([sys.executable, "-c", RUN_WORK, *argv], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout.decode().splitlines()[-1])
    assert result["code"] == 0
    with Queue.open(str(bare_remote)) as q:  # it did its work: the task is done
        assert [t.id for t in q.tasks("done")] == ids
    loaded = [m for m in result["modules"] if m.split(".")[0] in ("rich", "plotly", "optuna") or m in NOT_FOR_WORK]
    assert loaded == []


def test_help_and_version_still_work() -> None:
    """The commands that do use rich or the hooks still get them (lazily)."""
    gq = [sys.executable, "-m", "gitqueue"]
    version = subprocess.run([*gq, "--version"], capture_output=True, timeout=60, check=True)
    assert version.stdout.decode().startswith("gitqueue ")
    helped = subprocess.run([*gq, "hooks", "ci", "github"], capture_output=True, timeout=60, check=True)
    assert b"gitqueue" in helped.stdout


def _git_starts(trace: Path) -> list[list[str]]:
    """The argv of every git process started, in order, from a GIT_TRACE2_EVENT file."""
    starts = []
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "start":
            starts.append(event["argv"])
    return starts


def _run_work(url: str, tmp_path: Path, *extra: str) -> tuple[list[list[str]], dict[str, object]]:
    trace, stats = tmp_path / "trace2.json", tmp_path / "stats.json"
    env = {**os.environ, "GIT_TRACE2_EVENT": str(trace), "GITQUEUE_STATS_FILE": str(stats)}
    env["GITQUEUE_CACHE"] = str(tmp_path / "worker-cache")  # fresh: not the seed's
    argv = [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", "w1", *extra]
    argv += ["--log-dir", str(tmp_path / "logs"), "--", "true"]
    proc = subprocess.run(argv, capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return _git_starts(trace), json.loads(stats.read_text())


def _before_first_push(starts: list[list[str]]) -> list[list[str]]:
    first = next(i for i, argv in enumerate(starts) if argv[1:2] == ["push"])
    return starts[:first]


def test_work_fetches_once_before_its_first_claim(bare_remote: Path, tmp_path: Path) -> None:
    """Opening, looking for dead runs, learning the fleet and claiming share one fetch (issue 12:
    over a forge far away each fetch is a round trip, and a fleet launched at once makes them all)."""
    ids = _seed(str(bare_remote), 2)
    starts, stats = _run_work(str(bare_remote), tmp_path, "--max-tasks", "1")
    before = _before_first_push(starts)
    fetches = [argv for argv in before if argv[0] == "git" and "fetch" in argv]
    assert len(fetches) == 1
    assert any(spec.startswith("+refs/gitqueue/leases/") for spec in fetches[0])  # all a start reads, at once
    assert any(spec.startswith("+refs/gitqueue/requests/") for spec in fetches[0])
    assert stats["done"] == 1
    with Queue.open(str(bare_remote)) as q:
        assert [t.id for t in q.tasks("done")] == ids[:1]
        assert [t.id for t in q.tasks("pending")] == ids[1:]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_shared_first_fetch_serves_reads_until_the_first_claim(bare_remote: Path, tmp_path: Path) -> None:
    first = _seed(str(bare_remote), 1)
    clock = FakeClock()
    with Queue.open(str(bare_remote), worker="w", monotonic=clock, share_first_fetch=True) as q:
        seen = q.store.fetch(leases=True)  # served: opening fetched everything
        assert q.store.fetches == 1
        with Queue.open(str(bare_remote), worker="other", cache=tmp_path / "elsewhere") as other:
            later = other.submit([{"args": {"i": 9}}])
        assert q.store.fetch(leases=True) == seen and q.store.fetches == 1
        claimed = q.claim()  # the first claim try is served too, and spends the view
        assert claimed is not None and claimed.id == first[0]
        assert q.store.fetch() != seen and q.store.fetches >= 2  # a real fetch again
        assert [t.id for t in q.tasks("pending")] == later


def test_a_shared_first_fetch_ends_with_a_push_or_its_time(bare_remote: Path, tmp_path: Path) -> None:
    """Another machine's push (its own cache) after the shared fetch: seen once the view is too
    old, or after our own push, which the view never makes land twice."""
    _seed(str(bare_remote), 1)
    clock = FakeClock()
    with Queue.open(str(bare_remote), worker="w", monotonic=clock, share_first_fetch=True) as q:
        with Queue.open(str(bare_remote), worker="other", cache=tmp_path / "elsewhere") as other:
            theirs = other.submit([{"args": {"i": 1}}])
        clock.now += SHARED_FOR  # too old now: fetched again
        assert theirs[0] in [t.id for t in q.tasks("pending")]
    with Queue.open(str(bare_remote), worker="w", monotonic=clock, share_first_fetch=True) as q:
        with Queue.open(str(bare_remote), worker="other", cache=tmp_path / "elsewhere") as other:
            other.submit([{"args": {"i": 2}}])
        mine = q.submit([{"args": {"i": 3}}])  # built on the shared view, lost the race, built again: lands
        assert q.store.rejected_pushes == 1
        pending = [t.id for t in q.tasks("pending")]  # after our push: fetched
        assert mine[0] in pending and len(pending) == 4


def _git_events(trace: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in trace.read_text().splitlines()]


def test_with_the_branch_told_the_remote_is_asked_while_the_cache_fetches(bare_remote: Path, tmp_path: Path) -> None:
    """A worker warns when the remote's HEAD names another branch: the ls-remote that learns it
    goes beside opening the cache and its first fetch, not one round trip after them."""
    ids = _seed(str(bare_remote), 1)
    trace = tmp_path / "trace2.json"
    env = {**os.environ, "GIT_TRACE2_EVENT": str(trace), "GITQUEUE_BRANCH": "main"}
    env["GITQUEUE_CACHE"] = str(tmp_path / "worker-cache")
    argv = [sys.executable, "-m", "gitqueue", "work", "--queue", str(bare_remote), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run([*argv, "--", "true"], capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    events = _git_events(trace)
    starts = {e["sid"]: e for e in events if e["event"] == "start"}
    asks = [e for e in starts.values() if "ls-remote" in e["argv"]]  # type: ignore[operator]
    fetch = next(e for e in starts.values() if "fetch" in e["argv"])  # type: ignore[operator]
    fetch_exit = next(e for e in events if e["event"] == "exit" and e["sid"] == fetch["sid"])
    assert len(asks) == 1
    assert str(asks[0]["time"]) < str(fetch_exit["time"])  # under way before the first fetch ended
    with Queue.open(str(bare_remote)) as q:
        assert [t.id for t in q.tasks("done")] == ids
