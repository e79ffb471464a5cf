"""What a valid queue is: one set of rules for ``gitqueue validate``, the git hooks and workers.

Two kinds of rules live here:

* **Files.** Every file in a state folder is a task file that parses (``task.parse_task``,
  the same code a worker reads tasks with), a task id sits in exactly one folder, and a
  YAML file that looks like a task does not sit outside the state folders, where nothing
  would ever run it.
* **Dependencies.** Every id a task's ``after`` names is a task of the queue, and no chain
  of ``after`` comes back to where it started (see :mod:`gitqueue.deps`).
* **Changes.** A commit may only make the state changes that some gitqueue command makes
  (:data:`TRANSITIONS`), and a change that moves a task keeps the lines its person wrote.

Nothing here deletes, moves or rewrites a file: problems are reported, never "fixed".
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from gitqueue import deps
from gitqueue.config import SETTINGS_FILE, Settings
from gitqueue.errors import GitqueueError, InvalidTask
from gitqueue.gitstore import GitStore
from gitqueue.objects import LINK_MODE, TREE_MODE
from gitqueue.snapshot import FILE_MODES, Entry, Problem, Snapshot, not_a_file
from gitqueue.task import MARKER, State, Task, fan, load_yaml, parse_task, split_task_path

if TYPE_CHECKING:  # the hooks and `gitqueue validate --staged` open the repository: workers need not load it
    from gitqueue.localrepo import LocalRepo

STATES = frozenset(state.value for state in State)


class Transition(NamedTuple):
    verb: str  # what `gitqueue log` calls the move when a commit of gitqueue's does not say
    by: str  # who makes it, for the message about a move that no command makes


# Every state change the queue allows. ``None`` is "no file": a task that is new, or one that
# was deleted. Moving within one state (an edit, or into a fan-out subfolder) is always
# allowed; the file rules still apply.
TRANSITIONS: dict[tuple[State | None, State | None], Transition] = {
    (None, State.PENDING): Transition("add", "submit, or a person adding a file"),
    (State.PENDING, State.RUNNING): Transition("claim", "claim"),
    (State.RUNNING, State.DONE): Transition("done", "done"),
    (State.RUNNING, State.PENDING): Transition("return", "fail, reap or requeue"),
    (State.RUNNING, State.FAILED): Transition("fail", "fail or reap (out of attempts)"),
    (State.DONE, State.PENDING): Transition("requeue", "requeue"),
    (State.FAILED, State.PENDING): Transition("requeue", "requeue"),
    (State.CANCELLED, State.PENDING): Transition("requeue", "requeue"),
    (State.PENDING, State.CANCELLED): Transition("cancel", "cancel"),
    (State.RUNNING, State.CANCELLED): Transition("cancel", "cancel"),
    (State.PENDING, None): Transition("delete", "a person (withdrawing the task)"),
}

# Fields that may not change while a task is in a state, and why.
FROZEN_FIELDS: dict[State, tuple[tuple[str, ...], str]] = {
    State.RUNNING: (("args", "cmd"), "a run is using them; cancel or requeue the task first"),
    State.DONE: (("args", "cmd"), "its result came from them; requeue the task to run it again"),
}


def transition_problem(before: State | None, after: State | None) -> str | None:
    """Why no gitqueue command moves a task from ``before`` to ``after`` (None if one does)."""
    if before == after or (before, after) in TRANSITIONS:
        return None
    if before is None:
        return f"a new task must start in pending/, not {after.value if after else '?'}/ (submit adds it there)"
    if after is None:
        return f"only pending tasks may be deleted; a {before.value} task stays (cancel or requeue it instead)"
    ways = "; ".join(
        f"{to.value}/ by {move.by}" if to else f"deleted by {move.by}"
        for (frm, to), move in TRANSITIONS.items()
        if frm is before
    )
    return f"no gitqueue command moves a task from {before.value}/ to {after.value}/ (from {before.value}/: {ways})"


def args_problem(task: Task) -> str | None:
    """A finished task whose last attempt ran with other args than its file says (a person's
    edit carried onto ``running/`` by a rebase while it ran): a result beside the wrong args.

    Not a reason to refuse a push (gitqueue's own report of such a run must land), so only
    the checks of a whole queue say it, never the hooks."""
    ran = task.ran_with
    if ran is None or task.state not in (State.DONE, State.FAILED):
        return None
    what = "its result came" if task.state is State.DONE else "its last attempt's error came"
    return (
        f"{task.path}: {what} from other args than the file's (it ran with {_compact(ran)}); "
        "requeue it to run the file's args"
    )


def _compact(args: dict[str, object]) -> str:
    return " ".join(f"{k}={v}" for k, v in args.items())[:200]


def settings_problems(raw: bytes) -> list[Problem]:
    """What is wrong with a ``gitqueue.yaml``: raises for a file no command can read; a bad
    setting the queue works without (``push_budget``) comes back as a problem."""
    found = Settings.parse(raw).problem
    return [_problem(SETTINGS_FILE, found)] if found else []


def person_part(text: str) -> str:
    """The lines a person wrote: everything above gitqueue's marker."""
    return text.partition(MARKER)[0]


def gitqueue_part(text: str) -> str:
    return text.partition(MARKER)[2]


def frozen_field_problem(before: Task, after: Task) -> str | None:
    """Why an in-place change of ``before`` into ``after`` would corrupt the task's run or result."""
    fields, why = FROZEN_FIELDS.get(before.state, ((), ""))
    changed = [name for name in fields if getattr(before, name) != getattr(after, name)]
    if changed:
        return f"{' and '.join(changed)} of a {before.state.value} task cannot change: {why}"
    if before.state is State.RUNNING and before.token != after.token:
        return "the run token of a running task cannot change: only a claim sets it"
    return None


def edit_problem(before: Task, after: Task) -> str | None:
    """Why a person's edit of ``before`` into ``after`` is refused (by ``edit`` and ``set``)."""
    if gitqueue_part(before.text) != gitqueue_part(after.text):
        return f"the lines below the marker are gitqueue's record; change only the lines above it ({MARKER!r})"
    return frozen_field_problem(before, after)


# ---------------------------------------------------------------- where a path sits


@dataclass(frozen=True)
class Place:
    """What a path is in a queue: ``settings``, ``task``, ``outside`` (a YAML file outside the
    state folders, checked for looking like a task), ``stray`` (with ``problem``) or ``other``."""

    kind: str
    problem: str = ""


def place(path: str) -> Place:
    parts = path.split("/")
    name = parts[-1]
    if path == SETTINGS_FILE:
        return Place("settings")
    if parts[0] not in STATES:
        return Place("outside") if name.endswith((".yaml", ".yml")) else Place("other")
    if len(parts) == 1:
        return Place("stray", f"a file where the {name}/ folder belongs")
    if name.startswith(".") and not name.endswith(".yaml"):
        return Place("other")  # .gitkeep and friends
    if name.endswith(".yaml") and len(parts) <= 3:
        return Place("task")
    if name.endswith(".yaml"):
        return Place("stray", f"nested too deep: tasks are {parts[0]}/<id>.yaml or {parts[0]}/<xx>/<id>.yaml")
    if name.endswith(".yml"):
        return Place("stray", f"task files end in .yaml: rename it to {path[:-4]}.yaml")
    return Place("stray", f"not a task file (tasks are {parts[0]}/<id>.yaml); gitqueue ignores it")


def looks_like_task(raw: bytes) -> bool:
    """A YAML mapping with ``args``: a task someone meant to queue."""
    try:
        data = load_yaml(raw, path="")
    except InvalidTask:
        return False
    return isinstance(data, dict) and "args" in data


def outside_problem(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (
        f"{display(path)}: looks like a task but is outside the state folders, so nothing runs it: "
        f"move it to pending/{stem}.yaml"
    )


def read_task(path: str, mode: bytes, raw: bytes | Callable[[], bytes]) -> Task:
    """One task file, read exactly as a worker reads it (see ``snapshot.TaskCache``); ``raw``
    may be a function that reads it, called only for a regular file."""
    if mode not in FILE_MODES:
        raise InvalidTask(path, not_a_file(mode))
    return parse_task(raw() if callable(raw) else raw, path=path)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display(path: str) -> str:
    """A path (or a message naming one) fit to print on one line: bytes that are not UTF-8
    shown as ``\\xNN``, and control characters (a newline in a file name, a terminal escape)
    as Python writes them (``\\n``, ``\\x1b``)."""
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda found: repr(found.group())[1:-1], text)


def _problem(path: str, message: str) -> Problem:
    return Problem(path, display(message))


def _task_id(path: str) -> tuple[State, str] | None:
    try:
        return split_task_path(path)
    except InvalidTask:
        return None


# ---------------------------------------------------------------- whole trees and folders

# A file to check: its path in the queue, its git mode and how to read its bytes.
File = tuple[str, bytes, Callable[[], bytes]]


def check_files(files: Iterable[File], *, whole: bool = True) -> list[Problem]:
    """Problems of a set of files. ``whole`` says they are the entire queue, so that a
    missing ``gitqueue.yaml`` counts; duplicates are looked for among ``files`` either way."""
    problems: list[Problem] = []
    homes: dict[str, list[str]] = {}
    waits: dict[str, tuple[str, list[str]]] = {}  # task id -> (its path, its after)
    settings = False
    for path, mode, load in files:
        where = place(path)
        try:
            if where.kind == "settings":
                settings = True
                problems += settings_problems(load())
            elif where.kind == "task":
                if (found := _task_id(path)) is not None:
                    homes.setdefault(found[1], []).append(path)
                task = read_task(path, mode, load)
                drift = args_problem(task)
                if drift is not None:
                    problems.append(_problem(path, drift))
                if task.after:
                    waits[task.id] = (path, task.after)
            elif where.kind == "stray":
                problems.append(_problem(path, f"{path}: {where.problem}"))
            elif where.kind == "outside" and mode in FILE_MODES and looks_like_task(load()):
                problems.append(_problem(path, outside_problem(path)))
        except GitqueueError as exc:
            problems.append(_problem(path, str(exc)))
        except OSError as exc:
            problems.append(_problem(path, f"{path}: cannot read it ({exc.strerror})"))
    for task_id, paths in homes.items():
        for path in paths if len(paths) > 1 else ():
            others = ", ".join(p for p in paths if p != path)
            problems.append(_problem(path, f"{path}: task {task_id!r} is also in {others}: a task lives in one folder"))
    if whole and not settings:
        problems.append(Problem(SETTINGS_FILE, f"{SETTINGS_FILE}: missing, so this is not a gitqueue queue"))
    if whole:
        problems += after_problems(waits, lambda task_id: task_id in homes)
    return sorted(problems, key=lambda p: (p.path, p.message))


def after_problems(
    waits: dict[str, tuple[str, list[str]]], exists: Callable[[str], bool], graph: dict[str, list[str]] | None = None
) -> list[Problem]:
    """Ids in the ``after`` of ``waits`` (task id -> its path and its after) that name no task,
    and the cycles through them in ``graph`` (every task's after that the chains reach;
    ``waits`` itself if not given). A cycle is told once, at the first of ``waits`` on it."""
    graph = graph if graph is not None else {task_id: after for task_id, (_, after) in waits.items()}
    problems = [
        _problem(waits[task_id][0], f"{waits[task_id][0]}: field 'after' names {dep!r}, which is no task of the queue")
        for task_id, dep in deps.unknown_ids({t: after for t, (_, after) in waits.items()}, exists)
    ]
    for cycle in deps.cycles(graph):
        mine = next((t for t in cycle if t in waits), None)
        if mine is not None:
            at, path = cycle.index(mine), waits[mine][0]
            problems.append(_problem(path, f"{path}: {deps.cycle_text([*cycle[at:-1], *cycle[:at], mine])}"))
    return problems


def check_tree(store: GitStore, root: str | None, *, progress: Callable[[int], None] | None = None) -> list[Problem]:
    """Every file of a queue at one commit's tree (``progress`` hears how many, now and then)."""
    files = ((path, mode, _reader(store, sha)) for path, mode, sha in store.walk(root))
    return check_files(_counted(files, progress))


def _counted(files: Iterable[File], progress: Callable[[int], None] | None) -> Iterable[File]:
    """``files``, telling ``progress`` every 500 how many went by."""
    if progress is None:
        return files

    def counting() -> Iterator[File]:
        for n, file in enumerate(files, 1):
            if n % 500 == 0:
                progress(n)
            yield file

    return counting()


def _reader(store: GitStore, sha: str) -> Callable[[], bytes]:
    return lambda: store.read(sha)


def check_disk(
    top: Path | None, paths: Iterable[Path] | None = None, *, progress: Callable[[int], None] | None = None
) -> list[Problem]:
    """Files on disk in a clone whose top folder is ``top``: all of them, or ``paths`` (files
    or folders). With no ``top`` (no clone), each file is checked as a pending task.
    Symbolic links are reported, never followed."""
    chosen = list(paths) if paths is not None else None
    if top is None and chosen is None:
        raise GitqueueError("name the files to check, or run this in a clone of the queue")
    return check_files(_counted(_disk_files(top, chosen), progress), whole=chosen is None)


def _disk_files(top: Path | None, chosen: list[Path] | None) -> Iterator[File]:
    for start in chosen if chosen is not None else [top or Path.cwd()]:
        if start.is_dir() and not start.is_symlink():
            for folder, dirs, names in os.walk(start):
                dirs[:] = sorted(d for d in dirs if d != ".git" and not (Path(folder) / d).is_symlink())
                links = [d for d in os.listdir(folder) if (Path(folder) / d).is_symlink() and d not in names]
                for name in sorted([*names, *links]):
                    yield _disk_file(top, Path(folder) / name)
        else:
            yield _disk_file(top, start)


def _disk_file(top: Path | None, file: Path) -> File:
    """A file on disk named by its path in the queue. One outside the clone (a draft) is
    checked as if it were in pending/."""
    real = Path(os.path.realpath(file.absolute().parent)) / file.name  # the link itself, not its target
    try:
        path = real.relative_to(top.resolve()).as_posix() if top else f"pending/{file.name}"
    except ValueError:
        path = f"pending/{file.name}"
    mode = LINK_MODE if file.is_symlink() else b"100644"
    return path, mode, file.read_bytes


def queue_top(start: Path | None = None) -> Path | None:
    """The top of the queue clone around ``start``: the nearest folder holding ``.git``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return None


# ---------------------------------------------------------------- changes (hooks, --staged, --since)


@dataclass
class _Side:
    path: str
    mode: bytes
    blob: str
    state: State


def check_change(
    store: GitStore, old_root: str | None, new_root: str | None, *, files: bool = True, moves: bool = True
) -> list[Problem]:
    """Problems a commit from tree ``old_root`` to ``new_root`` brings: its new or changed
    ``files`` (each must be valid, its id in one folder) and its ``moves`` (each one some
    command makes). Reads only what differs between the two trees."""
    problems: list[Problem] = []
    waits: dict[str, tuple[str, list[str]]] = {}  # tasks whose after this change writes
    removed: dict[str, list[_Side]] = {}
    added: dict[str, list[_Side]] = {}
    changed: list[tuple[_Side, _Side]] = []
    for change in store.diff_trees(old_root, new_root):
        path, where = change.path, place(change.path)
        new = change.new
        try:
            if where.kind == "settings":
                if new is None:
                    problems.append(Problem(path, f"{path}: deleting it would unmake the queue"))
                else:
                    problems += settings_problems(store.read(new[1]))
            elif where.kind == "stray" and new is not None:
                problems.append(_problem(path, f"{path}: {where.problem}"))
            elif where.kind == "outside" and new is not None and new[0] in FILE_MODES:
                if looks_like_task(store.read(new[1])):
                    problems.append(_problem(path, outside_problem(path)))
            elif where.kind == "task":
                found = _task_id(path)  # None for an invalid name: read_task says why, if it is added
                if found is not None:
                    state, task_id = found
                    old_side = _Side(path, *change.old, state) if change.old else None
                    new_side = _Side(path, *new, state) if new else None
                    if old_side and new_side:
                        changed.append((old_side, new_side))
                    elif old_side:
                        removed.setdefault(task_id, []).append(old_side)
                    elif new_side:
                        added.setdefault(task_id, []).append(new_side)
                if new is not None and files:
                    task = read_task(path, new[0], _reader(store, new[1]))
                    if task.after:
                        waits[task.id] = (path, task.after)
        except GitqueueError as exc:
            problems.append(_problem(path, str(exc)))
    if not files:
        problems = []
    elif waits := _new_after(store, old_root, waits):
        problems += _changed_after_problems(store, new_root, waits)
    if moves:
        problems += _moves(store, removed, added, changed)
    for task_id, news in added.items() if files else ():
        for side in news:
            twins = ", ".join(p for p in task_copies(store, new_root, task_id) if p != side.path)
            if twins:
                message = f"{side.path}: task {task_id!r} is also in {twins}: a task lives in one folder"
                problems.append(_problem(side.path, message))
    return sorted(set(problems), key=lambda p: (p.path, p.message))


def _changed_after_problems(
    store: GitStore, root: str | None, waits: dict[str, tuple[str, list[str]]]
) -> list[Problem]:
    """The ``after`` of the tasks a change writes, against the tree it leaves: their ids must
    name tasks, and the chains from them must not come back. Reads only the tasks those
    chains reach, so a push's check does not grow with the queue."""
    reached = dict(waits)
    todo = [dep for _, after in waits.values() for dep in after]
    while todo:
        task_id = todo.pop()
        if task_id in reached:
            continue
        copies = task_copies(store, root, task_id)
        after = _after_at(store, root, copies[0]) if copies else []
        reached[task_id] = (copies[0] if copies else "", after)
        todo += [dep for dep in after if dep not in reached]
    graph = {task_id: after for task_id, (_, after) in reached.items()}
    return after_problems(waits, lambda task_id: reached[task_id][0] != "", graph)


def _new_after(
    store: GitStore, old_root: str | None, waits: dict[str, tuple[str, list[str]]]
) -> dict[str, tuple[str, list[str]]]:
    """Those of ``waits`` whose ``after`` is new or changed since ``old_root``: moving a task
    whose dependency was since removed (cancelling it, say) must not be refused for it."""
    changed = {}
    for task_id, (path, after) in waits.items():
        before = task_copies(store, old_root, task_id)
        if not before or _after_at(store, old_root, before[0]) != after:
            changed[task_id] = (path, after)
    return changed


def _after_at(store: GitStore, root: str | None, path: str) -> list[str]:
    """The ``after`` of the task file at ``path`` in tree ``root`` (empty if it does not parse:
    that file's own problem is reported where it was written)."""
    tree: str | None = root
    mode, sha = b"", ""
    for part in path.split("/"):
        entry = store.tree(tree).get(part) if tree else None
        if entry is None:
            return []
        mode, sha = entry
        tree = sha
    try:
        return read_task(path, mode, _reader(store, sha)).after
    except GitqueueError:
        return []


def _moves(
    store: GitStore,
    removed: dict[str, list[_Side]],
    added: dict[str, list[_Side]],
    changed: list[tuple[_Side, _Side]],
) -> list[Problem]:
    problems: list[Problem] = []
    for old_file, new_file in changed:
        problems += _compare(store, old_file, new_file)
    for task_id in sorted(removed.keys() | added.keys()):
        olds, news = removed.get(task_id, []), added.get(task_id, [])
        before, after = (olds[0] if olds else None), (news[0] if news else None)
        before_state, after_state = (before.state if before else None), (after.state if after else None)
        moved = transition_problem(before_state, after_state)
        if before and after:
            problems += [_problem(after.path, f"{before.path} -> {after.path}: {moved}")] if moved else []
            problems += [] if moved else _compare(store, before, after)
        elif moved:
            lone = after or before
            assert lone is not None
            problems.append(_problem(lone.path, f"{lone.path}: {moved}"))
    return problems


def _compare(store: GitStore, before: _Side, after: _Side) -> list[Problem]:
    """The rules for one task's file before and after a commit (both exist)."""
    try:
        old = read_task(before.path, before.mode, _reader(store, before.blob))
        new = read_task(after.path, after.mode, _reader(store, after.blob))
    except GitqueueError:
        return []  # the old file was invalid (fixing it is welcome) or the new one is reported
    label = after.path if before.path == after.path else f"{before.path} -> {after.path}"
    if before.state is after.state:
        problem = frozen_field_problem(old, new)
    elif after.state is not State.PENDING and person_part(old.text).rstrip() != person_part(new.text).rstrip():
        problem = (
            f"moving a task to {after.state.value}/ keeps the lines its person wrote; "
            "change them in a commit of their own"
        )
    else:
        problem = None
    return [_problem(after.path, f"{label}: {problem}")] if problem else []


def task_copies(store: GitStore, root: str | None, task_id: str) -> list[str]:
    """Every path at which ``task_id`` has a file in tree ``root``: flat or fanned, any state."""
    found = []
    top = store.tree(root) if root else {}
    name, sub = f"{task_id}.yaml", fan(task_id)
    for state in STATES:
        entry = top.get(state)
        if not entry or entry[0] != TREE_MODE:
            continue
        folder = store.tree(entry[1])
        if name in folder and folder[name][0] != TREE_MODE:
            found.append(f"{state}/{name}")
        if sub in folder and folder[sub][0] == TREE_MODE:
            inner = store.tree(folder[sub][1]).get(name)
            if inner and inner[0] != TREE_MODE:
                found.append(f"{state}/{sub}/{name}")
    return sorted(found)


def check_staged(repo: LocalRepo) -> list[Problem]:
    """What the staged files of a clone would bring, against the commit they go on top of
    (what the pre-commit hook checks)."""
    head = repo.rev_parse("HEAD")
    return check_change(repo, repo.commit_info(head)[0] if head else None, repo.index_tree())


def check_since(repo: LocalRepo, rev: str, tip: str = "HEAD") -> list[Problem]:
    """Every commit after ``rev`` up to ``tip`` in a clone, as the server hook checks a push."""
    old, new = repo.rev_parse(rev), repo.rev_parse(tip)
    if old is None or new is None:
        raise GitqueueError(f"no commit {rev if old is None else tip!r} in {repo.path}")
    return check_commits(repo, old, new)


def check_commits(store: GitStore, old: str | None, new: str, *, files: bool = True) -> list[Problem]:
    """The commits ``old..new`` (with no ``old``: every commit no ref has yet), as a push.

    Each commit's moves are checked against its parent (a merge passes if what it does to
    one of its parents passes); the files are checked as ``new`` leaves them, so a later
    commit may fix an earlier one's mistake (not at all without ``files``: the caller checks
    them another way).
    """
    commits = store.new_commits(old, new)
    old_root = store.commit_info(old)[0] if old else None
    new_root = store.commit_info(new)[0]
    if len(commits) == 1 and store.commit_info(new)[1] == ((old,) if old else ()):
        return check_change(store, old_root, new_root, files=files)  # the usual push: one commit on the tip
    problems = check_change(store, old_root, new_root, moves=False) if files else []
    for commit in commits:
        tree, parents = store.commit_info(commit)
        options = [check_change(store, store.commit_info(p)[0], tree, files=False) for p in parents]
        found = min(options or [check_change(store, None, tree, files=False)], key=len)
        problems += [Problem(p.path, f"{p.message} (commit {commit[:10]})") for p in found]
    return problems


# ---------------------------------------------------------------- what a worker checks


def warn(problem: Problem) -> None:
    """The default way a worker tells about a problem: a warning on the ``gitqueue`` logger
    (printed on stderr when logging is not set up)."""
    import logging  # here: a hook that never warns does not pay for importing it

    logging.getLogger("gitqueue").warning("skipping %s", problem.message)


class WorkerChecks:
    """What a worker checks at each claim, telling about each problem once per process: a
    worker meets the same broken file at every claim and must neither stop nor repeat itself.

    Invalid pending files (the worker's own parse), pending files that are not task files,
    task-looking YAML at the top of the queue, and ids that sit in two folders. A pending
    folder (or fan-out subfolder) is scanned once per tree id, so a claim re-reads only the
    folders that changed. Set ``tell`` to report somewhere else than the log.
    """

    def __init__(self, tell: Callable[[Problem], None] = warn) -> None:
        self.tell = tell
        self._told: set[tuple[str, str]] = set()
        self._scanned: set[str] = set()

    def report(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            key = (problem.path, problem.message)
            if key not in self._told:
                self._told.add(key)
                self.tell(problem)

    def scan(self, snap: Snapshot) -> None:
        self.report(pending_strays(snap))
        top = snap.store.tree(snap.root).get(State.PENDING.value) if snap.root else None
        if top is None or top[0] != TREE_MODE:
            return
        if len(self._scanned) > 10_000:
            self._scanned.clear()
        entries: list[Entry] = []
        for prefix, tree in [("pending/", top[1])] + [
            (f"pending/{name}/", sha) for name, (mode, sha) in snap.store.tree(top[1]).items() if mode == TREE_MODE
        ]:
            if tree in self._scanned:
                continue
            self._scanned.add(tree)
            entries += snap.pending_entries(prefix, tree)
        summaries = snap.cache.summaries  # the same parse as claiming, remembered across processes
        summaries.load(entries)
        self.report(_problem(e.path, error) for e in entries if (error := summaries.get(e).error) is not None)

    def guard(self, snap: Snapshot, eligible: Callable[[Task], bool] | None) -> Callable[[Task], bool]:
        """Scan ``snap``, then ``eligible`` plus: not a task whose id is in two folders."""
        self.scan(snap)

        def allowed(task: Task) -> bool:
            if eligible is not None and not eligible(task):
                return False
            twin = twin_problem(snap, task)
            if twin is not None:
                self.report([twin])
                return False
            return True

        return allowed


def twin_problem(snap: Snapshot, task: Task) -> Problem | None:
    """A problem if ``task``'s id also has a file elsewhere (a worker does not claim it)."""
    twins = [p for p in task_copies(snap.store, snap.root, task.id) if p != task.path]
    if not twins:
        return None
    return _problem(
        task.path, f"{task.path}: task {task.id!r} is also in {', '.join(twins)}: not claimed until one is removed"
    )


def pending_strays(snap: Snapshot) -> list[Problem]:
    """Files a worker would never run but a person may think are queued: task-looking YAML
    at the top of the queue, and files in pending/ that are not task files. Cheap: reads
    only the top folder's small files and the names in pending/ (trees are cached)."""
    problems: list[Problem] = []
    top = snap.store.tree(snap.root) if snap.root else {}
    for name, (mode, sha) in top.items():
        if place(name).kind == "outside" and mode in FILE_MODES and _looks_like_task_blob(snap.store, sha):
            problems.append(_problem(name, outside_problem(name)))
    pending = top.get(State.PENDING.value)
    if pending and pending[0] == TREE_MODE:
        problems += _strays_below(snap.store, pending[1], State.PENDING.value + "/")
    return problems


_STRAYS: dict[tuple[str, str], list[Problem]] = {}
_TASKLIKE: dict[str, bool] = {}


def _looks_like_task_blob(store: GitStore, blob: str) -> bool:
    if blob not in _TASKLIKE:
        if len(_TASKLIKE) > 10_000:
            _TASKLIKE.clear()
        _TASKLIKE[blob] = looks_like_task(store.read(blob))
    return _TASKLIKE[blob]


def _strays_below(store: GitStore, tree: str, prefix: str) -> list[Problem]:
    """Stray entries below one folder, remembered by tree id (trees never change)."""
    key = (tree, prefix)
    if key not in _STRAYS:
        if len(_STRAYS) > 10_000:
            _STRAYS.clear()
        _STRAYS[key] = _find_strays(store, tree, prefix)
    return _STRAYS[key]


def _find_strays(store: GitStore, tree: str, prefix: str) -> list[Problem]:
    problems = []
    # A task file where tasks belong (what place() says of every *.yaml file at most one folder
    # below a state folder), told apart without place(): a 100,000-task queue's claim changes
    # folders of hundreds of them.
    tasks_here = prefix.split("/", 1)[0] in STATES and prefix.count("/") <= 2
    for name, (mode, sha) in store.tree(tree).items():
        if tasks_here and mode != TREE_MODE and name.endswith(".yaml"):
            continue
        path = prefix + name
        if mode == TREE_MODE:
            if path.count("/") < 2:
                problems += _strays_below(store, sha, path + "/")
            else:
                problems.append(_problem(path, f"{path}/: nested too deep; tasks in it are never run"))
            continue
        where = place(path)
        if where.kind == "stray":
            problems.append(_problem(path, f"{path}: {where.problem}"))
    return problems


__all__ = [
    "FROZEN_FIELDS",
    "TRANSITIONS",
    "Problem",
    "WorkerChecks",
    "check_change",
    "check_commits",
    "check_disk",
    "check_files",
    "check_since",
    "check_staged",
    "check_tree",
    "edit_problem",
    "pending_strays",
    "place",
    "transition_problem",
    "twin_problem",
]
