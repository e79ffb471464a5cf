"""Tasks: the YAML file format, its validation, and how gitqueue writes into a file.

A task file has two parts. Above the marker line is what a person wrote (or what
``submit`` wrote for them): ``args``, ``priority``, ``tags``, ``requires``,
``max_attempts``, ``lease``, ``cmd``, ``after``. Below it is what gitqueue records: ``submitted``,
``run``, ``attempts``, ``result``. gitqueue only ever rewrites the part below the marker,
so a person's lines, comments and key order survive every move.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import yaml

from gitqueue.errors import InvalidId, InvalidTask

MARKER = "# --- gitqueue: the lines below are written by gitqueue ---"
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32
MAX_ALIASES = 64
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

PERSON_FIELDS = ("args", "priority", "tags", "requires", "max_attempts", "lease", "cmd", "after")
GITQUEUE_FIELDS = ("submitted", "run", "attempts", "requeued", "result")
# Outcomes of an attempt that use up one of the task's max_attempts.
SPENT_OUTCOMES = frozenset({"failed", "reaped"})


class State(StrEnum):
    """A task's state is the folder its file sits in."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def check_id(task_id: str) -> str:
    """Return ``task_id`` if it is a valid id, else raise :class:`InvalidId`."""
    if not isinstance(task_id, str) or not ID_RE.fullmatch(task_id) or task_id in {".", ".."}:
        raise InvalidId(f"invalid task id {task_id!r}: use 1 to 128 of A-Z a-z 0-9 . _ - (and not '.' or '..')")
    return task_id


SEQ_DIGITS = 6  # an id made by submit: a sequence number this wide, a dash, a slug
_LEADING_NUMBER = re.compile(r"0*(\d+)")


def id_order(task_id: str) -> str:
    """The key ids are claimed and listed by: the id, except that a number it starts with
    counts by its value, so that ``9-x`` comes before ``10-x`` and generated ids keep
    submission order past 999,999 (``1000000-b`` after ``999999-a``).

    A generated id is its own key (no copy kept per task); shorter numbers are padded to its
    width, and longer ones sort after every 6-digit one."""
    match = _LEADING_NUMBER.match(task_id)
    if match is None or match.end() == SEQ_DIGITS:
        return task_id
    digits, rest = match.group(1), task_id[match.end() :]
    if len(digits) <= SEQ_DIGITS:
        return f"{digits:0>{SEQ_DIGITS}}{rest}\0{task_id}"  # \0: ties go by the id itself
    return f"{'9' * SEQ_DIGITS}\x7f{len(digits):03d}{digits}{rest}\0{task_id}"


def now_iso(now: float | None = None) -> str:
    """UTC time as ISO-8601 with a Z, to the millisecond: what gitqueue writes into files."""
    moment = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Read a time written by :func:`now_iso` back into a Unix timestamp."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@dataclass
class Task:
    """One task as read from its file at one commit of the queue."""

    id: str
    state: State
    args: dict[str, Any]
    priority: int = 0
    tags: list[str] = field(default_factory=list)
    requires: dict[str, Any] = field(default_factory=dict)
    max_attempts: int | None = None
    lease: int | None = None
    cmd: list[str] | None = None
    after: list[str] = field(default_factory=list)  # ids that must be done before this task is claimed
    submitted: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    requeued: dict[str, Any] | None = None
    result: Any = None
    path: str = ""
    text: str = field(default="", repr=False)

    @property
    def token(self) -> str | None:
        """The fencing token of the run that holds this task, if it is running."""
        return self.run.get("token") if self.run else None

    @property
    def attempts_spent(self) -> int:
        """Attempts that count against ``max_attempts`` since the last requeue."""
        base = self.requeued.get("after_attempt", 0) if self.requeued else 0
        return sum(1 for a in self.attempts if a.get("outcome") in SPENT_OUTCOMES and a.get("attempt", 0) > base)

    @property
    def next_attempt(self) -> int:
        """The number the next run of this task gets (1 for the first)."""
        return 1 + max((a.get("attempt", 0) for a in self.attempts), default=0)

    def person_fields(self) -> dict[str, Any]:
        """The fields a person writes, as they would be written (defaults left out)."""
        out: dict[str, Any] = {"args": self.args}
        if self.priority:
            out["priority"] = self.priority
        if self.tags:
            out["tags"] = self.tags
        if self.requires:
            out["requires"] = self.requires
        for key in ("max_attempts", "lease", "cmd"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.after:
            out["after"] = self.after
        return out

    def gitqueue_fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in GITQUEUE_FIELDS:
            value = getattr(self, key)
            if value not in (None, []):
                out[key] = value
        return out

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True if a worker with ``labels`` may take this task (see ``requires``)."""
        for key, wanted in self.requires.items():
            have = labels.get(key)
            if have is None:
                return False
            options = wanted if isinstance(wanted, list) else [wanted]
            if str(have) not in {str(o) for o in options}:
                return False
        return True

    def evolve(self, **changes: Any) -> Task:
        """A deep copy with ``changes`` applied; tasks read from a commit are never mutated."""
        twin = copy.deepcopy(self)
        for key, value in changes.items():
            setattr(twin, key, value)
        return twin

    def to_dict(self) -> dict[str, Any]:
        """Everything about the task, JSON-ready (for ``--format json``)."""
        out: dict[str, Any] = {"id": self.id, "state": self.state.value}
        out.update(self.person_fields())
        out.setdefault("priority", self.priority)
        out.update(self.gitqueue_fields())
        return out


# ---------------------------------------------------------------- reading


class _NoDuplicates:
    """Refuses a mapping that repeats a key (PyYAML would silently keep the last)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.MarkedYAMLError(
                    problem="a mapping key must be a scalar", problem_mark=key_node.start_mark
                ) from None
            if duplicate:
                raise yaml.MarkedYAMLError(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[misc]


class _Loader(_NoDuplicates, yaml.SafeLoader):
    """Safe loading, plus refusal of duplicate keys, deep nesting and alias bombs."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


# libyaml is ~8x faster, but its composer recurses in C and crashes on very deep nesting, and
# it cannot count aliases. Only small files without anchors or aliases go through it; its
# result gets the same depth check, so both paths reach the same verdict.
_FAST_LIMIT = 8192
_FastLoader: type | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _CLoader(_NoDuplicates, yaml.CSafeLoader):  # type: ignore[misc]
        pass

    _FastLoader = _CLoader

# Timestamps stay strings: a task's args must round-trip through JSON and argv unchanged.
_RESOLVERS = {
    ch: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _loader in (_Loader, _FastLoader):
    if _loader is not None:
        _loader.yaml_implicit_resolvers = _RESOLVERS  # type: ignore[attr-defined]


_SLOW = object()


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a loaded value, counting no further than ``limit + 1``."""
    if limit < 0 or not isinstance(value, dict | list):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(child, limit - 1) for child in children), default=0)


def load_yaml(text: str | bytes, *, path: str) -> Any:
    """Safe-load one YAML document, raising :class:`InvalidTask` that names ``path``."""
    if len(text) > MAX_FILE_BYTES:
        raise InvalidTask(path, f"file is {len(text):,} bytes; at most {MAX_FILE_BYTES:,} are read")
    if isinstance(text, bytes):
        if b"\0" in text:
            raise InvalidTask(path, "binary file (contains NUL bytes), not YAML")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidTask(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        if _FastLoader is not None and len(text) <= _FAST_LIMIT and "&" not in text and "*" not in text:
            try:
                value = yaml.load(text, Loader=_FastLoader)
            except yaml.YAMLError:
                value = _SLOW  # the pure-Python loader says more precisely what is wrong
            if value is not _SLOW:
                if _depth(value) > MAX_DEPTH:
                    raise InvalidTask(path, f"nested deeper than {MAX_DEPTH} levels")
                return value
        return yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "invalid YAML"
        if mark is None:
            raise InvalidTask(path, problem) from None
        raise InvalidTask(path, problem, line=mark.line + 1, column=mark.column + 1) from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise InvalidTask(path, f"invalid YAML: {exc}") from None


def _check_type(path: str, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InvalidTask(path, f"field '{key}' must be {what}, not {type(value).__name__} {value!r:.60}")


def task_from_mapping(data: Any, *, task_id: str, state: State, path: str, text: str = "") -> Task:
    """Validate a loaded mapping and build the :class:`Task` it describes."""
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {type(data).__name__}"
        raise InvalidTask(path, f"a task file must be a mapping with at least 'args', but it is {found}")
    unknown = [k for k in data if k not in PERSON_FIELDS and k not in GITQUEUE_FIELDS]
    if unknown:
        known = ", ".join(PERSON_FIELDS)
        raise InvalidTask(path, f"unknown field {unknown[0]!r} (a person writes: {known})")
    if "args" not in data:
        raise InvalidTask(path, "missing field 'args' (a mapping of the task's arguments)")
    args = data["args"]
    _check_type(path, "args", args, dict, "a mapping")
    for name in args:
        if not isinstance(name, str) or not name:
            raise InvalidTask(path, f"argument names must be non-empty strings, not {name!r}")
    checks: list[tuple[str, type | tuple[type, ...], str]] = [
        ("priority", int, "an integer"),
        ("tags", list, "a list"),
        ("requires", dict, "a mapping"),
        ("max_attempts", int, "an integer"),
        ("lease", int, "an integer (seconds)"),
        ("cmd", list, "a list of strings (an argv)"),
        ("after", list, "a list of task ids"),
        ("submitted", dict, "a mapping"),
        ("run", dict, "a mapping"),
        ("attempts", list, "a list"),
        ("requeued", dict, "a mapping"),
    ]
    for key, kind, what in checks:
        if data.get(key) is not None:
            _check_type(path, key, data[key], kind, what)
    if data.get("max_attempts") is not None and data["max_attempts"] < 1:
        raise InvalidTask(path, "field 'max_attempts' must be at least 1")
    if data.get("lease") is not None and data["lease"] < 1:
        raise InvalidTask(path, "field 'lease' must be at least 1 second")
    if data.get("cmd") is not None and (not data["cmd"] or not all(isinstance(a, str) for a in data["cmd"])):
        raise InvalidTask(path, "field 'cmd' must be a non-empty list of strings (an argv)")
    after = _after(path, task_id, data.get("after") or [])
    tags = data.get("tags") or []
    if not all(isinstance(t, str | int | float) and not isinstance(t, bool) for t in tags):
        raise InvalidTask(path, "field 'tags' must be a list of plain words")
    if state is State.RUNNING and not (isinstance(data.get("run"), dict) and data["run"].get("token")):
        raise InvalidTask(path, "a running task must have a 'run' with a 'token' (gitqueue writes it at claim)")
    return Task(
        id=task_id,
        state=state,
        args=args,
        priority=data.get("priority") or 0,
        tags=[str(t) for t in tags],
        requires=data.get("requires") or {},
        max_attempts=data.get("max_attempts"),
        lease=data.get("lease"),
        cmd=data.get("cmd"),
        after=after,
        submitted=data.get("submitted"),
        run=data.get("run") if state is State.RUNNING else None,
        attempts=data.get("attempts") or [],
        requeued=data.get("requeued"),
        result=data.get("result"),
        path=path,
        text=text,
    )


def _after(path: str, task_id: str, after: list[Any]) -> list[str]:
    """The ids of ``after``: each a valid id, none twice, not the task itself."""
    for dep in after:
        if not isinstance(dep, str) or not ID_RE.fullmatch(dep) or dep in {".", ".."}:
            raise InvalidTask(path, f"field 'after' must list task ids, and {dep!r:.60} is not one")
    if task_id in after:
        raise InvalidTask(path, f"field 'after' names the task itself ({task_id!r}): it would wait forever")
    if len(set(after)) != len(after):
        raise InvalidTask(path, "field 'after' names a task twice")
    return [str(dep) for dep in after]


def parse_task(raw: bytes, *, path: str) -> Task:
    """Read one task file. ``path`` is its path in the queue, e.g. ``pending/ab/x.yaml``."""
    state, task_id = split_task_path(path)
    data = load_yaml(raw, path=path)
    text = raw.decode("utf-8")
    person, _, _ = text.partition(MARKER)
    for key in GITQUEUE_FIELDS:
        if re.search(rf"^{key}\s*:", person, re.MULTILINE):
            raise InvalidTask(path, f"field '{key}' is written by gitqueue; write it below the marker or not at all")
    return task_from_mapping(data, task_id=task_id, state=state, path=path, text=text)


def split_task_path(path: str) -> tuple[State, str]:
    """``pending/ab/x.yaml`` -> (PENDING, "x"); raise InvalidTask for paths that are not tasks."""
    parts = path.split("/")
    if len(parts) not in (2, 3) or not parts[-1].endswith(".yaml"):
        raise InvalidTask(path, "not a task path: tasks are <state>/<id>.yaml or <state>/<xx>/<id>.yaml")
    try:
        state = State(parts[0])
    except ValueError:
        raise InvalidTask(path, f"{parts[0]!r} is not a state folder") from None
    task_id = parts[-1][: -len(".yaml")]
    try:
        check_id(task_id)
    except InvalidId as exc:
        raise InvalidTask(path, str(exc)) from None
    if len(parts) == 3 and parts[1] != fan(task_id):
        raise InvalidTask(path, f"task {task_id!r} belongs in {parts[0]}/{fan(task_id)}/, not {parts[0]}/{parts[1]}/")
    return state, task_id


# ---------------------------------------------------------------- writing


def fan(task_id: str) -> str:
    """The fan-out subfolder of a task in a large state folder: two hex digits of its hash."""
    return hashlib.sha1(task_id.encode()).hexdigest()[:2]


def _dump(data: dict[str, Any], *, flow: bool | None) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=flow, width=100)


def render(task: Task) -> bytes:
    """The file text of ``task``: the person's part kept as it is, gitqueue's part rewritten."""
    person = task.text.partition(MARKER)[0] if task.text else _dump(task.person_fields(), flow=None)
    if person and not person.endswith("\n"):
        person += "\n"
    ours = task.gitqueue_fields()
    if not ours:
        return person.encode()
    return (person + MARKER + "\n" + _dump(ours, flow=False)).encode()
