"""(f) optional: Labtasker 2.8 beside gitqueue, draining 500 trivial tasks with 4 workers.

Labtasker is installed into a virtual environment of its own (``python -m venv``, then
``pip install labtasker==2.8.0``); nothing of it is imported here. Its server runs in the
foreground as our own process (``labtasker-server serve --connection socket`` on a SQLite
file: the managed-local set-up, but started and stopped by us), the tasks are submitted
through its Python client inside that venv, and 4 ``labtasker loop --idle-timeout 0 -- true``
workers drain them. Then gitqueue drains the same number with 4 ``gitqueue work -- true``
workers on a local bare remote, in the same run.

Run alone: ``python -m bench.labtasker_compare [--venv DIR] [--tasks 500] [--workers 4]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.proxy import LatencyProxy
from gitqueue.testing import free_port

if TYPE_CHECKING:
    from bench.fleet import FleetResult, Scenario

VERSION = "2.8.0"

_SUBMIT = """
import json, sys
from labtasker import Client
n = int(sys.argv[1])
with Client() as c:
    for i in range(n):
        c.submit_task({"i": i}, name=f"t{i}")
print(json.dumps({"submitted": n}))
"""

_CHECK = """
import json
from collections import Counter
from labtasker import Client
status, attempts, cursor = Counter(), Counter(), None
with Client() as c:
    while True:
        page = c.list_tasks(limit=200, cursor=cursor)
        for t in page.items:
            status[t.status] += 1
            attempts[t.attempt] += 1
        cursor = page.next_cursor
        if not cursor:
            break
print(json.dumps({"status": status, "attempts": attempts}))
"""


@dataclass
class LabtaskerResult:
    tasks: int
    workers: int
    wall: float
    succeeded: int
    attempts: dict[str, int]
    finished: bool
    note: str = ""

    @property
    def tasks_per_s(self) -> float:
        return self.succeeded / self.wall if self.wall > 0 else float("nan")

    @property
    def exactly_once(self) -> bool:
        return self.succeeded == self.tasks and self.attempts == {"1": self.tasks}


def ensure_venv(venv: Path) -> Path:
    """A venv with labtasker==VERSION; returns its bin folder (installs only if missing)."""
    bin_dir = venv / "bin"
    if (bin_dir / "labtasker").exists() and (bin_dir / "labtasker-server").exists():
        return bin_dir
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"labtasker=={VERSION}"],
        check=True,
        timeout=900,
    )
    return bin_dir


def _killpg(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


def drain_labtasker(
    bin_dir: Path,
    folder: Path,
    *,
    tasks: int,
    workers: int,
    budget: float,
    command: list[str] | None = None,
    delay: float | None = None,
) -> LabtaskerResult:
    """Drain ``tasks`` tasks with ``workers`` ``labtasker loop -- COMMAND`` processes.

    With ``delay`` the server listens on HTTP (127.0.0.1) and every client reaches it through
    bench/proxy.py's LatencyProxy (``delay`` each way); else over its Unix socket.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "server.sock"
    env = {**os.environ, "LABTASKER_ROOT": str(folder / "root"), "LABTASKER_QUEUE": "default"}
    for name in ("LABTASKER_URL", "LABTASKER_TOKEN", "LABTASKER_SOCKET"):
        env.pop(name, None)
    with contextlib.ExitStack() as stack:
        if delay is None:
            env["LABTASKER_SOCKET"] = str(sock)
            server_cmd = ["--connection", "socket", "--socket", str(sock)]
        else:
            port = free_port()
            proxy = stack.enter_context(LatencyProxy(port, delay=delay))
            env["LABTASKER_URL"] = f"http://127.0.0.1:{proxy.port}"
            server_cmd = ["--connection", "http", "--host", "127.0.0.1", "--port", str(port)]
        server_cmd = [str(bin_dir / "labtasker-server"), "serve", *server_cmd, "--database", str(folder / "server.db")]
        return _drain(bin_dir, folder, env, server_cmd, tasks=tasks, workers=workers, budget=budget,
                      command=command or ["true"])  # fmt: skip


def _drain(
    bin_dir: Path,
    folder: Path,
    env: dict[str, str],
    server_cmd: list[str],
    *,
    tasks: int,
    workers: int,
    budget: float,
    command: list[str],
) -> LabtaskerResult:
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(folder / log, "wb") as out:
            proc = subprocess.Popen(
                argv, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        procs.append(proc)
        return proc

    def run(argv: list[str]) -> str:
        proc = subprocess.run(argv, cwd=folder, env=env, capture_output=True, timeout=300)
        if proc.returncode:
            raise RuntimeError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')[-500:]}")
        return proc.stdout.decode()

    try:
        server = start(server_cmd, "server.log")
        deadline = time.monotonic() + 60
        while True:  # the server is up once the queue can be created
            try:
                run([str(bin_dir / "labtasker"), "queue", "create", "default"])
                break
            except RuntimeError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        run([str(bin_dir / "python"), "-c", _SUBMIT, str(tasks)])
        t0 = time.monotonic()
        loops = [
            start([str(bin_dir / "labtasker"), "loop", "--idle-timeout", "0", "--", *command], f"loop-{i}.log")
            for i in range(workers)
        ]
        deadline = t0 + budget
        while any(p.poll() is None for p in loops) and time.monotonic() < deadline:
            time.sleep(0.02)
        finished = all(p.poll() is not None for p in loops)
        wall = time.monotonic() - t0
        for p in loops:
            _killpg(p)
        check = json.loads(run([str(bin_dir / "python"), "-c", _CHECK]))
    finally:
        for p in reversed(procs):
            _killpg(p)
    return LabtaskerResult(
        tasks=tasks,
        workers=workers,
        wall=wall,
        succeeded=int(check["status"].get("succeeded", 0)),
        attempts={str(k): v for k, v in check["attempts"].items()},
        finished=finished,
    )


def fleet_row(venv: Path, root: Path, s: Scenario, *, delay: float, budget: float) -> LabtaskerResult:
    """Scenario ``s`` of bench/fleet.py with Labtasker: as many loops as slots, behind the same proxy."""
    bin_dir = ensure_venv(venv)
    command = ["sleep", f"{s.seconds:g}"] if s.seconds else ["true"]
    return drain_labtasker(bin_dir, root / f"labtasker-{s.name}", tasks=s.tasks, workers=s.machines * s.slots,
                           budget=budget, command=command, delay=delay if s.proxy else None)  # fmt: skip


def fleet_cells(lab: LabtaskerResult, ours: FleetResult) -> list[object]:
    """A row of bench/fleet.py's table for Labtasker, with gitqueue's ratio to it in the efficiency column."""
    s = ours.scenario
    eff = (s.tasks * s.seconds / (s.machines * s.slots)) / lab.wall if lab.wall > 0 else float("nan")
    if s.seconds:
        versus = f"{eff:.2f}; gitqueue/Labtasker {ours.efficiency / eff:.2f}x" if eff else "-"
    else:
        ratio = ours.check.done / ours.wall / lab.tasks_per_s if lab.tasks_per_s else float("nan")
        versus = f"{lab.tasks_per_s:.1f} tasks/s (wall); gitqueue/Labtasker {ratio:.2f}x (wall)"
    once = "ok" if lab.exactly_once else f"FAILED: {lab.succeeded}/{lab.tasks} succeeded, attempts {lab.attempts}"
    link = "Unix socket" if not s.proxy else "HTTP behind the proxy"
    done = "" if lab.finished else " (timed out)"
    return [f"Labtasker {VERSION}, same tasks ({link})", f"{lab.workers} `labtasker loop`", versus,
            "-", "-", "-", "-", "-", "-", "-", once, f"{lab.wall:.1f}s{done}"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from bench import drain
    from bench.env import sandbox, transport

    parser = argparse.ArgumentParser(prog="python -m bench.labtasker_compare", description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, help="reuse (or create) the Labtasker venv here")
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds allowed per drain")
    opts = parser.parse_args(argv)
    with sandbox() as root:
        bin_dir = ensure_venv(opts.venv or root / "labtasker-venv")
        lab = drain_labtasker(bin_dir, root / "labtasker", tasks=opts.tasks, workers=opts.workers, budget=opts.budget)
        with transport("path", root / "srv") as t:
            ours = drain.drain(t, root, workers=opts.workers, tasks=opts.tasks, budget=opts.budget)
    print(f"labtasker {VERSION}: {lab.tasks_per_s:.1f} tasks/s ({lab.succeeded}/{lab.tasks} in {lab.wall:.1f}s)")
    print(f"gitqueue: {ours.wall_tasks_per_s:.1f} tasks/s ({ours.check.done}/{ours.tasks} in {ours.wall:.1f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
