"""What people do to a queue: submit tasks, requeue, cancel, and set or edit a task's fields.

Owns :class:`People` and the making of new task files (their ids, their fan-out folders). Each
action is one change landed through :mod:`gitqueue.protocol`; moving a task's file and recording
a cut-off run come from :mod:`gitqueue.lifecycle`; checking an edit from :mod:`gitqueue.validate`
and :mod:`gitqueue.edits`. It may call those and what lies below them, never the queue facade.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gitqueue import edits, filters
from gitqueue import validate as rules
from gitqueue.errors import EditConflict, InvalidTask, InvalidTransition, TaskExists
from gitqueue.gitstore import LEASE_REFS
from gitqueue.lifecycle import attempt_record, move
from gitqueue.objects import BLOB_MODE
from gitqueue.protocol import PROGRESS_EVERY, Change, Protocol
from gitqueue.snapshot import FLAT_LIMIT, Snapshot
from gitqueue.task import PERSON_FIELDS, SEQ_DIGITS, State, Task, check_id, fan, now_iso, render, task_from_mapping

_SEQ_RE = re.compile(r"^(\d+)-")


class People:
    """The changes people make to one queue, each one commit landed through ``protocol``."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol, self.store, self.clock = protocol, protocol.store, protocol.clock

    def submit(self, specs: Iterable[Mapping[str, Any]], *, subject: str | None = None) -> list[str]:
        """Add tasks in one commit. Each spec has ``args`` and optional fields (and ``id``).

        Returns the ids. An id that exists with the same content is skipped; with different
        content it is an error and nothing is submitted.
        """
        prepared = [_prepare(spec, i) for i, spec in enumerate(specs)]
        if not prepared:
            return []

        def build(snap: Snapshot) -> Change | None:
            seq = _next_seq(snap)
            files: dict[str, bytes | None] = {}
            ids: list[str] = []
            stamp = {"at": now_iso(self.clock()), "by": self.protocol.identity.name}
            for index, (task_id, task) in enumerate(prepared):
                if index % PROGRESS_EVERY == 0 and len(prepared) > PROGRESS_EVERY:
                    self.protocol.progress("making task files", index, len(prepared))
                if task_id is None:
                    task_id = f"{seq:0{SEQ_DIGITS}d}-{_slug(task.args)}"
                    seq += 1
                elif (existing := snap.locate(task_id)) is not None:
                    if _same_content(snap.cache.task(existing), task):
                        ids.append(task_id)
                        continue
                    raise TaskExists(f"task {task_id!r} already exists ({existing.path}) with different content")
                path = f"pending/{task_id}.yaml"
                if path in files:
                    raise TaskExists(f"task id {task_id!r} is given twice in one submit")
                ids.append(task_id)
                files[path] = render(task.evolve(id=task_id, submitted=stamp))
            if not files:
                return None
            _fan_pending(snap, files)
            what = subject or (f"submit {ids[0]}" if len(files) == 1 else f"submit {len(files)} tasks")
            return Change(
                subject=what,
                files=files,
                value=ids,
                trailers={"Gitqueue-Action": "submit", "Gitqueue-Count": str(len(files))},
            )

        return self.protocol.transact(build) or [t for t, _ in prepared if t]

    def requeue(self, task_ids: Iterable[str] = (), *, where: str | None = None) -> list[str]:
        """Send tasks back to pending (from running, done, failed or cancelled) in one commit.

        ``where`` adds every task a filter matches that can be requeued (e.g. ``state == "failed"``).
        """

        def change(task: Task, now: float) -> Task:
            if task.state is State.PENDING:
                raise InvalidTransition(f"task {task.id} is already pending")
            attempts = task.attempts
            if task.state is State.RUNNING:
                attempts = [*attempts, attempt_record(task, "requeued", now)]
            last = max((a.get("attempt", 0) for a in attempts), default=0)
            requeued = {
                "at": now_iso(now),
                "by": self.protocol.identity.name,
                "from": task.state.value,
                "after_attempt": last,
            }
            return task.evolve(state=State.PENDING, run=None, attempts=attempts, result=None, requeued=requeued)

        return self._bulk(task_ids, "requeue", change, where=where, target=State.PENDING)

    def cancel(self, task_ids: Iterable[str] = (), *, where: str | None = None) -> list[str]:
        """Withdraw pending or running tasks (a running one's worker stops it) in one commit.

        ``where`` adds every pending or running task a filter matches (e.g. ``args.lr > 0.1``).
        """

        def change(task: Task, now: float) -> Task:
            if task.state in (State.DONE, State.FAILED):
                raise InvalidTransition(f"task {task.id} already finished as {task.state.value}; nothing to cancel")
            if task.state is State.CANCELLED:
                raise InvalidTransition(f"task {task.id} is already cancelled")
            attempts = task.attempts
            if task.state is State.RUNNING:
                attempts = [*attempts, attempt_record(task, "cancelled", now)]
            return task.evolve(state=State.CANCELLED, run=None, attempts=attempts)

        return self._bulk(task_ids, "cancel", change, where=where, target=State.CANCELLED)

    def _bulk(
        self,
        task_ids: Iterable[str],
        verb: str,
        change: Callable[[Task, float], Task],
        *,
        where: str | None = None,
        target: State | None = None,
    ) -> list[str]:
        wanted = list(dict.fromkeys(task_ids))
        match = filters.where(where)
        if not wanted and match is None:
            return []
        # A filter picks only tasks the move is allowed for (rules.TRANSITIONS), never an error.
        movable = {before for before, after in rules.TRANSITIONS if after is target and before not in (None, target)}

        def build(snap: Snapshot) -> Change | None:
            files: dict[str, bytes | None] = {}
            ids = []
            also: list[str] = []
            chosen = [snap.get(task_id) for task_id in wanted]
            if match is not None:
                named = {task.id for task in chosen}
                chosen += [t for t in snap.tasks() if t.state in movable and t.id not in named and match(t)]
            if not chosen:
                return None
            for task in chosen:
                after = change(task, self.clock())
                files.update(move(snap, task, after))
                if task.token and after.state is not State.RUNNING:
                    also.append(f":{LEASE_REFS}/{task.token}")  # its run is cut off: drop its lease ref too
                ids.append(task.id)
            subject = (
                f"{verb} {ids[0]}"
                if len(ids) == 1
                else f"{verb} {len(ids)} tasks: {', '.join(ids[:3])}" + (", ..." if len(ids) > 3 else "")
            )
            return Change(
                subject=subject + f" by {self.protocol.identity.name}",
                files=files,
                value=ids,
                trailers={"Gitqueue-Action": verb, "Gitqueue-Task": " ".join(ids[:50])},
                also=also,
            )

        return self.protocol.transact(build) or []

    def set_fields(self, task_id: str, changes: Mapping[str, Any]) -> Task | None:
        """Change a task's fields in place, in one commit: ``{"priority": 50}``, ``{"args.lr": 0.02}``.

        Only the changed lines are rewritten; the person's comments and other lines stay.
        A running or done task's ``args`` and ``cmd`` are refused (its run or result uses
        them). Returns the task as changed, or None if nothing changed.
        """
        wanted = dict(changes)

        def build(snap: Snapshot) -> Change | None:
            task = snap.get(task_id)
            text = edits.set_fields(task.text, wanted, path=task.path)
            return self._edit_change(task.path, task, text, verb="set")

        return self.protocol.transact(build)

    def edit(self, task_id: str, editor: Callable[[str], str | None]) -> Task | None:
        """Let a person edit a task's file: ``editor(text)`` returns the new text (None or
        empty gives up). An invalid result goes back to the editor with the reason on top.

        Commits and pushes with retries, one commit. If the task moved meanwhile (claimed,
        say), the person's lines are put on the moved file, and refused if they would
        corrupt its run. If someone else changed the person's lines meanwhile, nothing is
        written: :class:`EditConflict` carries the person's text. Also fixes a file that is
        invalid now. Returns the task as changed, or None if nothing changed.
        """
        path, text, task = self._task_file(self.protocol.snapshot(), task_id)
        new = self._edited(path, text, task, editor)
        if new is None:
            return None
        task_id = path.rsplit("/", 1)[-1][: -len(".yaml")]

        def build(snap: Snapshot) -> Change | None:
            now_path, now_text, now_task = self._task_file(snap, task_id)
            mine = rules.person_part(new)
            if now_text == text:
                merged = new
            elif rules.person_part(now_text) == rules.person_part(text):
                merged = mine + now_text[len(rules.person_part(now_text)) :]
            else:
                raise EditConflict(
                    f"{now_path} changed while you edited it; nothing was written. Edit it again.", text=new
                )
            return self._edit_change(now_path, now_task, merged, verb="edit")

        return self.protocol.transact(build)

    def _task_file(self, snap: Snapshot, task_id: str) -> tuple[str, str, Task | None]:
        """A task's path, text and parsed task; for an invalid file, None for the task."""
        try:
            task = snap.get(task_id)
            return task.path, task.text, task
        except InvalidTask:
            entry = snap.locate(task_id)
            if entry is None:
                raise
            return entry.path, self.store.read(entry.blob).decode("utf-8", "replace"), None

    def _edited(self, path: str, text: str, task: Task | None, editor: Callable[[str], str | None]) -> str | None:
        shown, refused = text, None
        while True:
            answer = editor(shown)
            if answer is None or not edits.strip_notes(answer).strip():
                return None
            if refused is not None and answer == shown:
                raise refused  # saved unchanged after a refusal: the person gives up
            new = edits.strip_notes(answer)
            if new == text:
                return None
            try:
                self._check_edit(path, task, new)
                return new
            except (InvalidTask, InvalidTransition) as exc:
                refused, shown = exc, edits.with_notes(new, str(exc))

    def _check_edit(self, path: str, before: Task | None, text: str) -> Task:
        after = rules.read_task(path, BLOB_MODE, text.encode())
        problem = rules.edit_problem(before, after) if before is not None else None
        if problem:
            raise InvalidTransition(f"{path}: {problem}")
        return after

    def _edit_change(self, path: str, before: Task | None, text: str, *, verb: str) -> Change | None:
        if before is not None and text == before.text:
            return None
        after = self._check_edit(path, before, text)
        what = edits.describe(before, after) if before is not None else "a valid file again"
        return Change(
            subject=f"{verb} {after.id} by {self.protocol.identity.name}: {what}",
            files={path: text.encode()},
            trailers={"Gitqueue-Action": "edit", "Gitqueue-Task": after.id},
            value=after,
        )

    # ------------------------------------------------------------ helpers


def _prepare(spec: Mapping[str, Any], index: int) -> tuple[str | None, Task]:
    """Validate one submitted spec; returns its explicit id (or None) and the task."""
    where = f"task #{index + 1}"
    if not isinstance(spec, Mapping):
        raise InvalidTask(where, f"a task must be a mapping, not {type(spec).__name__}")
    spec = dict(spec)
    task_id = spec.pop("id", None)
    if task_id is not None:
        check_id(str(task_id))
        where = f"task {task_id!r}"
    unknown = [k for k in spec if k not in PERSON_FIELDS]
    if unknown:
        raise InvalidTask(where, f"unknown field {unknown[0]!r} (fields: id, {', '.join(PERSON_FIELDS)})")
    task = task_from_mapping(spec, task_id=str(task_id or "new"), state=State.PENDING, path=where)
    return (None if task_id is None else str(task_id)), task


def _same_content(existing: Task, new: Task) -> bool:
    return existing.person_fields() == new.person_fields()


def _next_seq(snap: Snapshot) -> int:
    """One more than the highest numbered id in the queue, so generated ids sort by submission."""
    highest = 0
    for entry in snap.all_entries():
        match = _SEQ_RE.match(entry.id)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _slug(args: Mapping[str, Any], limit: int = 48) -> str:
    """``{"lr": 0.01, "bs": 32}`` -> ``lr0.01-bs32``; long or empty ones become a short hash."""
    parts = [re.sub(r"[^A-Za-z0-9._]+", "_", f"{k}{v}") for k, v in args.items()]
    slug = "-".join(parts).strip("._-")
    if 0 < len(slug) <= limit:
        return slug
    digest = hashlib.sha1(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return (slug[: limit - 11].rstrip("._-") + "-" + digest) if slug else digest


def _fan_pending(snap: Snapshot, files: dict[str, bytes | None]) -> None:
    """Send new pending files to fan-out folders once pending/ would exceed its flat limit."""
    room = FLAT_LIMIT - snap.flat_count(State.PENDING)
    if len(files) <= room:
        return
    for path in list(files):
        task_id = path[len("pending/") : -len(".yaml")]
        files[f"pending/{fan(task_id)}/{task_id}.yaml"] = files.pop(path)
