"""Reading git objects back as written: loose ones from their files, packed ones through git,
each checked against its id, so a damaged object is never taken for a good one."""

from __future__ import annotations

import os
import subprocess
import zlib
from pathlib import Path

import pytest

from gitqueue.commits import Commits
from gitqueue.errors import GitqueueError
from gitqueue.localrepo import LocalRepo
from gitqueue.objects import BLOB_MODE, Objects
from gitqueue.testing import make_bare_repo


def _written(path: Path) -> tuple[str, str]:
    """A blob and a tree holding it, written into the repository at ``path``; (blob, tree)."""
    writer = Objects(path)
    blob = writer.write_blob(b"args: {lr: 0.1}\n")
    tree = writer.write_tree({"a.yaml": (BLOB_MODE, blob)})
    writer._repo.close()
    return blob, tree


def test_objects_read_back_as_written_loose_or_packed(tmp_path: Path) -> None:
    repo = make_bare_repo(tmp_path / "objects.git")
    blob, tree = _written(repo)
    assert (repo / "objects" / tree[:2] / tree[2:]).is_file()
    fresh = Objects(repo)  # nothing in memory: both read from their loose files
    assert fresh.read(blob) == b"args: {lr: 0.1}\n" and fresh.tree(tree) == {"a.yaml": (BLOB_MODE, blob)}
    fresh._repo.close()
    subprocess.run(["git", "-c", "gc.auto=0", "update-ref", "refs/keep", _commit(repo, tree)], cwd=repo, check=True)
    subprocess.run(["git", "repack", "-adq"], cwd=repo, check=True)
    subprocess.run(["git", "prune-packed"], cwd=repo, check=True)
    assert not (repo / "objects" / tree[:2] / tree[2:]).exists()
    packed = Objects(repo)
    assert packed.read(blob) == b"args: {lr: 0.1}\n" and packed.tree(tree) == {"a.yaml": (BLOB_MODE, blob)}
    packed._repo.close()


def _commit(repo: Path, tree: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    out = subprocess.run(
        ["git", "commit-tree", tree, "-m", "keep"], cwd=repo, check=True, capture_output=True, text=True, env=env
    )
    return out.stdout.strip()


def test_has_answers_for_loose_packed_and_missing_objects_and_outlives_its_cat_file(tmp_path: Path) -> None:
    repo = make_bare_repo(tmp_path / "objects.git")
    blob, tree = _written(repo)
    reader = Objects(repo)
    assert reader.has(blob) and reader.has(tree) and not reader.has("0" * 40)
    subprocess.run(["git", "-c", "gc.auto=0", "update-ref", "refs/keep", _commit(repo, tree)], cwd=repo, check=True)
    subprocess.run(["git", "repack", "-adq"], cwd=repo, check=True)
    subprocess.run(["git", "prune-packed"], cwd=repo, check=True)
    assert not (repo / "objects" / blob[:2] / blob[2:]).exists()
    assert reader.has(blob) and not reader.has("1" * 40)
    header = reader._repo.git._get_persistent_cmd("cat_file_header", "cat_file", batch_check=True)
    assert header.proc is not None
    header.proc.kill()  # as a signal to the whole job would
    header.proc.wait()
    assert reader.has(blob) and reader.has(tree) and not reader.has("2" * 40)
    reader._repo.close()


@pytest.mark.parametrize("damage", ["other content", "not zlib", "empty"])
def test_a_damaged_loose_object_is_never_read_as_good(tmp_path: Path, damage: str) -> None:
    repo = make_bare_repo(tmp_path / "objects.git")
    blob, _ = _written(repo)
    path = repo / "objects" / blob[:2] / blob[2:]
    path.chmod(0o644)
    path.write_bytes(
        {"other content": zlib.compress(b"blob 16\0args: {lr: 0.9}\n"), "not zlib": b"garbage", "empty": b""}[damage]
    )
    reader = Objects(repo)
    with pytest.raises(GitqueueError, match=blob):
        reader.read(blob)
    reader._repo.close()


def test_a_tree_s_task_files_are_counted_from_the_raw_object_or_the_parsed_one(tmp_path: Path) -> None:
    """Files named *.yaml, not folders so named nor other files; counting a tree not in memory
    leaves it out of memory (a count of every folder would push out the trees claims read)."""
    repo = make_bare_repo(tmp_path / "objects.git")
    writer = Objects(repo)
    blob = writer.write_blob(b"args: {}\n")
    inner = writer.write_tree({"inner.yaml": (BLOB_MODE, blob)})
    entries = {f"t{i}.yaml": (BLOB_MODE, blob) for i in range(300)}
    entries |= {"notes.txt": (BLOB_MODE, blob), "odd.yaml": (b"40000", inner), "run.yaml": (b"100755", blob)}
    tree = writer.write_tree(entries)
    writer._repo.close()
    fresh = Objects(repo)
    assert fresh.count_files(tree) == 301
    assert tree not in fresh._trees
    assert len(fresh.tree(tree)) == 303 and fresh.count_files(tree) == 301  # now from the parsed tree
    fresh._repo.close()


def _dated_commit(repo: Path, tree: str, when: int, message: str, *parents: str) -> str:
    stamp = f"{1_700_000_000 + when} +0000"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    env |= {"GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp, "PATH": os.environ["PATH"]}
    argv = ["git", "commit-tree", tree, "-m", message, *(arg for p in parents for arg in ("-p", p))]
    return subprocess.run(argv, cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


def test_recent_lists_what_git_rev_list_lists_across_a_merge_and_a_packed_history(tmp_path: Path) -> None:
    """A worker reads the last 100 commits after each landed push, in-process now: the same
    commits in the same order as ``git rev-list --max-count``, a person's merge included."""
    repo = make_bare_repo(tmp_path / "history.git")
    _, tree = _written(repo)
    root = _dated_commit(repo, tree, 1000, "root")
    ours = theirs = root
    for n in range(6):  # two lines of history interleaved in time, then merged
        ours = _dated_commit(repo, tree, 1010 + 20 * n, f"ours {n}", ours)
        theirs = _dated_commit(repo, tree, 1020 + 20 * n, f"theirs {n}", theirs)
    tip = _dated_commit(repo, tree, 2000, "merge\n\nGitqueue-Action: claim", ours, theirs)
    tip = _dated_commit(repo, tree, 2010, "after", tip)
    subprocess.run(["git", "update-ref", "refs/heads/main", tip], cwd=repo, check=True)
    for packed in (False, True):
        if packed:
            subprocess.run(["git", "repack", "-adq"], cwd=repo, check=True)
            subprocess.run(["git", "prune-packed"], cwd=repo, check=True)
        commits = Commits(repo)
        for count in (0, 1, 5, 100):
            listed = subprocess.run(
                ["git", "rev-list", f"--max-count={count}", tip], cwd=repo, check=True, capture_output=True, text=True
            ).stdout.split()
            assert [entry.commit for entry in commits.recent(tip, count)] == listed, (packed, count)
        merge = commits.recent(tip, 2)[1]
        assert merge.parents == (ours, theirs) and merge.time == 1_700_002_000 and merge.author == "t"
        assert merge.subject == "merge" and merge.trailer("Gitqueue-Action") == "claim"
        with pytest.raises(GitqueueError, match="not in"):
            commits.recent("3" * 40, 5)
        commits._repo.close()


def test_a_local_repository_answers_whether_it_holds_an_object(tmp_path: Path) -> None:
    """LocalRepo (a hook's view, a person's clone) has no GitPython: it asks git itself."""
    repo = make_bare_repo(tmp_path / "local.git")
    blob, tree = _written(repo)
    with LocalRepo(repo) as local:
        assert local.has(blob) and local.has(tree) and not local.has("4" * 40)
