"""The raw-git ceiling: one client moving one file per commit with git plumbing.

Each cycle does what any git-backed queue must do at the least, spawning git per step:
fetch the branch, pick the first file under ``pending/`` (descending into a fan-out
subfolder if there is one), build a commit on that exact tip that moves the file to
``running/`` (same blob: a pure rename) and push it as a plain compare-and-swap.

Two ways to build the commit are measured; the ceiling is the faster:

* ``index``: a temporary index (``read-tree``, ``update-index --index-info``,
  ``write-tree``), then ``commit-tree``;
* ``mktree``: ``ls-tree`` of the trees on the changed paths and ``mktree`` of their new
  versions, then ``commit-tree`` (cost independent of the queue's size).

Fetches use protocol v0, as gitqueue's do (see GIT-NOTES on git daemon stalls).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import git


@dataclass
class Phases:
    """Seconds spent per phase, one entry per cycle."""

    fetch: list[float] = field(default_factory=list)
    build: list[float] = field(default_factory=list)
    push: list[float] = field(default_factory=list)
    cycle: list[float] = field(default_factory=list)


class RawClient:
    """A bare cache of the remote, driven by git plumbing only."""

    def __init__(self, url: str, path: Path, *, branch: str = "main") -> None:
        self.url = url
        self.path = path
        self.branch = branch
        git("init", "--bare", "-q", str(path))
        self.phases = Phases()

    def _git(self, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
        return git(*args, cwd=self.path, input=input, identity=True, env=env)

    def fetch(self) -> str:
        self._git(
            "-c", "protocol.version=0", "fetch", "-q", "--no-tags", "--no-write-fetch-head",
            "--no-auto-maintenance", self.url, f"+refs/heads/{self.branch}:refs/raw/tip",
        )  # fmt: skip
        return (self.path / "refs" / "raw" / "tip").read_text().strip()

    def _ls(self, tree: str) -> list[tuple[str, str, str, str]]:
        """(mode, type, sha, name) entries of one tree."""
        out = []
        for line in self._git("ls-tree", "-z", tree).split(b"\0"):
            if line:
                meta, name = line.decode().split("\t", 1)
                mode, kind, sha = meta.split()
                out.append((mode, kind, sha, name))
        return out

    def _mktree(self, entries: list[tuple[str, str, str, str]]) -> str:
        data = b"".join(f"{m} {k} {s}\t{n}".encode() + b"\0" for m, k, s, n in entries)
        return self._git("mktree", "-z", input=data).decode().strip()

    def pick(self, tip: str) -> tuple[str, str] | None:
        """(path, blob) of the first task file under pending/, or None."""
        pending = [e for e in self._ls(f"{tip}:pending") if e[3] != ".gitkeep"]
        for _, kind, sha, name in pending:
            if kind == "blob" and name.endswith(".yaml"):
                return f"pending/{name}", sha
            if kind == "tree":
                for _, subkind, subsha, subname in self._ls(sha):
                    if subkind == "blob" and subname.endswith(".yaml"):
                        return f"pending/{name}/{subname}", subsha
        return None

    def build(self, tip: str, how: str) -> str | None:
        picked = self.pick(tip)
        if picked is None:
            return None
        path, blob = picked
        name = path.rsplit("/", 1)[1]
        tree = self._build_index(tip, path, blob, name) if how == "index" else self._build_mktree(tip, path, blob, name)
        message = f"claim {name[:-5]} by raw\n\nNonce: {secrets.token_hex(8)}\n"
        return self._git("commit-tree", tree, "-p", tip, input=message.encode()).decode().strip()

    def _build_index(self, tip: str, path: str, blob: str, name: str) -> str:
        index = {"GIT_INDEX_FILE": str(self.path / "raw-index")}
        self._git("read-tree", tip, env=index)
        info = f"0 {'0' * 40}\t{path}\n100644 {blob}\trunning/{name}\n"
        self._git("update-index", "--index-info", input=info.encode(), env=index)
        return self._git("write-tree", env=index).decode().strip()

    def _build_mktree(self, tip: str, path: str, blob: str, name: str) -> str:
        root = self._ls(tip)
        trees = {n: s for m, k, s, n in root if k == "tree"}
        parts = path.split("/")
        pending = self._ls(trees["pending"])
        if len(parts) == 3:  # pending/<fan>/<id>.yaml
            sub = [e for e in self._ls(dict((n, s) for _, _, s, n in pending)[parts[1]]) if e[3] != name]
            pending = [e for e in pending if e[3] != parts[1]]
            if sub:
                pending.append(("040000", "tree", self._mktree(sub), parts[1]))
        else:
            pending = [e for e in pending if e[3] != name]
        running = [*self._ls(trees["running"]), ("100644", "blob", blob, name)] if "running" in trees else []
        new = {"pending": self._mktree(pending), "running": self._mktree(running)}
        entries = [(m, k, new.get(n, s), n) for m, k, s, n in root]
        return self._mktree(entries)

    def push(self, commit: str) -> None:
        self._git("push", "--porcelain", "--no-verify", "-q", self.url, f"{commit}:refs/heads/{self.branch}")

    def cycle(self, how: str) -> bool:
        """One fetch-build-push cycle, timed per phase; False when nothing is pending."""
        t0 = time.perf_counter()
        tip = self.fetch()
        t1 = time.perf_counter()
        commit = self.build(tip, how)
        if commit is None:
            return False
        t2 = time.perf_counter()
        self.push(commit)
        t3 = time.perf_counter()
        p = self.phases
        p.fetch.append(t1 - t0)
        p.build.append(t2 - t1)
        p.push.append(t3 - t2)
        p.cycle.append(t3 - t0)
        return True


def run_cycles(url: str, path: Path, *, how: str, cycles: int, budget: float) -> Phases:
    """Up to ``cycles`` raw cycles (one warm-up first), at most ``budget`` seconds."""
    client = RawClient(url, path)
    client.cycle(how)  # warm-up: the first fetch brings the whole queue
    client.phases = Phases()
    deadline = time.monotonic() + budget
    for _ in range(cycles):
        if not client.cycle(how) or time.monotonic() > deadline:
            break
    return client.phases
