"""What the server hook costs a push: ``python -m bench.hooks``.

Measured on one machine in one run, each beside the same push without the hook and with
an empty hook (``exit 0``: what any hook costs git), over a path remote and ``git daemon``:

* a raw git push of a claim-shaped commit (one file moved from pending/ to running/);
* gitqueue's own claim push (``Queue.claim``: fetch, build, push), pending/ flat (1,000
  tasks) and fanned out (10,000 tasks), to show that the hook reads only what changed;
* a heartbeat push to a lease ref (the hook's shell prologue lets it through without Python).

Run it on a quiet machine: other work skews every figure. Python's start-up is most of the
hook's cost; with ``PYTHONDONTWRITEBYTECODE`` set, every run also recompiles gitqueue.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.env import git, sandbox
from gitqueue import Queue
from gitqueue.hooks import install
from gitqueue.testing import GitDaemon, make_bare_repo

KINDS = ("none", "empty", "gitqueue")


def _hook(bare: Path, kind: str) -> None:
    hook = bare / "hooks" / "pre-receive"
    hook.unlink(missing_ok=True)
    if kind == "empty":
        hook.write_text("#!/bin/sh\nexit 0\n")
        hook.chmod(0o755)
    elif kind == "gitqueue":
        install(server=bare)


@contextmanager
def _remote(root: Path, name: str, transport: str) -> Iterator[tuple[str, Path]]:
    bare = make_bare_repo(root / "srv" / f"{name}.git")
    if transport == "path":
        yield str(bare), bare
        return
    with GitDaemon(root / "srv") as daemon:
        yield daemon.url(f"{name}.git"), bare


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:6.1f} ms"


def raw_pushes(root: Path, transport: str, rounds: int) -> dict[str, list[float]]:
    """Raw git: push precomputed claim-shaped commits, one after another."""
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with _remote(root, f"raw-{transport}", transport) as (url, bare):
        with Queue.init(url, worker="bench/0", folder=root) as q:
            q.submit([{"args": {"i": i}} for i in range(rounds * len(KINDS) + 1)])
        work = root / f"raw-{transport}-clone"
        git("clone", "-q", url, str(work))
        for kind in KINDS:
            _hook(bare, kind)
            for _ in range(rounds):
                name = sorted((work / "pending").glob("*.yaml"))[0].name
                git("mv", f"pending/{name}", f"running/{name}", cwd=work)
                text = (work / "running" / name).read_text()
                (work / "running" / name).write_text(text + "run: {token: abc, worker: raw}\n")
                git("commit", "-qam", f"claim {name}", cwd=work, identity=True)
                start = time.perf_counter()
                git("push", "-q", "origin", "HEAD:main", cwd=work)
                times[kind].append(time.perf_counter() - start)
    return times


class _TimedPush:
    """Wraps ``GitStore.push`` to time each call."""

    def __init__(self, push: Callable[..., Any]) -> None:
        self.push = push
        self.times: list[float] = []

    def __call__(self, *args: Any, **kw: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.push(*args, **kw)
        finally:
            self.times.append(time.perf_counter() - start)


def claim_pushes(root: Path, transport: str, tasks: int, rounds: int) -> dict[str, list[float]]:
    """gitqueue's claim: the push step alone, and the whole claim, with each kind of hook."""
    times: dict[str, list[float]] = {}
    with (
        _remote(root, f"claims-{transport}-{tasks}", transport) as (url, bare),
        Queue.init(url, worker="b/0", folder=root) as q,
    ):
        q.submit([{"args": {"i": i}} for i in range(tasks)])
        push = q.store.push
        for kind in KINDS:
            _hook(bare, kind)
            timed = _TimedPush(push)
            setattr(q.store, "push", timed)  # noqa: B010 (instrumenting one instance)
            cycles = []
            for _ in range(rounds):
                start = time.perf_counter()
                assert q.claim() is not None
                cycles.append(time.perf_counter() - start)
            setattr(q.store, "push", push)  # noqa: B010
            times[f"{kind} push"] = timed.times
            times[f"{kind} claim"] = cycles
    return times


def lease_pushes(root: Path, rounds: int) -> dict[str, list[float]]:
    """A heartbeat to a lease ref: the hook's shell prologue lets it through."""
    times: dict[str, list[float]] = {}
    with _remote(root, "leases", "path") as (url, bare), Queue.init(url, worker="bench/0", folder=root) as q:
        for kind in ("none", "gitqueue"):
            _hook(bare, kind)
            tip = None
            samples = []
            for i in range(rounds):
                start = time.perf_counter()
                tip = q.store.heartbeat(f"run-{kind}", parent=tip, message=f"beat {i}", author=q.identity)
                samples.append(time.perf_counter() - start)
                assert tip is not None
            times[kind] = samples
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hooks", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20, help="pushes per figure [20]")
    p.add_argument("--transports", default="path,daemon")
    p.add_argument("--no-bytecode", action="store_true", help="let the hook recompile gitqueue at every push")
    opts = p.parse_args(argv)
    print(f"# server hook overhead ({opts.rounds} pushes each; median; load {os.getloadavg()[0]:.1f})")
    print(f"python {sys.version.split()[0]} at {sys.executable}; {subprocess.getoutput('git --version')}")
    print("bytecode: " + ("recompiled at every push" if opts.no_bytecode else "cached, as installed"))
    with sandbox() as root:
        if opts.no_bytecode:
            os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        else:  # as installed: compiled once (into the sandbox, not the source tree)
            os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
            os.environ["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        for transport in opts.transports.split(","):
            raw = raw_pushes(root, transport, opts.rounds)
            print(f"\n## {transport}: raw git push of a claim-shaped commit")
            for kind in KINDS:
                print(f"  hook {kind:9} {_ms(raw[kind])}")
            for tasks in (1000, 10_000):
                claims = claim_pushes(root, transport, tasks, opts.rounds)
                layout = "flat" if tasks <= 1000 else "fanned out"
                print(f"## {transport}: gitqueue claim, {tasks:,} pending ({layout})")
                for kind in KINDS:
                    push, claim = claims[f"{kind} push"], claims[f"{kind} claim"]
                    print(f"  hook {kind:9} push {_ms(push)}   whole claim {_ms(claim)}")
        leases = lease_pushes(root, opts.rounds)
        print("\n## path: heartbeat push to a lease ref")
        for kind, samples in leases.items():
            print(f"  hook {kind:9} {_ms(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
