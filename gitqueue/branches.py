"""Which branch holds the queue, and what to tell people when the remote's HEAD disagrees.

The queue lives on the remote's default branch (the branch its HEAD names, even before
that branch exists), so that a plain ``git clone`` shows the queue and a task a person
pushes from it lands where workers look. ``--branch`` chooses another; in a repository
that holds other work (a project's code), a branch of its own is the only choice gitqueue
accepts without being told.
"""

from __future__ import annotations

from gitqueue.config import DEFAULT_BRANCH
from gitqueue.errors import QueueNotFound
from gitqueue.git import RemoteRefs, local_git_dir

SIDE_BRANCH = "gitqueue"  # the branch the messages suggest for a queue beside other work


def init_branch(refs: RemoteRefs, chosen: str | None) -> str:
    """The branch ``init`` puts the queue on: ``chosen``, else the one the remote's HEAD names.

    A remote whose HEAD names no existing branch but which has a ``main`` (an old queue
    under a fresh ``git init --bare``'s ``master``) keeps its queue there; whether a branch
    really holds a queue is checked once it is fetched.
    """
    if chosen:
        return chosen
    if refs.head is not None and (refs.head in refs.branches or not refs.branches):
        return refs.head
    if DEFAULT_BRANCH in refs.branches or refs.head is None:
        return DEFAULT_BRANCH
    return refs.head


def not_a_queue(url: str, branch: str, refs: RemoteRefs, *, initialising: bool = False) -> QueueNotFound:
    """Why ``url``'s ``branch`` is no queue, and what to do (never: add the queue beside code)."""
    others = ", ".join(sorted(refs.branches))
    own_branch = f"`gitqueue init {url} --branch {SIDE_BRANCH}`"
    if initialising:
        return QueueNotFound(
            f"{url} is a repository that is not a gitqueue queue (its branches: {others}): gitqueue does not add "
            f"its files beside what it holds. Keep the queue on a branch of its own: {own_branch}; or name the "
            "branch the queue is on, or is to go on beside what that branch holds: --branch NAME"
        )
    if not refs.branches:
        return QueueNotFound(f"{url} is not a gitqueue queue yet: run `gitqueue init {url}`")
    if branch not in refs.branches:
        return QueueNotFound(
            f"{url} has no queue on branch {branch}, which does not exist (its branches: {others}). If the queue "
            f"is on one of them, name it (GITQUEUE_BRANCH, or `gitqueue init {url} --branch NAME` remembers it); "
            f"to start a queue in this repository, on a branch of its own: {own_branch}"
        )
    return QueueNotFound(
        f"{url} is not a gitqueue queue: its branch {branch} holds other files and no gitqueue.yaml. If the "
        f"queue is on another branch, name it (GITQUEUE_BRANCH, or `gitqueue init {url} --branch NAME` "
        f"remembers it); to start a queue in this repository, on a branch of its own: {own_branch}"
    )


def head_warning(url: str, branch: str, refs: RemoteRefs) -> str | None:
    """What people lose when the remote's HEAD names another branch than the queue's, else None."""
    head = refs.head
    if head is None or head == branch:
        return None
    if local_git_dir(url) is not None:
        fix = f"`git --git-dir {url} symbolic-ref HEAD refs/heads/{branch}`"
        if refs.head_is_unborn:
            fix = f"`gitqueue init {url}` does it"
    else:
        fix = f"on the server `git symbolic-ref HEAD refs/heads/{branch}`; on a forge, make {branch} its default branch"
    if refs.head_is_unborn:
        return (
            f"{url}: the remote's HEAD names {head}, a branch that does not exist, not the queue's branch {branch}: "
            f"`git clone` checks out nothing, and a task pushed from such a clone goes to {head}, where no worker "
            f"looks. Point HEAD at {branch} ({fix})"
        )
    return (
        f"{url}: the remote's HEAD names {head}, not the queue's branch {branch}: `git clone` checks out {head}, "
        f"and tasks pushed there are never run. Clone the queue with `git clone -b {branch} {url}`, or point HEAD "
        f"at {branch} ({fix})"
    )
