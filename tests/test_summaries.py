"""What choosing a task knows of every pending file, as a new process on the machine reads it.

A worker starting on a big queue reads each pending folder's summaries from the machine's cache
in one row per folder; what changed since that row was written is parsed again, never taken
from it. Equal summaries are one object in memory.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitqueue import Queue, index, snapshot
from gitqueue.snapshot import Entry, Snapshot
from gitqueue.task import State, fan
from tests.conftest import RemoteRepo


def _in_one_folder(name: str, count: int) -> list[str]:
    """``count`` task ids that share one fan-out folder (``pending/<fan>/``)."""
    by_folder: dict[str, list[str]] = {}
    for k in range(10_000):
        ids = by_folder.setdefault(fan(f"{name}-{k}"), [])
        ids.append(f"{name}-{k}")
        if len(ids) == count:
            return ids
    raise AssertionError("no folder")


LOW, HIGH, NEW = _in_one_folder("a", 3)  # one folder: two tasks, and one a person adds later
GPU, BROKEN = _in_one_folder("b", 2)


def _path(task_id: str) -> str:
    return f"pending/{fan(task_id)}/{task_id}.yaml"


FILES = {
    _path(LOW): "args: {n: 1}\n",
    _path(HIGH): "args: {n: 2}\npriority: 5\n",
    _path(GPU): "args: {n: 3}\npriority: 9\nrequires: {gpu: a100}\n",
    _path(BROKEN): "args: [not, a, mapping\n",
    "pending/flat.yaml": "args: {n: 4}\npriority: 1\n",
}


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the task files parsed (for a summary or a task) while the test runs."""
    seen: list[str] = []
    real = snapshot.parse_entry

    def counting(entry: Entry, raw: bytes):  # type: ignore[no-untyped-def]
        seen.append(entry.path)
        return real(entry, raw)

    monkeypatch.setattr(snapshot, "parse_entry", counting)
    yield seen


def _summaries(q: Queue) -> dict[str, index.Summary]:
    """Every pending file's summary, as choosing a task reads them (the groups claiming ranks)."""
    snap = q.snapshot()
    return {entry.path: q.cache.summaries.get(entry) for group in snap.pending_groups() for _, _, entry in group}


def _fresh(bare_remote: Path) -> Queue:
    """Another process's view of the queue: the machine's cache folder, nothing in memory."""
    return Queue.open(str(bare_remote), worker="test-box/1")


def test_a_new_process_reads_the_pending_folders_without_parsing_a_file(
    queue: Queue, bare_remote: Path, remote_repo: RemoteRepo, parsed: list[str]
) -> None:
    remote_repo.person_commit(FILES)
    first = _summaries(queue)
    assert sorted(first) == sorted(FILES) and len(parsed) == len(FILES)
    assert first[_path(GPU)].requires == (("gpu", ("a100",)),)
    assert _path(BROKEN) in (first[_path(BROKEN)].error or "")
    with sqlite3.connect(queue.store.path / "gitqueue-summaries.sqlite") as db:
        db.execute(f"DELETE FROM {index.TABLE}")  # what is left: one row per folder
    parsed.clear()
    with _fresh(bare_remote) as again:
        assert _summaries(again) == first
        assert parsed == []
        run = again.claim()  # the best task a worker without labels may take; only it is parsed
        assert run is not None and run.id == HIGH and parsed == [_path(HIGH)]


def test_a_file_changed_since_its_folder_was_stored_is_parsed_again(
    queue: Queue, bare_remote: Path, remote_repo: RemoteRepo, parsed: list[str]
) -> None:
    remote_repo.person_commit(FILES)
    _summaries(queue)
    remote_repo.person_commit({_path(LOW): "args: {n: 1}\npriority: 50\n", _path(NEW): "args: {n: 5}\n"})
    parsed.clear()
    with _fresh(bare_remote) as again:
        now = _summaries(again)
        assert sorted(parsed) == sorted([_path(LOW), _path(NEW)])  # the rest came from the rows
        assert now[_path(LOW)].priority == 50 and now[_path(HIGH)].priority == 5 and now[_path(NEW)].priority == 0
        run = again.claim()
        assert run is not None and run.id == LOW
    with sqlite3.connect(queue.store.path / "gitqueue-summaries.sqlite") as db:
        db.execute(f"DELETE FROM {index.TABLE}")
    parsed.clear()
    with _fresh(bare_remote) as third:  # the folder's row was stored again as the second process found it
        assert _summaries(third) == {p: s for p, s in now.items() if p != _path(LOW)} and parsed == []


def test_damaged_folder_rows_are_read_past(queue: Queue, bare_remote: Path, remote_repo: RemoteRepo) -> None:
    remote_repo.person_commit(FILES)
    first = _summaries(queue)
    with sqlite3.connect(queue.store.path / "gitqueue-summaries.sqlite") as db:
        damaged = f"""[[[1]], {{"{GPU}.yaml": ["x", 7]}}]"""
        db.execute(f"UPDATE {index.FOLDERS} SET data = 'not json' WHERE key = ?", (f"pending/{fan(LOW)}/\0",))
        db.execute(f"UPDATE {index.FOLDERS} SET data = ? WHERE key = ?", (damaged, f"pending/{fan(GPU)}/\0"))
        db.execute(f"UPDATE {index.TABLE} SET data = '[\"not\", \"a summary\"' WHERE key LIKE 'pending/flat%'")
    with _fresh(bare_remote) as again:
        assert _summaries(again) == first
        run = again.claim()
        assert run is not None and run.id == HIGH


def test_the_tasks_of_one_submit_share_one_summary(queue: Queue, bare_remote: Path) -> None:
    ids = queue.submit([{"args": {"n": n}} for n in range(3)] + [{"args": {"n": 3}, "priority": 2}])
    snap = queue.snapshot()
    summaries = queue.cache.summaries
    same, other = [summaries.get(snap.locate(i)) for i in ids[:3]], summaries.get(snap.locate(ids[3]))
    assert same[0] is same[1] is same[2] and other is not same[0] and other.priority == 2
    with _fresh(bare_remote) as again:
        view = Snapshot(again.store, again.cache, snap.tip)
        read = [again.cache.summaries.get(view.locate(i)) for i in ids]
        assert read[0] is read[1] is read[2] and read[0] == same[0] and read[3] == other


def _ranked(q: Queue) -> list[list[tuple[int, str, str, str]]]:
    """Every pending group as claiming ranks it: (priority, id, path, blob), best first."""
    snap = q.snapshot()
    return [[(-rank, e.id, e.path, e.blob) for rank, _, e in group] for group in snap.pending_groups()]


def test_a_worker_ranks_each_changed_folder_as_a_new_process_would(
    queue: Queue, bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """A long-running worker ranks a folder's new version from the last one it ranked; what it
    finds is what a process ranking every file afresh finds, after claims and a person's edits."""
    ids = _in_one_folder("c", 6)
    folder = {_path(i): f"args: {{n: {n}}}\npriority: {n % 3}\n" for n, i in enumerate(ids)}
    remote_repo.person_commit({**folder, "pending/flat-a.yaml": "args: {n: 9}\n"})
    steps = [
        lambda: queue.claim(),
        lambda: remote_repo.person_commit({_path(ids[0]): "args: {n: 0}\npriority: 7\n", _path(ids[3]): None}),
        lambda: remote_repo.person_commit({_path(ids[4]): "args: [broken\n", "pending/flat-b.yaml": "args: {n: 8}\n"}),
        lambda: queue.submit([{"args": {"n": 10}, "priority": 2}, {"args": {"n": 11}}]),
        lambda: queue.claim_batch(3),
    ]
    _ranked(queue)
    for step in steps:
        step()
        warm = _ranked(queue)
        with _fresh(bare_remote) as again:
            assert warm == _ranked(again)
    best = min(
        (-priority, task_id) for group in _ranked(queue) for priority, task_id, _, _ in group if task_id != ids[4]
    )
    run = queue.claim()
    assert run is not None and run.id == best[1]


def test_pending_is_counted_as_listed_and_recounted_only_where_a_claim_changed_it(
    queue: Queue, remote_repo: RemoteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker counts what is pending to pace itself: at 100,000 tasks a count that parsed
    every fan-out folder took a third of a worker's time, and pushed the folders its claims
    read out of memory. A folder is counted once per version, the same files entries() lists."""
    odd = {f"pending/{fan(LOW)}/notes.txt": "not a task\n", f"pending/{fan(GPU)}/odd.yaml/inner.yaml": "args: {}\n"}
    remote_repo.person_commit({**FILES, **odd})
    snap = queue.snapshot()
    assert snap.count(State.PENDING) == len(list(snap.entries(State.PENDING))) == len(FILES)
    run = queue.claim()
    assert run is not None and run.id == HIGH
    after = queue.snapshot()
    folders = {name: sha for name, (_, sha) in after.folder("pending").items()}
    read: list[str] = []
    real = queue.store.read
    monkeypatch.setattr(queue.store, "read", lambda sha: read.append(sha) or real(sha))
    assert after.count(State.PENDING) == len(FILES) - 1
    assert set(read) <= {folders[fan(HIGH)]}, "only the folder the claim changed is counted again"
