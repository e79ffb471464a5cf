"""(d) the same queue at 1,000 / 10,000 / 100,000 pending tasks, (e) a 10,000-task grid, and
(h) the same drain out of a 1,000-task and a 100,000-task queue.

(d): for each size, on one remote: build the queue (one ``submit`` of N tasks through the API),
then measure the raw-git cycle at that size, a new worker's first fetch until it knows what
to claim, claim latency, repository growth per state change (packed and loose), the largest
folder, the CLI's ``status``/``ls``/``results`` and a ``gitqueue work`` process's memory.

(h) (issue 12: "a drain's tasks/s at 100,000 tasks at least 0.67x the same drain at 1,000"):
for each size, a queue seeded in one commit by ``git fast-import`` (the files byte for byte
what one submit writes, in seconds where the submit takes ~40 s at 100,000), served by
``git daemon`` on 127.0.0.1; a ``gitqueue status`` warms the machine's shared cache (as on a
machine already working on the queue: a new worker's first look is (d)'s figure); then W
``gitqueue work --max-tasks D/W -- true`` processes sharing that cache drain D tasks out of
it. tasks/s counts from the first worker ready to the last one's exit, as (c) does; the
remote's tree and history are checked: D tasks done once each, every other one still pending.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench.checks import Check, changes, files_by_id, messages_since
from bench.drain import run_workers
from bench.env import Remote, Transport, git, gitqueue_command, repo_bytes, seed_queue
from bench.rawgit import run_cycles
from bench.report import median
from gitqueue.snapshot import FLAT_LIMIT
from gitqueue.task import MARKER, SEQ_DIGITS, State, Task, fan, now_iso, render

if TYPE_CHECKING:
    from gitqueue import Queue
    from gitqueue.queue import Run


@dataclass
class ScaleResult:
    transport: str
    tasks: int
    build: float = float("nan")  # seconds for the one submit that built the queue
    raw_cycle: float = float("nan")
    first_fetch: float = float("nan")  # fresh cache: open the queue and fetch the branch
    first_ready: float = float("nan")  # fresh cache: open, fetch, first claim landed
    claim: float = float("nan")  # warm worker: q.claim() median
    finish_claim: float = float("nan")  # warm worker: finish + next claim in one commit, median
    claims: int = 0
    connectivity: float = float("nan")  # git's own walk on every push received: rev-list --objects tip --not tip~1
    changes: int = 0  # state changes (landed commits) measured for growth
    packed_per_change: float = float("nan")
    loose_per_change: float = float("nan")
    largest_folder: tuple[str, int] = ("", 0)
    cli: dict[str, float] = field(default_factory=dict)  # command -> seconds (negative: timed out)
    worker_rss_mb: float = float("nan")  # peak RSS (VmHWM) of the `gitqueue work` process itself
    worker_tree_rss_mb: float = float("nan")  # peak RSS including its git children (wait4)
    worker_seconds: float = float("nan")


def connectivity_walk(remote: Path, runs: int = 7) -> float:
    """Seconds (median) of the connectivity check git's receive-pack runs on every push it
    accepts, for a push of one commit onto the tip: ``rev-list --objects`` of the new commit
    against the old tip, which marks the old tip's whole tree as already present. It grows
    with the number of files at the tip, whoever pushes."""
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        git("rev-list", "--objects", "--quiet", "main", "--not", "main~1", cwd=remote)
        times.append(time.perf_counter() - t)
    return median(times)


def largest_folder(remote: Path) -> tuple[str, int]:
    """The folder with the most entries at the branch tip (forges list at most 1,000)."""
    counts: Counter[str] = Counter()
    for path in git("ls-tree", "-r", "-t", "--name-only", "-z", "main", cwd=remote).decode().split("\0"):
        if path:
            counts[path.rsplit("/", 1)[0] if "/" in path else "/"] += 1
    return counts.most_common(1)[0] if counts else ("", 0)


def timed_cli(args: list[str], *, cwd: Path, env: dict[str, str], budget: float) -> float:
    """Seconds for one CLI command (output discarded); minus the budget if it timed out."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [*gitqueue_command(), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=budget)
    except subprocess.TimeoutExpired:
        _killpg(proc)
        return -budget
    if proc.returncode:
        raise RuntimeError(f"gitqueue {' '.join(args[:2])} exited {proc.returncode}: {err.decode()[-300:]}")
    return time.perf_counter() - t


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
            return


def _vm_hwm_kb(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def worker_memory(url: str, folder: Path, *, tasks: int, budget: float) -> tuple[float, float, float]:
    """Run ``gitqueue work --max-tasks N -- true`` with a fresh cache; (own peak MB, with children MB, s)."""
    folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GITQUEUE_CACHE": str(folder / "cache")}
    cmd = [*gitqueue_command(), "work", "--queue", url, "--worker", "bench-mem", "--max-tasks", str(tasks)]
    cmd += ["--log-dir", str(folder / "logs"), "--", "true"]
    t = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    own = 0
    deadline = time.monotonic() + budget
    try:
        while time.monotonic() < deadline:
            own = max(own, _vm_hwm_kb(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return own / 1024, usage.ru_maxrss / 1024, time.perf_counter() - t
            time.sleep(0.05)
        return own / 1024, float("nan"), -budget
    finally:
        if proc.returncode is None:
            _killpg(proc)


def measure(t: Transport, root: Path, *, tasks: int, claims: int, budget: float) -> ScaleResult:
    from gitqueue import Queue

    res = ScaleResult(t.kind, tasks)
    remote = t.new_remote(f"scale-{tasks}")
    folder = root / f"scale-{t.kind}-{tasks}"
    start = time.perf_counter()
    seed_queue(remote.url, tasks, folder / "seed")
    res.build = time.perf_counter() - start

    raw = run_cycles(remote.url, folder / "raw.git", how="mktree", cycles=claims, budget=budget / 4)
    res.raw_cycle = median(raw.cycle)

    git("repack", "-adq", cwd=remote.path)
    packed_before, _ = repo_bytes(remote.path)
    tip_before = git("rev-parse", "main", cwd=remote.path).decode().strip()

    start = time.perf_counter()
    with Queue(remote.url, worker="bench-new", cache=folder / "cache-new") as q:
        q.snapshot()
        res.first_fetch = time.perf_counter() - start
        run = q.claim()
        res.first_ready = time.perf_counter() - start
        claim_times, cycle_times = claim_cycles(q, run, claims=claims, budget=budget / 2)
    res.claim = median(claim_times)
    res.finish_claim = median(cycle_times)
    res.claims = len(claim_times)

    res.connectivity = connectivity_walk(remote.path)
    res.changes = int(git("rev-list", "--count", f"{tip_before}..main", cwd=remote.path))
    _, loose_after = repo_bytes(remote.path)
    git("repack", "-adq", cwd=remote.path)
    packed_after, _ = repo_bytes(remote.path)
    if res.changes:
        res.packed_per_change = (packed_after - packed_before) / res.changes
        res.loose_per_change = loose_after / res.changes
    res.largest_folder = largest_folder(remote.path)

    env = {**os.environ, "GITQUEUE_CACHE": str(folder / "cli-cache")}
    cli_budget = max(30.0, budget / 4)
    fresh = ["status", "--queue", remote.url]
    res.cli["status (fresh cache)"] = timed_cli(fresh, cwd=folder, env=env, budget=cli_budget)
    for name, args in (
        ("status", ["status"]),
        ("ls", ["ls"]),
        ("ls --state running", ["ls", "--state", "running"]),
        ("results", ["results"]),
    ):
        res.cli[name] = timed_cli([*args, "--queue", remote.url], cwd=folder, env=env, budget=cli_budget)

    own, tree, seconds = worker_memory(remote.url, folder / "mem", tasks=10, budget=cli_budget)
    res.worker_rss_mb, res.worker_tree_rss_mb, res.worker_seconds = own, tree, seconds
    shutil.rmtree(folder, ignore_errors=True)
    return res


@dataclass
class GridResult:
    tasks: int
    cli: float
    raw: float
    commits: int


def grid(t: Transport, root: Path, *, side: int, budget: float) -> GridResult:
    """``gitqueue submit --grid a=... --grid b=...`` of side x side tasks, and raw git's cost of
    the same files in one commit (``git fast-import`` of the same blobs, then a push)."""
    remote = t.new_remote("grid")
    folder = root / f"grid-{t.kind}"
    _, seed = seed_queue(remote.url, 0, folder / "seed")
    values = ",".join(str(v) for v in range(side))
    env = {**os.environ, "GITQUEUE_CACHE": str(folder / "cli-cache")}
    seconds = timed_cli(
        ["submit", "--queue", remote.url, "--grid", f"a={values}", "--grid", f"b={values}", "--format", "json"],
        cwd=folder,
        env=env,
        budget=budget,
    )
    commits = int(git("rev-list", "--count", f"{seed}..main", cwd=remote.path))

    # Raw git: the same file contents, written and committed by fast-import, then pushed.
    listing = git("ls-tree", "-r", "-z", "main", "pending", cwd=remote.path).decode().split("\0")
    entries = [(line.split("\t", 1)[1], line.split()[2]) for line in listing if line]
    batch = git("cat-file", "--batch", cwd=remote.path, input="".join(f"{sha}\n" for _, sha in entries).encode())
    stream = [b"commit refs/heads/main\n", b"committer raw <raw@bench.invalid> 0 +0000\n"]
    message = b"submit grid (raw)"
    stream += [b"data %d\n" % len(message), message, b"\n", b"from " + seed.encode() + b"\n"]
    pos = 0
    for path, _ in entries:
        header_end = batch.index(b"\n", pos)
        size = int(batch[pos:header_end].split()[2])
        data = batch[header_end + 1 : header_end + 1 + size]
        pos = header_end + 1 + size + 1
        stream += [b"M 100644 inline " + path.encode() + b"\n", b"data %d\n" % len(data), data, b"\n"]
    raw_remote = t.new_remote("grid-raw")
    client = folder / "raw.git"
    git("init", "--bare", "-q", str(client))
    git("push", "-q", raw_remote.url, f"{seed}:refs/heads/main", cwd=remote.path)
    git("-c", "protocol.version=0", "fetch", "-q", raw_remote.url, "main:refs/heads/main", cwd=client)
    t0 = time.perf_counter()  # the clock starts once both sides hold the seed, as for the CLI
    git("fast-import", "--quiet", cwd=client, input=b"".join(stream))
    git("push", "-q", raw_remote.url, "main:refs/heads/main", cwd=client)
    raw_seconds = time.perf_counter() - t0
    shutil.rmtree(folder, ignore_errors=True)
    return GridResult(tasks=side * side, cli=seconds, raw=raw_seconds, commits=commits)


def claim_cycles(
    q: Queue, run: Run | None, *, claims: int, budget: float, check: Callable[[Run], None] | None = None
) -> tuple[list[float], list[float]]:
    """A warm worker's two figures, ``claims`` times (at most ``budget`` s): a claim alone, then
    a finish and the next claim in one commit. ``run`` is one it holds already; ``check`` looks
    at each run claimed alone. Returns (claim times, finish+claim times), in seconds."""
    from gitqueue.queue import Report

    deadline = time.monotonic() + budget
    claim_times: list[float] = []
    cycle_times: list[float] = []
    for _ in range(claims):
        t0 = time.perf_counter()
        other = q.claim()
        claim_times.append(time.perf_counter() - t0)
        if other is None or run is None:
            break
        if check is not None:
            check(other)
        t0 = time.perf_counter()
        run = q.finish(Report(run.id, run.token, "done"), then_claim={}).next
        cycle_times.append(time.perf_counter() - t0)
        q.finish(Report(other.id, other.token, "done"))
        if time.monotonic() > deadline:
            break
    return claim_times, cycle_times


# ---------------------------------------------------------------- (h)

SEEDER = "bench-seed"


def _pending_file(index: int, stamp: str) -> bytes:
    """What ``submit`` writes for the task ``{"args": {"i": index}}`` submitted at ``stamp``."""
    return f"args: {{i: {index}}}\n{MARKER}\nsubmitted:\n  at: '{stamp}'\n  by: {SEEDER}\n".encode()


def fast_seed(remote: Remote, tasks: int, folder: Path) -> tuple[list[str], str]:
    """A queue at ``remote`` with ``tasks`` pending tasks ``{"args": {"i": n}}`` added in one
    commit by ``git fast-import`` on the server's repository: the ids, paths (fanned out past
    FLAT_LIMIT) and bytes one ``submit`` of the same tasks makes (checked against ``render``),
    ~1 s for 100,000 where the submit takes ~40 s. Returns (ids, tip)."""
    _, parent = seed_queue(remote.url, 0, folder)
    stamp = now_iso()
    ids = [f"{n + 1:0{SEQ_DIGITS}d}-i{n}" for n in range(tasks)]
    for n in {0, tasks - 1} if tasks else ():
        task = Task(id=ids[n], state=State.PENDING, args={"i": n}, submitted={"at": stamp, "by": SEEDER})
        assert render(task) == _pending_file(n, stamp), (render(task), _pending_file(n, stamp))
    fanned = tasks > FLAT_LIMIT
    message = f"submit {tasks} tasks\n\nGitqueue-Action: submit\nGitqueue-Count: {tasks}\n".encode()
    committer = f"committer {SEEDER} <{SEEDER}@bench.invalid> {int(time.time())} +0000\n"
    stream = [b"commit refs/heads/main\n", committer.encode(), b"data %d\n" % len(message), message]
    stream.append(f"from {parent}\n".encode())
    for n, task_id in enumerate(ids):
        path = f"pending/{fan(task_id)}/{task_id}.yaml" if fanned else f"pending/{task_id}.yaml"
        data = _pending_file(n, stamp)
        stream += [f"M 100644 inline {path}\ndata {len(data)}\n".encode(), data, b"\n"]
    git("fast-import", "--quiet", cwd=remote.path, input=b"".join(stream))
    return ids, git("rev-parse", "main", cwd=remote.path).decode().strip()


def drained_once(remote: Path, ids: list[str], seed: str, *, drained: int) -> Check:
    """bench/checks.py's exactly-once, for a drain of ``drained`` tasks out of a bigger queue:
    that many done, each claimed once unless handed back, every other task still pending and
    never claimed, no id in two folders, none missing or unexpected."""
    check = Check(expected=drained)
    files = files_by_id(remote)
    for task_id in ids:
        states = files.get(task_id, [])
        check.missing += not states
        check.in_two_folders += len(states) > 1
        check.where.update(states)
    check.done = check.where["done"]
    messages = messages_since(remote, seed)
    check.commits = len(messages)
    claims: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    for message in messages:
        for action, task_id in changes(message):
            if action == "claim":
                claims[task_id] += 1
            elif action != "done":  # anything that hands a task back: it may be claimed again
                retries[task_id] += 1
    done = [t for t in ids if files.get(t) == ["done"]]
    check.claims_over_one = sum(1 for t in ids if claims[t] > 1 + retries[t])
    if check.done != drained or check.where["pending"] != len(ids) - drained:
        check.problems.append(f"{check.done} of {drained} tasks in done/ ({dict(check.where)})")
    if check.in_two_folders or check.missing:
        check.problems.append(f"{check.in_two_folders} ids in two folders, {check.missing} missing")
    if set(files) - set(ids):
        check.problems.append(f"{len(set(files) - set(ids))} unexpected task files")
    if check.claims_over_one:
        check.problems.append(f"{check.claims_over_one} tasks claimed more than once without a retry")
    if any(claims[t] == 0 for t in done):
        check.problems.append(f"{sum(1 for t in done if claims[t] == 0)} done tasks never claimed in the history")
    return check


@dataclass
class SizeDrain:
    """One drain of ``drained`` tasks out of a queue of ``tasks`` pending ones."""

    tasks: int
    drained: int
    workers: int
    transport: str
    seed: float  # seconds to seed the queue (fast-import)
    warm: float  # seconds for the `gitqueue status` that warmed the shared cache
    wall: float  # launch of the first worker to exit of the last
    steady: float  # first worker ready to the last one's exit
    finished: bool
    pushes: int
    rejected: int
    check: Check

    @property
    def tasks_per_s(self) -> float:
        return self.check.done / self.steady if self.steady > 0 else float("nan")


def drain_at_size(
    t: Transport, root: Path, *, tasks: int, drained: int, workers: int, budget: float, command: list[str] | None = None
) -> SizeDrain:
    """Seed ``tasks`` pending tasks, warm the shared cache, drain ``drained`` with ``workers``."""
    remote = t.new_remote(f"size-{tasks}")
    folder = root / f"size-{t.kind}-{tasks}"
    start = time.perf_counter()
    ids, seed = fast_seed(remote, tasks, folder / "seed")
    seeded = time.perf_counter() - start
    env = {**os.environ, "GITQUEUE_CACHE": str(folder / "cache")}
    warm = timed_cli(["status", "--queue", remote.url], cwd=folder, env=env, budget=budget / 4)
    each = drained // workers
    wall, finished, stats = run_workers(
        remote.url, folder, workers=workers, budget=budget, shared_cache=True, command=command,
        options=["--max-tasks", str(each)],
    )  # fmt: skip
    steady = max(s["ended"] for s in stats) - min(s["started"] for s in stats) if stats else wall
    check = drained_once(remote.path, ids, seed, drained=each * workers)
    shutil.rmtree(folder, ignore_errors=True)
    return SizeDrain(
        tasks=tasks, drained=each * workers, workers=workers, transport=t.kind, seed=seeded, warm=warm, wall=wall,
        steady=min(steady, wall) if steady > 0 else wall, finished=finished,
        pushes=int(sum(s["pushes"] for s in stats)), rejected=int(sum(s["rejected_pushes"] for s in stats)),
        check=check,
    )  # fmt: skip
