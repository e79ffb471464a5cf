"""Tasks: the YAML file format, its validation, and how gitqueue writes into a file.

A task file has two parts. Above the marker line is what a person wrote (or what
``submit`` wrote for them): ``args``, ``priority``, ``tags``, ``requires``, ``max_attempts``,
``lease``, ``timeout``, ``cmd``, ``after``, ``gpus``. Below it is what gitqueue records: ``submitted``,
``run``, ``attempts``, ``result``. gitqueue only ever rewrites the part below the marker,
so a person's lines, comments and key order survive every move.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
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
MAX_ALIAS_VALUES = 100_000  # values all aliases together may repeat
MAX_FIELD_INT = 2**63 - 1  # integer fields (priority, lease, ...) fit in 64 bits
MAX_TASK_GPUS = 256  # a task asking more GPUs than any one machine holds is a typo
MAX_INT_BITS = 13_300  # about 4,000 digits: every integer read can be printed again (Python stops at 4,300)
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")

PERSON_FIELDS = ("args", "priority", "tags", "requires", "max_attempts", "lease", "timeout", "cmd", "after", "gpus")
GITQUEUE_FIELDS = ("submitted", "run", "attempts", "requeued", "result")
# Outcomes of an attempt that use up one of the task's max_attempts.
SPENT_OUTCOMES = frozenset({"failed", "reaped", "timeout"})


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


def same_args(one: Any, other: Any) -> bool:
    """Equal args (``.nan`` included: it is not equal to itself in Python)."""
    return bool(one == other) or json.dumps(one, default=str) == json.dumps(other, default=str)


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
    timeout: float | None = None  # wall-clock seconds a run may take before it is stopped
    cmd: list[str] | None = None
    after: list[str] = field(default_factory=list)  # ids that must be done before this task is claimed
    gpus: int | None = None  # GPUs one run takes on a worker started with --gpus (None: 1 there)
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

    @property
    def ran_with(self) -> dict[str, Any] | None:
        """The args the last attempt ran with, recorded when they were not the file's (its
        args changed while it ran); None when the file's args are what ran."""
        last = self.attempts[-1] if self.attempts else {}
        return last.get("ran_with") if isinstance(last.get("ran_with"), dict) else None

    @property
    def args_changed(self) -> bool:
        """True if the last attempt ran with other args than the file now holds."""
        last = self.attempts[-1] if self.attempts else {}
        return "ran_with" in last

    def person_fields(self) -> dict[str, Any]:
        """The fields a person writes, as they would be written (defaults left out)."""
        out: dict[str, Any] = {"args": self.args}
        if self.priority:
            out["priority"] = self.priority
        if self.tags:
            out["tags"] = self.tags
        if self.requires:
            out["requires"] = self.requires
        for key in ("max_attempts", "lease", "timeout", "cmd"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.after:
            out["after"] = self.after
        if self.gpus is not None:
            out["gpus"] = self.gpus
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


class _Checked:
    """Refuses a mapping that repeats a key (PyYAML would silently keep the last), and turns
    whatever a constructor raises (``!!int abc``, ``!!timestamp hello``, an integer too long
    to print) into a marked YAML error: a file that cannot be read is invalid, never a crash."""

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            value = super().construct_object(node, deep=deep)  # type: ignore[misc]
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
            raise _unreadable(node, exc) from None
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise _unreadable(node, OverflowError("too long"))
        return value

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # type: ignore[misc]  # says what it found
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base`: keys written here override what it merges (flatten_mapping does it)
            key = self.construct_object(key_node, deep=True)
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


def _unreadable(node: Any, exc: Exception) -> yaml.MarkedYAMLError:
    """The error for a value no constructor can build, pointing at the value."""
    tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
    value = node.value if isinstance(node, yaml.ScalarNode) else f"a {node.id}"
    if tag == "!!int" and ("Exceeds the limit" in str(exc) or isinstance(exc, OverflowError)):
        problem = f"an integer written with {len(str(value)):,} characters: gitqueue reads up to about 4,000 digits"
    else:
        reason = str(exc).split(";")[0] if isinstance(exc, ValueError) else f"not a valid {tag} value"
        problem = f"cannot read {value!r:.60} as {tag} ({reason})"
    return yaml.MarkedYAMLError(problem=problem, problem_mark=node.start_mark)


class _Loader(_Checked, yaml.SafeLoader):
    """Safe loading, plus refusal of duplicate keys, deep nesting and alias bombs.

    An alias costs nothing to parse but everything to use: every reader that walks the
    value (JSON for ``GITQUEUE_ARGS``, ``ls``, a YAML dump) meets the aliased part once per
    alias. So besides counting aliases, each collection's expanded size and depth are
    tracked, and the values aliases repeat are bounded (:data:`MAX_ALIAS_VALUES`).
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0
        self._repeated = 0
        self._sizes: dict[int, tuple[int, int]] = {}  # id(collection node) -> (values, depth), once composed

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases")
            self._count_alias(self.peek_event())
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.CollectionNode) and id(node) not in self._sizes:
            self._measure(node)
        return node

    def _size(self, node: Any) -> tuple[int, int]:
        return (1, 0) if isinstance(node, yaml.ScalarNode) else self._sizes[id(node)]

    def _count_alias(self, event: Any) -> None:
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # the composer says it is undefined
        if not isinstance(target, yaml.ScalarNode) and id(target) not in self._sizes:
            raise yaml.MarkedYAMLError(
                problem=f"alias *{event.anchor} refers to a value that contains it (a recursive structure)",
                problem_mark=event.start_mark,
            )
        self._repeated += self._size(target)[0]
        if self._repeated > MAX_ALIAS_VALUES:
            raise yaml.MarkedYAMLError(
                problem=f"aliases repeat more than {MAX_ALIAS_VALUES:,} values (an alias bomb?)",
                problem_mark=event.start_mark,
            )

    def _measure(self, node: Any) -> None:
        children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else node.value
        sizes = [self._size(child) for child in children]
        depth = 1 + max((d for _, d in sizes), default=0)
        if depth > MAX_DEPTH:
            raise yaml.MarkedYAMLError(
                problem=f"nested deeper than {MAX_DEPTH} levels (counting what its aliases repeat)",
                problem_mark=node.start_mark,
            )
        self._sizes[id(node)] = (1 + sum(n for n, _ in sizes), depth)


# libyaml is ~8x faster, but its composer recurses in C and crashes on very deep nesting, and
# it cannot count aliases. Only small files without anchors or aliases go through it; its
# result gets the same depth check, so both paths reach the same verdict.
_FAST_LIMIT = 8192
_FastLoader: type | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _CLoader(_Checked, yaml.CSafeLoader):  # type: ignore[misc]
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
        if text.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise InvalidTask(path, "UTF-16 text (it starts with a UTF-16 byte order mark): save it as UTF-8")
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
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError) as exc:
        # PyYAML's constructors raise more than YAMLError; what _Checked did not catch lands here
        raise InvalidTask(path, f"cannot read it as YAML ({type(exc).__name__}: {exc})") from None


def _wrong(path: str, message: str, *keys: str | int) -> InvalidTask:
    """A problem with the value at ``keys`` (e.g. ``"attempts", 0, "attempt"``): ``parse_task``
    adds the line and column where that value is written."""
    error = InvalidTask(path, message)
    error.keys = keys  # type: ignore[attr-defined]
    return error


def _check_type(path: str, key: str, value: Any, kind: Any, what: str) -> None:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _wrong(path, f"field '{key}' must be {what}, not {type(value).__name__} {value!r:.60}", key)
    if kind is int and abs(int(value)) > MAX_FIELD_INT:
        raise _wrong(path, f"field '{key}' is too large: at most {MAX_FIELD_INT:,}", key)


_PERSON_CHECKS: list[tuple[str, type | tuple[type, ...], str]] = [
    ("priority", int, "an integer"),
    ("tags", list, "a list"),
    ("requires", dict, "a mapping"),
    ("max_attempts", int, "an integer"),
    ("lease", int, "an integer (seconds)"),
    ("timeout", (int, float), "a number (seconds)"),
    ("cmd", list, "a list of strings (an argv)"),
    ("after", list, "a list of task ids"),
    ("gpus", int, "an integer (how many GPUs a run takes)"),
    ("submitted", dict, "a mapping"),
    ("run", dict, "a mapping"),
    ("attempts", list, "a list"),
    ("requeued", dict, "a mapping"),
]


def _check_person_fields(data: dict[str, Any], path: str) -> None:
    for key, kind, what in _PERSON_CHECKS:
        if data.get(key) is not None:
            _check_type(path, key, data[key], kind, what)
    if data.get("max_attempts") is not None and data["max_attempts"] < 1:
        raise _wrong(path, "field 'max_attempts' must be at least 1", "max_attempts")
    if data.get("lease") is not None and data["lease"] < 1:
        raise _wrong(path, "field 'lease' must be at least 1 second", "lease")
    if data.get("timeout") is not None and (isinstance(data["timeout"], bool) or not 0 < data["timeout"] < math.inf):
        raise _wrong(path, "field 'timeout' must be a positive number of seconds", "timeout")
    if data.get("gpus") is not None and not 1 <= data["gpus"] <= MAX_TASK_GPUS:
        raise _wrong(path, f"field 'gpus' must be between 1 and {MAX_TASK_GPUS} (GPUs a run takes)", "gpus")
    if data.get("cmd") is not None and (not data["cmd"] or not all(isinstance(a, str) for a in data["cmd"])):
        raise _wrong(path, "field 'cmd' must be a non-empty list of strings (an argv)", "cmd")
    tags = data.get("tags") or []
    if not all(isinstance(t, str | int | float) and not isinstance(t, bool) for t in tags):
        raise _wrong(path, "field 'tags' must be a list of plain words", "tags")


# What gitqueue writes below the marker, as commands read it back: a forged or damaged record
# must make the file invalid here, not crash whoever reads the field later.
_RECORD_FIELDS: dict[str, tuple[Any, str, int | None]] = {  # name: (type, what it must be, least value)
    "token": (str, "a string", None),
    "worker": (str, "a string", None),
    "attempt": (int, "an integer", 0),
    "lease": (int, "an integer (seconds)", 0),
    "after_attempt": (int, "an integer", 0),
    "exit_code": (int, "an integer", -MAX_FIELD_INT),
    "duration": ((int, float), "a number (seconds)", None),
    "outcome": (str, "a string", None),
    "at": (str, "a time", None),
    "claimed_at": (str, "a time", None),
}
_TIMES = ("at", "claimed_at")  # the times commands compute with


def _check_record(path: str, record: dict[str, Any], *keys: str | int) -> None:
    where = ".".join(str(k) if isinstance(k, str) else f"[{k}]" for k in keys).replace(".[", "[")
    for name, (kind, what, least) in _RECORD_FIELDS.items():
        value: Any = record.get(name)
        if value is None:
            continue
        label = f"field '{where}.{name}'"
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _wrong(path, f"{label} must be {what}, not {type(value).__name__} {value!r:.60}", *keys, name)
        if least is not None and not least <= int(value) <= MAX_FIELD_INT:
            raise _wrong(path, f"{label} must be between {least} and {MAX_FIELD_INT:,}", *keys, name)
        if name in _TIMES:
            try:
                parse_time(str(value))
            except ValueError:
                raise _wrong(path, f"{label} must be a time like 2026-11-25T09:26:52.322Z, not {value!r:.60}",
                             *keys, name) from None  # fmt: skip


def _check_gitqueue_fields(data: dict[str, Any], path: str) -> None:
    for key in ("submitted", "run", "requeued"):
        if isinstance(data.get(key), dict):
            _check_record(path, data[key], key)
    for index, attempt in enumerate(data.get("attempts") or []):
        if not isinstance(attempt, dict):
            message = f"field 'attempts' must be a list of mappings (gitqueue's records), not {attempt!r:.60}"
            raise _wrong(path, message, "attempts", index)
        _check_record(path, attempt, "attempts", index)


def task_from_mapping(data: Any, *, task_id: str, state: State, path: str, text: str = "") -> Task:
    """Validate a loaded mapping and build the :class:`Task` it describes."""
    if not isinstance(data, dict):
        found = "empty" if data is None else f"a {type(data).__name__}"
        raise InvalidTask(path, f"a task file must be a mapping with at least 'args', but it is {found}")
    unknown = [k for k in data if k not in PERSON_FIELDS and k not in GITQUEUE_FIELDS]
    if unknown:
        known = ", ".join(PERSON_FIELDS)
        raise _wrong(path, f"unknown field {unknown[0]!r} (a person writes: {known})", unknown[0])
    if "args" not in data:
        raise InvalidTask(path, "missing field 'args' (a mapping of the task's arguments)")
    args = data["args"]
    _check_type(path, "args", args, dict, "a mapping")
    for name in args:
        if not isinstance(name, str) or not name:
            raise _wrong(path, f"argument names must be non-empty strings, not {name!r}", "args")
    _check_person_fields(data, path)
    _check_gitqueue_fields(data, path)
    after = _after(path, task_id, data.get("after") or [])
    if state is State.RUNNING and not (isinstance(data.get("run"), dict) and data["run"].get("token")):
        raise InvalidTask(path, "a running task must have a 'run' with a 'token' (gitqueue writes it at claim)")
    return Task(
        id=task_id,
        state=state,
        args=args,
        priority=data.get("priority") or 0,
        tags=[str(t) for t in data.get("tags") or []],
        requires=data.get("requires") or {},
        max_attempts=data.get("max_attempts"),
        lease=data.get("lease"),
        timeout=data.get("timeout"),
        cmd=data.get("cmd"),
        after=after,
        gpus=data.get("gpus"),
        submitted=data.get("submitted"),
        run=data.get("run") if state is State.RUNNING else None,
        attempts=data.get("attempts") or [],
        requeued=data.get("requeued"),
        result=data.get("result"),
        path=path,
        text=text,
    )


def _mark(text: str, keys: tuple[str | int, ...]) -> tuple[int, int] | None:
    """Line and column (1-based) of the value at ``keys`` in ``text``, or of the nearest key
    on the way; None if the text cannot be composed (it was loaded, so it almost always can)."""
    try:
        node = _Loader(text).get_single_node()
    except (yaml.YAMLError, RecursionError):
        return None
    mark = node.start_mark if node is not None else None
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)]
            if not found:
                break
            mark, node = found[0][1].start_mark, found[0][1]
            if key == keys[0] and keys[0] not in PERSON_FIELDS + GITQUEUE_FIELDS:
                mark = found[0][0].start_mark  # an unknown field: point at its name
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            mark = node.start_mark
        else:
            break
    return None if mark is None else (mark.line + 1, mark.column + 1)


def _load_parts(raw: bytes, *, path: str) -> Any:
    """Load a file with gitqueue's marker as its two parts, each on its own: gitqueue keeps
    the person's part as it is and writes its own below it, so the person's part must be
    whole YAML by itself. A marker inside a value (a quoted string, a flow mapping spread
    over lines) would make the file gitqueue writes unreadable, so it makes this one invalid.
    Costs no more than one load of the whole text."""
    if len(raw) > MAX_FILE_BYTES:
        return load_yaml(raw, path=path)  # refuses it, by its size
    person, _, ours = raw.partition(MARKER.encode())
    try:
        top = load_yaml(person, path=path)
    except InvalidTask:
        load_yaml(raw, path=path)  # broken as a whole: that error says more
        line = person.count(b"\n") + 1
        why = "gitqueue's marker line sits inside a value: keep it on a line of its own below your fields"
        raise InvalidTask(path, why, line=line) from None
    try:
        below = load_yaml(ours, path=path)
    except InvalidTask as exc:
        if exc.line is None:
            raise
        offset = person.count(b"\n")  # the marker's line ends where ours begins
        raise InvalidTask(path, exc.problem, line=exc.line + offset, column=exc.column) from None
    if (top is not None and not isinstance(top, dict)) or (below is not None and not isinstance(below, dict)):
        return load_yaml(raw, path=path)  # not a mapping: the whole file's load says so
    twice = sorted(set(top or {}) & set(below or {}), key=str)
    if twice:
        raise InvalidTask(path, f"duplicate key {twice[0]!r}: above and below gitqueue's marker line")
    return {**(top or {}), **(below or {})}


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
    data = _load_parts(raw, path=path) if MARKER.encode() in raw else load_yaml(raw, path=path)
    text = raw.decode("utf-8")
    person, _, _ = text.partition(MARKER)
    for key in GITQUEUE_FIELDS:
        if re.search(rf"^{key}\s*:", person, re.MULTILINE):
            raise InvalidTask(path, f"field '{key}' is written by gitqueue; write it below the marker or not at all")
    try:
        return task_from_mapping(data, task_id=task_id, state=state, path=path, text=text)
    except InvalidTask as exc:
        keys = getattr(exc, "keys", None)
        at = _mark(text, keys) if keys else None
        if at is None:
            raise
        raise InvalidTask(path, exc.problem, line=at[0], column=at[1]) from None


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


RECORD_ROOM = 64 * 1024  # bytes kept free in a task file for the records of its later attempts


def result_problem(task: Task) -> str | None:
    """Why ``task.result`` cannot be kept in the task's file (None if it can): the file
    gitqueue writes must stay a valid task, or the hook refuses the report and the task is
    stranded (too deep, too big, not YAML, or past the limits on aliases with the rest)."""
    if task.result is None:
        return None
    if _depth(task.result) > MAX_DEPTH - 1:
        return f"it nests deeper than {MAX_DEPTH - 1} levels"
    try:
        text = _dump({"result": task.result}, flow=False)
    except yaml.YAMLError as exc:
        return f"it cannot be written as YAML ({exc})"
    room = MAX_FILE_BYTES - len(task.text.encode()) - RECORD_ROOM
    if len(text.encode()) > room:
        return f"it takes {len(text.encode()):,} bytes as YAML, and the task file has room for {max(room, 0):,}"
    if "&id" in text:  # it repeats parts of itself: the file's limits on aliases count them
        try:
            parse_task(render(task), path=task.path)
        except InvalidTask as exc:
            return exc.problem
    return None


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
