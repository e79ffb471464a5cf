"""The git rooms stay layered: each module imports only the rooms below it, so a newcomer can
read them bottom up (git, objects, commits, cache, gitstore, localrepo) and no import circles.

Read from the source with ``ast`` (no import runs), as a reviewer would read the files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gitqueue"

# Each git room and the gitqueue modules it may import.
MAY_IMPORT = {
    "git": {"errors", "urls"},
    "objects": {"errors", "git"},
    "commits": {"errors", "git", "objects"},
    "cache": {"errors", "urls", "git", "objects", "commits"},
    "gitstore": {"errors", "urls", "git", "objects", "commits", "cache"},
    "localrepo": {"errors", "git", "gitstore"},
}


def _tree(room: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{room}.py").read_text())


def _gitqueue_imports(room: str) -> set[str]:
    found = set()
    for node in ast.walk(_tree(room)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gitqueue."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("gitqueue.")}
    return found


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_git_room_imports_only_the_rooms_below_it(room: str) -> None:
    assert _gitqueue_imports(room) <= MAY_IMPORT[room], f"gitqueue/{room}.py reaches up"


@pytest.mark.parametrize("room", sorted(MAY_IMPORT))
def test_git_room_says_what_it_owns(room: str) -> None:
    docstring = ast.get_docstring(_tree(room)) or ""
    assert len(docstring.split()) >= 30, f"gitqueue/{room}.py needs a docstring saying what it owns and may call"


def test_store_keeps_every_name_its_callers_use() -> None:
    """The queue, hooks and checks use one ``store``: every part of it is reached through
    GitStore (the local repository a hook reads is one too)."""
    from gitqueue.gitstore import GitStore
    from gitqueue.localrepo import LocalRepo

    used = {"tree", "read", "read_many", "push", "fetch", "settle", "turn", "heal", "heartbeat", "leases"}
    used |= {"drop_lease", "recent_landing", "write_blob", "write_tree", "write_commit", "edit_tree"}
    used |= {"identity", "commit_info", "new_commits", "diff_trees", "walk", "history", "recent"}
    used |= {"rev_parse", "is_ancestor", "commit_time", "has", "commit_tree", "maintain", "close"}
    assert {name for name in used if not callable(getattr(GitStore, name, None))} == set()
    assert issubclass(LocalRepo, GitStore)
