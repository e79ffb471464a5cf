"""Reading a drained queue's remote with plain git: where every task ended and how often it
was claimed. The benchmark trusts nothing the workers say about themselves for this.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.env import git

STATES = ("pending", "running", "done", "failed", "cancelled")
_PIECE = re.compile(
    r"^(claim|done|fail|reap|return|release) (\S+) by .*?\(attempt (\d+)\)"
    r"(?:: (will retry|out of attempts|not started))?$"
)


@dataclass
class Check:
    """The exactly-once verdict of one drain."""

    expected: int
    done: int = 0
    where: Counter[str] = field(default_factory=Counter)
    in_two_folders: int = 0
    missing: int = 0
    claims_over_one: int = 0  # tasks claimed more often than 1 + their retries
    commits: int = 0  # commits on the branch after the seed (landed pushes)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.ok:
            return f"ok ({self.done}/{self.expected} done once)"
        return "FAILED: " + "; ".join(self.problems[:3])


def files_by_id(remote: Path, ref: str = "main") -> dict[str, list[str]]:
    """Task id -> the state folders holding a file of that id."""
    found: dict[str, list[str]] = {}
    for path in git("ls-tree", "-r", "--name-only", "-z", ref, cwd=remote).decode().split("\0"):
        if not path.endswith(".yaml") or "/" not in path:
            continue
        state = path.split("/", 1)[0]
        if state in STATES:
            found.setdefault(path.rsplit("/", 1)[1][:-5], []).append(state)
    return found


def messages_since(remote: Path, seed: str, ref: str = "main") -> list[str]:
    """Whole commit messages: a commit joining many state changes lists them in its body."""
    out = git("log", "--first-parent", "--format=%B%x00", f"{seed}..{ref}", cwd=remote).decode()
    return [s.strip("\n") for s in out.split("\0") if s.strip("\n")]


def changes(message: str) -> list[tuple[str, str]]:
    """(action, task id) of every state change one commit records.

    Read from the ``Gitqueue-Action``/``Gitqueue-Task`` trailers (one word each, in the same
    order), else from the message's lines (``claim <id> by <worker> (attempt N)``).
    """
    trailers = dict(
        line.split(": ", 1)
        for line in message.splitlines()
        if line.startswith(("Gitqueue-Action: ", "Gitqueue-Task: "))
    )
    actions, tasks = trailers.get("Gitqueue-Action", "").split(), trailers.get("Gitqueue-Task", "").split()
    if actions and len(actions) == len(tasks):
        return list(zip(actions, tasks, strict=True))
    found = []
    for piece in (p for line in message.splitlines() for p in line.split("; ")):
        match = _PIECE.match(piece)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def exactly_once(remote: Path, ids: list[str], seed: str) -> Check:
    """Every task in done/ exactly once, no id in two folders, one claim per task unless retried."""
    check = Check(expected=len(ids))
    files = files_by_id(remote)
    for task_id in ids:
        states = files.get(task_id, [])
        if not states:
            check.missing += 1
        elif len(states) > 1:
            check.in_two_folders += 1
        for state in states:
            check.where[state] += 1
    check.done = check.where["done"]
    extra = set(files) - set(ids)
    messages = messages_since(remote, seed)
    check.commits = len(messages)
    claims: Counter[str] = Counter()
    retries: Counter[str] = Counter()  # anything that hands a task back: it may be claimed again
    for message in messages:
        for action, task_id in changes(message):
            if action == "claim":
                claims[task_id] += 1
            elif action != "done":
                retries[task_id] += 1
    check.claims_over_one = sum(1 for t in ids if claims[t] > 1 + retries[t])
    unclaimed = sum(1 for t in ids if claims[t] == 0)
    if check.done != len(ids):
        check.problems.append(f"{check.done} of {len(ids)} tasks in done/ ({dict(check.where)})")
    if check.in_two_folders:
        check.problems.append(f"{check.in_two_folders} ids in two folders")
    if check.missing:
        check.problems.append(f"{check.missing} tasks missing")
    if extra:
        check.problems.append(f"{len(extra)} unexpected task files")
    if check.claims_over_one:
        check.problems.append(f"{check.claims_over_one} tasks claimed more than once without a retry")
    if unclaimed:
        check.problems.append(f"{unclaimed} tasks never claimed in the history")
    return check
