"""A person's clone of a queue, driven with plain git commands as a person types them."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path


class Clone:
    """``git clone URL PATH``; every command runs with the person's identity given by ``-c``."""

    def __init__(self, url: str, path: Path, *, name: str = "Alice Person", email: str = "alice@example.org") -> None:
        self.url = url
        self.path = path
        self.identity = ["-c", f"user.name={name}", "-c", f"user.email={email}"]
        self.run("clone", "-q", url, str(path), cwd=path.parent)

    def run(self, *args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["git", *self.identity, *args], cwd=cwd or self.path, capture_output=True, text=True, check=False
        )
        if check and proc.returncode:
            raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc

    def write(self, path: str, text: str | bytes) -> Path:
        target = self.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            target.write_bytes(text)
        else:
            target.write_text(text)
        return target

    def read(self, path: str) -> str:
        return (self.path / path).read_text()

    def commit(
        self, message: str, *, verify: bool = True, also: Callable[[], object] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``git add -A && git commit -m MESSAGE`` (the pre-commit hook runs unless ``verify`` is off);
        ``also`` stages more after ``git add -A``."""
        self.run("add", "-A")
        if also is not None:
            also()
        return self.run("commit", "-q", "-m", message, *([] if verify else ["--no-verify"]), check=False)

    def push(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``git push origin HEAD:main``: returns the outcome (a refusal is not an error here)."""
        return self.run("push", *args, "origin", "HEAD:main", check=False)

    def pull(self) -> subprocess.CompletedProcess[str]:
        return self.run("pull", "-q", "--rebase", "origin", "main", check=False)

    def head(self) -> str:
        return self.run("rev-parse", "HEAD").stdout.strip()


def remote_tip(bare: Path) -> str:
    proc = subprocess.run(["git", "rev-parse", "refs/heads/main"], cwd=bare, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def remote_file(bare: Path, path: str) -> bytes:
    proc = subprocess.run(["git", "show", f"refs/heads/main:{path}"], cwd=bare, capture_output=True, check=True)
    return proc.stdout


def remote_blobs(bare: Path) -> dict[str, str]:
    """Every file on the remote's main branch: path -> blob id (mode included for links)."""
    proc = subprocess.run(["git", "ls-tree", "-r", "-z", "refs/heads/main"], cwd=bare, capture_output=True, check=True)
    out = {}
    for record in proc.stdout.split(b"\0"):
        if record:
            meta, path = record.split(b"\t", 1)
            mode, _, sha = meta.split(b" ")
            out[path.decode("utf-8", "surrogateescape")] = f"{mode.decode()} {sha.decode()}"
    return out
