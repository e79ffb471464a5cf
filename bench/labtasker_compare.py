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


def drain_labtasker(bin_dir: Path, folder: Path, *, tasks: int, workers: int, budget: float) -> LabtaskerResult:
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "server.sock"
    env = {
        **os.environ,
        "LABTASKER_ROOT": str(folder / "root"),
        "LABTASKER_SOCKET": str(sock),
        "LABTASKER_QUEUE": "default",
    }
    env.pop("LABTASKER_URL", None)
    env.pop("LABTASKER_TOKEN", None)
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

    server_cmd = [str(bin_dir / "labtasker-server"), "serve", "--connection", "socket"]
    server_cmd += ["--socket", str(sock), "--database", str(folder / "server.db")]
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
            start([str(bin_dir / "labtasker"), "loop", "--idle-timeout", "0", "--", "true"], f"loop-{i}.log")
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
