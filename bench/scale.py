"""(d) the same queue at 1,000 / 10,000 / 100,000 pending tasks, and (e) a 10,000-task grid.

For each size, on one remote: build the queue (one ``submit`` of N tasks through the API),
then measure the raw-git cycle at that size, a new worker's first fetch until it knows what
to claim, claim latency, repository growth per state change (packed and loose), the largest
folder, the CLI's ``status``/``ls``/``results`` and a ``gitqueue work`` process's memory.
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

from bench.env import Transport, git, gitqueue_command, repo_bytes, seed_queue
from bench.rawgit import run_cycles
from bench.report import median

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
