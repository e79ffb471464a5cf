"""A task's life, read from the queue branch's history: ``gitqueue log ID``.

Every state change is one commit, so a task's history is the list of commits that touched
its file, wherever the file was: submit, each claim, each finish or failure, requeues,
cancels and the edits people made by hand (which carry no gitqueue trailers, only their
author). The file is followed across state folders and fan-out subfolders.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

from gitqueue.commits import LogEntry
from gitqueue.edits import describe
from gitqueue.errors import GitqueueError
from gitqueue.gitstore import GitStore
from gitqueue.objects import TreeChange
from gitqueue.snapshot import FILE_MODES
from gitqueue.task import MARKER, State, fan, parse_task, split_task_path
from gitqueue.validate import TRANSITIONS

# How `log` says the outcomes a commit's Gitqueue-Action trailer names.
_VERBS = {"failed": "fail", "reaped": "reap", "interrupted": "return"}


@dataclass(frozen=True)
class Event:
    """One commit in a task's life."""

    commit: str
    time: float
    author: str
    email: str
    action: str  # submit, add, claim, done, fail, reap, return, requeue, cancel, edit, delete, move
    before: str | None  # the state before the commit (None: the task did not exist)
    after: str | None  # the state after it (None: the file was deleted)
    path: str  # the file after the commit (before it, for a deletion)
    by_hand: bool  # made with plain git, not a gitqueue command
    detail: str
    subject: str

    @property
    def when(self) -> str:
        return dt.datetime.fromtimestamp(self.time).astimezone().isoformat(timespec="seconds")

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "when": self.when}


def paths_of(task_id: str) -> list[str]:
    """Every path the task's file can have: each state folder, flat or fanned out."""
    return [f"{state.value}/{sub}{task_id}.yaml" for state in State for sub in ("", f"{fan(task_id)}/")]


def task_history(store: GitStore, tip: str, task_id: str) -> list[Event]:
    """The events of ``task_id`` up to commit ``tip``, oldest first."""
    paths = paths_of(task_id)
    wanted = set(paths)
    events = []
    for entry in store.history(tip, paths):
        changes = [c for c in entry.changes if c.path in wanted]
        if changes:
            events.append(_event(store, entry, task_id, changes))
    return events


def _state(path: str) -> State:
    return split_task_path(path)[0]


def _event(store: GitStore, entry: LogEntry, task_id: str, changes: list[TreeChange]) -> Event:
    gone = [c for c in changes if c.new is None]
    came = [c for c in changes if c.old is None]
    kept = [c for c in changes if c.old is not None and c.new is not None]
    before = _state((gone or kept)[0].path) if gone or kept else None
    after = _state((came or kept)[0].path) if came or kept else None
    path = (came or kept or gone)[0].path
    said = _action_said(entry, task_id)
    if said:
        action = said
    elif before is not None and before == after:
        action = "edit"
    else:
        move = TRANSITIONS.get((before, after))
        action = move.verb if move else "move"  # "move": by hand, and no command makes it
    detail = ""
    if kept and before == after:
        detail = _edit_detail(store, kept[0])
    elif before != after:
        detail = f"{before.value if before else 'new'} -> {after.value if after else 'deleted'}"
    return Event(
        commit=entry.commit,
        time=entry.time,
        author=entry.author,
        email=entry.email,
        action=action,
        before=before.value if before else None,
        after=after.value if after else None,
        path=path,
        by_hand=entry.trailer("Gitqueue-Action") is None,
        detail=detail,
        subject=entry.subject,
    )


def _action_said(entry: LogEntry, task_id: str) -> str | None:
    """The action a gitqueue commit names for this task (a commit may act on several)."""
    actions = (entry.trailer("Gitqueue-Action") or "").split()
    tasks = (entry.trailer("Gitqueue-Task") or "").split()
    if not actions:
        return None
    if len(actions) == len(tasks) and task_id in tasks:
        action = actions[tasks.index(task_id)]
    elif len(actions) == 1:
        action = actions[0]
    else:
        return None
    return _VERBS.get(action, action)


def _edit_detail(store: GitStore, change: TreeChange) -> str:
    assert change.old is not None and change.new is not None
    if change.old[0] not in FILE_MODES or change.new[0] not in FILE_MODES:
        return ""
    try:
        old = parse_task(store.read(change.old[1]), path=change.path)
        new = parse_task(store.read(change.new[1]), path=change.path)
    except GitqueueError as exc:
        return f"(the file was invalid: {exc})"
    if old.text.partition(MARKER)[0] == new.text.partition(MARKER)[0]:
        return ""  # only gitqueue's record changed
    return describe(old, new)


@dataclass(frozen=True)
class Commit:
    """One commit of the queue branch, as a person reads it on a forge."""

    commit: str
    time: float
    author: str
    subject: str
    actions: tuple[str, ...]  # what gitqueue did in it (Gitqueue-Action), empty for a person's own commit

    @property
    def by_hand(self) -> bool:
        return not self.actions


def recent_commits(store: GitStore, tip: str, limit: int) -> list[Commit]:
    """The last ``limit`` commits of the queue branch up to ``tip``, newest first."""
    return [
        Commit(
            commit=entry.commit,
            time=entry.time,
            author=entry.author,
            subject=entry.subject,
            actions=tuple((entry.trailer("Gitqueue-Action") or "").split()),
        )
        for entry in store.recent(tip, limit)
    ]


def ended_runs(commits: list[Commit]) -> list[float]:
    """When runs ended (done, failed or reaped), one time per run, as the commits record it."""
    return [c.time for c in commits for action in c.actions if action in ("done", "failed", "reaped")]


__all__ = ["Commit", "Event", "ended_runs", "paths_of", "recent_commits", "task_history"]
