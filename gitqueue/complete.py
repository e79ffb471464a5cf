"""Shell completion of task ids and states, from the local cache only.

Completion must answer at once, so it never fetches: it reads the tip the last gitqueue
command on this machine fetched (the cache's ``gitqueue-seen``) and lists the task files
in the state folders that fit the command. No cache yet, no queue configured, a damaged
cache: no suggestions, never an error in the middle of someone's typing.
"""

from __future__ import annotations

from collections.abc import Iterable

from gitqueue import config
from gitqueue.cache import cache_path, seen_tip
from gitqueue.errors import GitqueueError
from gitqueue.git import canonical_url
from gitqueue.localrepo import LocalRepo
from gitqueue.objects import TREE_MODE
from gitqueue.task import State

# The states whose tasks each command acts on (the rest would only be refused).
COMMAND_STATES: dict[str, tuple[State, ...]] = {
    "cancel": (State.PENDING, State.RUNNING),
    "requeue": (State.RUNNING, State.DONE, State.FAILED, State.CANCELLED),
    "done": (State.RUNNING,),
    "fail": (State.RUNNING,),
}
LIMIT = 5000  # suggestions at most: a shell shows no more usefully


def states(incomplete: str) -> list[str]:
    """State names for ``--state``."""
    return [state.value for state in State if state.value.startswith(incomplete)]


def task_ids(incomplete: str, *, queue: str | None = None, command: str = "") -> list[str]:
    """Ids of the cached queue's tasks that start with ``incomplete``, in the states that
    ``command`` acts on (every state for the others)."""
    try:
        ref = config.resolve_queue(queue)  # no fetch and no ls-remote: the branch .gitqueue names
        path = cache_path(canonical_url(ref.url), ref.branch or config.DEFAULT_BRANCH)
        tip = seen_tip(path)
        if tip is None:
            return []
        with LocalRepo(path) as repo:
            wanted = COMMAND_STATES.get(command, tuple(State))
            return sorted(_ids(repo, tip, wanted, incomplete))[:LIMIT]
    except (GitqueueError, OSError, ValueError):
        return []


def _ids(repo: LocalRepo, tip: str, wanted: Iterable[State], incomplete: str) -> Iterable[str]:
    top = repo.tree(repo.commit_info(tip)[0])
    for state in wanted:
        entry = top.get(state.value)
        if entry is None or entry[0] != TREE_MODE:
            continue
        for path, _mode, _sha in repo.walk(entry[1]):
            name = path.rsplit("/", 1)[-1]
            if name.endswith(".yaml") and name.startswith(incomplete):
                yield name.removesuffix(".yaml")
