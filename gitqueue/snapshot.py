"""A read-only view of the queue at one commit: which task files sit in which folder.

Tree and task reads are cached by object id (git objects never change), so re-reading the
queue after a fetch only parses what changed.
"""

from __future__ import annotations

from bisect import insort
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial

from gitqueue import deps
from gitqueue.config import SETTINGS_FILE, Settings
from gitqueue.errors import GitqueueError, InvalidTask, TaskNotFound
from gitqueue.gitstore import GitStore
from gitqueue.index import Candidate, CandidateOrder, Summary, SummaryStore
from gitqueue.objects import BLOB_MODE, LINK_MODE, TREE_MODE
from gitqueue.task import State, Task, check_id, fan, id_order, parse_task

# A state folder holds at most this many task files directly; more go to fan-out subfolders
# (forges list at most 1,000 entries, and every commit rewrites the trees on its path).
FLAT_LIMIT = 1000
PREFETCH = 2000  # tasks parsed after one bulk read when listing
ENTRY_CACHE = 150_000  # pending entries kept, shared by claiming and the worker's checks
COUNT_CACHE = 10_000  # fan-out folders whose task files were counted, kept by tree id


def _group_key(prefix: str, tree: str) -> str:
    """How a pending folder at one tree is named among the ranked groups (``pending/ab:<tree>``)."""
    return f"{prefix.rstrip('/')}:{tree}"


def _rank_key(candidate: Candidate) -> tuple[int, str]:
    return candidate[0], candidate[1]


@dataclass(frozen=True, slots=True)
class Entry:
    """A task file at one commit: its path and blob id, not yet parsed."""

    path: str
    blob: str
    state: State
    id: str
    mode: bytes = BLOB_MODE


# Regular and executable files; a symbolic link or a submodule is never read as a task.
FILE_MODES = frozenset({BLOB_MODE, b"100755"})


def not_a_file(mode: bytes) -> str:
    """Why an entry of git ``mode`` in a state folder is not a task file."""
    if mode == LINK_MODE:
        return "a symbolic link, not a task file: gitqueue never follows links (write the task's YAML in the file)"
    if mode == b"160000":
        return "a submodule, not a task file"
    return f"not a regular file (git mode {mode.decode()})"


def parse_entry(entry: Entry, raw: bytes) -> Task:
    """The task in file ``entry`` whose bytes are ``raw``; InvalidTask if it is none."""
    if entry.mode not in FILE_MODES:
        raise InvalidTask(entry.path, not_a_file(entry.mode))
    return parse_task(raw, path=entry.path)


@dataclass(frozen=True)
class Problem:
    """A file in a state folder that is not a valid task."""

    path: str
    message: str


class TaskCache:
    """Parsed tasks keyed by (path, blob): shared by every snapshot of one queue."""

    def __init__(self, store: GitStore, limit: int = 4_000) -> None:
        self.store = store
        self.limit = limit
        self._tasks: dict[tuple[str, str], Task | InvalidTask] = {}
        self._settings: dict[str, Settings] = {}
        self.summaries = SummaryStore(
            store.path / "gitqueue-summaries.sqlite", read_blobs=store.read_many, parse=self._parse
        )
        self.order = CandidateOrder()
        self._entries: OrderedDict[tuple[str, str], list[Entry]] = OrderedDict()
        self._entry_count = 0
        self._counts: dict[str, int] = {}  # fan-out folder's tree id -> its task files

    def count(self, tree: str, make: Callable[[], int]) -> int:
        """The task files of one fan-out folder at ``tree``, counted once (bounded by count)."""
        found = self._counts.get(tree)
        if found is None:
            if len(self._counts) >= COUNT_CACHE:
                self._counts.clear()
            found = self._counts[tree] = make()
        return found

    def entries(self, key: tuple[str, str], make: Callable[[], list[Entry]]) -> list[Entry]:
        """Entries of one tree, made once and kept while recently used (bounded by count)."""
        found = self._entries.get(key)
        if found is None:
            found = self._entries[key] = make()
            self._entry_count += len(found)
            while self._entry_count > ENTRY_CACHE and len(self._entries) > 1:
                _, dropped = self._entries.popitem(last=False)
                self._entry_count -= len(dropped)
        else:
            self._entries.move_to_end(key)
        return found

    def close(self) -> None:
        self.summaries.close()

    @staticmethod
    def _parse(entry: Entry, raw: bytes) -> Task:
        return parse_entry(entry, raw)

    def prefetch(self, entries: list[Entry]) -> None:
        """Parse many tasks after one bulk read, instead of one object read each."""
        missing = [e for e in entries if (e.path, e.blob) not in self._tasks]
        if len(missing) < 64:
            return
        if len(self._tasks) + len(missing) > self.limit:
            self._tasks.clear()
        raw = self.store.read_many(list({e.blob for e in missing}))
        for entry in missing:
            try:
                self._tasks[(entry.path, entry.blob)] = self._parse(entry, raw[entry.blob])
            except InvalidTask as exc:
                self._tasks[(entry.path, entry.blob)] = exc

    def task(self, entry: Entry) -> Task:
        key = (entry.path, entry.blob)
        found = self._tasks.get(key)
        if found is None:
            try:
                # a symlink's or submodule's id is no blob to read: _parse refuses it by its mode
                found = self._parse(entry, self.store.read(entry.blob) if entry.mode in FILE_MODES else b"")
            except InvalidTask as exc:
                found = exc
            if len(self._tasks) >= self.limit:
                self._tasks.clear()
            self._tasks[key] = found
        if isinstance(found, InvalidTask):
            raise found
        return found

    def settings(self, blob: str | None) -> Settings:
        if blob is None:
            return Settings()
        if blob not in self._settings:
            self._settings[blob] = Settings.parse(self.store.read(blob))
        return self._settings[blob]


class Snapshot:
    """The queue as of commit ``tip`` (None for a branch that does not exist yet)."""

    def __init__(self, store: GitStore, cache: TaskCache, tip: str | None) -> None:
        self.store = store
        self.cache = cache
        self.tip = tip
        self.root = store.commit_tree(tip) if tip else None

    @property
    def initialised(self) -> bool:
        return self.root is not None and SETTINGS_FILE in self.store.tree(self.root)

    @property
    def settings(self) -> Settings:
        root = self.store.tree(self.root) if self.root else {}
        entry = root.get(SETTINGS_FILE)
        return self.cache.settings(entry[1] if entry else None)

    def folder(self, name: str) -> dict[str, tuple[bytes, str]]:
        if self.root is None:
            return {}
        entry = self.store.tree(self.root).get(name)
        return self.store.tree(entry[1]) if entry and entry[0] == TREE_MODE else {}

    def entries(self, state: State) -> Iterator[Entry]:
        """Every ``*.yaml`` file in a state folder, flat or fanned out; ids not yet checked."""
        for name, (mode, sha) in self.folder(state.value).items():
            if mode == TREE_MODE:
                for sub, (submode, blob) in self.store.tree(sha).items():
                    if submode != TREE_MODE and sub.endswith(".yaml"):
                        yield Entry(f"{state.value}/{name}/{sub}", blob, state, sub[:-5], submode)
            elif name.endswith(".yaml"):
                yield Entry(f"{state.value}/{name}", sha, state, name[:-5], mode)

    def count(self, state: State) -> int:
        """How many task files a state folder holds, as :meth:`entries` lists them: a
        fan-out folder is counted once per version (by tree id), so a count after a claim
        reads only the folders the claim changed, however big the queue."""
        total = 0
        for name, (mode, sha) in self.folder(state.value).items():
            if mode == TREE_MODE:
                total += self.cache.count(sha, partial(self.store.count_files, sha))
            elif name.endswith(".yaml"):
                total += 1
        return total

    def pending_groups(self) -> Iterator[list[Candidate]]:
        """Pending tasks in groups that change independently (the flat files, each fan-out
        folder), each sorted best first and remembered by its tree id."""
        for _key, group in self._keyed_pending_groups():
            yield group

    def ready_groups(self, states: deps.States) -> Iterator[list[Candidate]]:
        """:meth:`pending_groups` without the tasks whose ``after`` is not all done.

        Each group's filtered list is remembered by its tree id and the states of the ids its
        tasks wait on, so a claim that passes over many waiting tasks filters them once, not
        at every claim: it only looks up the few ids they wait on."""
        for key, group in self._keyed_pending_groups():
            waits_on = self.cache.order.waits_on(key, partial(self._waits_on, group))
            if not waits_on:
                yield group
                continue
            done = tuple(states(dep) is State.DONE for dep in waits_on)
            yield self.cache.order.ready(key, done, partial(self._ready, group, states))

    def _waits_on(self, group: list[Candidate]) -> tuple[str, ...]:
        summaries = self.cache.summaries
        return tuple(sorted({dep for _, _, entry in group for dep in summaries.get(entry).after}))

    def _ready(self, group: list[Candidate], states: deps.States) -> list[Candidate]:
        summaries = self.cache.summaries
        return [c for c in group if states.ready(summaries.get(c[2]).after)]

    def _keyed_pending_groups(self) -> Iterator[tuple[str, list[Candidate]]]:
        root = self.store.tree(self.root) if self.root else {}
        pending = root.get(State.PENDING.value)
        if pending is None or pending[0] != TREE_MODE:
            return
        folder = self.store.tree(pending[1])
        groups = [(f"pending/{name}/", sha) for name, (mode, sha) in folder.items() if mode == TREE_MODE]
        if any(mode != TREE_MODE for mode, _ in folder.values()):
            groups.insert(0, ("pending/", pending[1]))
        order = self.cache.order
        fresh = {prefix: tree for prefix, tree in groups if not order.has(_group_key(prefix, tree))}
        derived = {prefix: self._derive(prefix, tree) for prefix, tree in fresh.items()}
        unread = {p: self.pending_entries(p, t) for p, t in fresh.items() if derived[p] is None}
        self.cache.summaries.load_folders(unread)  # one bulk read, not one per group
        for prefix, tree in groups:
            key = _group_key(prefix, tree)
            made = derived.get(prefix)
            group = order.sorted(key, partial(self._rank, prefix, tree) if made is None else partial(list, made))
            if prefix in fresh:
                order.note(prefix, group)
            yield key, group

    def _derive(self, prefix: str, tree: str) -> list[Candidate] | None:
        """The ranked candidates of folder ``prefix`` at ``tree``, from its last version ranked
        (None if there is none): what a claim or a finish changed is a few files of hundreds, so
        only those are looked at (the same list as :meth:`_rank` makes, without re-ranking all)."""
        last = self.cache.order.latest(prefix)
        if last is None:
            return None
        files = {n: v for n, v in self.store.tree(tree).items() if v[0] != TREE_MODE and n.endswith(".yaml")}
        start = len(prefix)
        kept = [c for c in last if files.get(c[2].path[start:]) == (c[2].mode, c[2].blob)]
        if len(kept) < len(files):
            known = {c[2].path[start:] for c in kept}
            added = [
                Entry(prefix + name, sha, State.PENDING, name[:-5], mode)
                for name, (mode, sha) in files.items()
                if name not in known
            ]
            self.cache.summaries.load(added)
            for entry in added:
                insort(kept, (-self.cache.summaries.get(entry).priority, id_order(entry.id), entry), key=_rank_key)
        self.cache.entries((prefix, tree), lambda: [c[2] for c in kept])  # what the worker's checks read
        return kept

    def pending_entries(self, prefix: str, tree: str) -> list[Entry]:
        """The task files directly in pending tree ``tree`` found at ``prefix``: made once per
        tree id and shared by claiming and the worker's checks (one Entry per task in memory)."""
        return self.cache.entries(
            (prefix, tree),
            lambda: [
                Entry(prefix + name, sha, State.PENDING, name[:-5], mode)
                for name, (mode, sha) in self.store.tree(tree).items()
                if mode != TREE_MODE and name.endswith(".yaml")
            ],
        )

    def _rank(self, prefix: str, tree: str) -> list[Candidate]:
        entries = self.pending_entries(prefix, tree)
        self.cache.summaries.load(entries)
        return [(-self.cache.summaries.get(e).priority, id_order(e.id), e) for e in entries]

    def summaries(self, state: State | None = None) -> Iterator[tuple[Entry, Summary]]:
        """Every entry (in ``state``, or all) with its summary: what counting needs."""
        entries = list(self.entries(state) if state else self.all_entries())
        folders: dict[str, list[Entry]] = {}
        for entry in entries:
            folders.setdefault(entry.path[: entry.path.rindex("/") + 1], []).append(entry)
        self.cache.summaries.load_folders(folders)  # a folder's row at a time, from the machine's cache
        for entry in entries:
            yield entry, self.cache.summaries.get(entry)

    def workers(self) -> int:
        """How many workers hold runs in this view (at least 1, for dividing by)."""
        return max(1, len({summary.worker for _, summary in self.summaries(State.RUNNING)}))

    def all_entries(self) -> Iterator[Entry]:
        for state in State:
            yield from self.entries(state)

    def flat_count(self, state: State) -> int:
        return sum(1 for mode, _ in self.folder(state.value).values() if mode != TREE_MODE)

    def path_for(self, state: State, task_id: str) -> str:
        """Where a task moving into ``state`` is written: flat while the folder has room."""
        if self.flat_count(state) < FLAT_LIMIT:
            return f"{state.value}/{task_id}.yaml"
        return f"{state.value}/{fan(task_id)}/{task_id}.yaml"

    def locate(self, task_id: str) -> Entry | None:
        """The file of ``task_id`` in whichever state folder holds it, looked up directly."""
        check_id(task_id)
        name = f"{task_id}.yaml"
        sub = fan(task_id)
        for state in State:
            folder = self.folder(state.value)
            entry = folder.get(name)
            if entry and entry[0] != TREE_MODE:
                return Entry(f"{state.value}/{name}", entry[1], state, task_id, entry[0])
            subdir = folder.get(sub)
            if subdir and subdir[0] == TREE_MODE:
                entry = self.store.tree(subdir[1]).get(name)
                if entry and entry[0] != TREE_MODE:
                    return Entry(f"{state.value}/{sub}/{name}", entry[1], state, task_id, entry[0])
        return None

    def state_of(self, task_id: str) -> State | None:
        """The state of ``task_id`` (None if no task has that id)."""
        try:
            entry = self.locate(task_id)
        except GitqueueError:
            return None
        return None if entry is None else entry.state

    def states(self, done: Iterable[str] = ()) -> deps.States:
        """Task states looked up once each, for judging ``after``; ``done`` counts as done
        already (tasks this very commit finishes)."""
        return deps.States(self.state_of, done)

    def get(self, task_id: str) -> Task:
        """The task ``task_id``, or a unique task whose id starts with it."""
        entry = self.locate(task_id)
        if entry is None:
            matches = [e for e in self.all_entries() if e.id.startswith(task_id)]
            if len(matches) != 1:
                hint = (
                    ""
                    if not matches
                    else f" (it starts {len(matches)} ids: {', '.join(sorted(e.id for e in matches)[:5])})"
                )
                raise TaskNotFound(f"no task {task_id!r} in the queue{hint}")
            entry = matches[0]
        return self.cache.task(entry)

    def tasks(self, state: State | None = None, problems: list[Problem] | None = None) -> Iterator[Task]:
        """Valid tasks (in ``state``, or all); invalid files go to ``problems`` if given."""
        entries = list(self.entries(state) if state else self.all_entries())
        for index, entry in enumerate(entries):
            if index % PREFETCH == 0:
                self.cache.prefetch(entries[index : index + PREFETCH])
            try:
                yield self.cache.task(entry)
            except GitqueueError as exc:
                if problems is not None:
                    problems.append(Problem(entry.path, str(exc)))
