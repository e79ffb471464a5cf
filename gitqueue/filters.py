"""``--where``: a small, safe filter language over a task's fields.

    args.lr < 0.01 and "sweep-3" in tags
    state in ["failed", "cancelled"] or (attempts >= 2 and not result)
    result.acc >= 0.9 and args.model == "resnet"

Fields are ``id``, ``state``, ``priority``, ``tags``, ``args``, ``requires``, ``max_attempts``,
``lease``, ``cmd``, ``result``, ``attempts`` (how many runs so far), ``worker`` (who runs or
last ran it), ``submitted``, ``run`` and ``requeued``, with ``.`` to reach inside a mapping
(``args.lr``, ``result.metrics.acc``, ``submitted.by``). Operators: ``< <= > >= == !=``,
``in`` and ``not in`` (an item in a list, a key in a mapping, a substring in a string),
``and``, ``or``, ``not``, parentheses. Literals: numbers, "strings" or 'strings', ``true``,
``false``, ``null`` and ``[lists, of, them]``.

A missing field is ``null``: it equals ``null`` and nothing else, and every ordering
comparison with it is false, so ``args.lr < 0.1`` never matches a task without ``lr``.
Numbers compare with numbers and strings with strings; nothing is converted.

The text is read by a hand-written tokenizer and recursive-descent parser into a tree of
plain objects; nothing is ever evaluated as Python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gitqueue.errors import InvalidFilter
from gitqueue.task import Task

FIELDS = (
    "id",
    "state",
    "priority",
    "tags",
    "args",
    "requires",
    "max_attempts",
    "lease",
    "cmd",
    "result",
    "attempts",
    "worker",
    "submitted",
    "run",
    "requeued",
)
KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
COMPARISONS = ("<=", ">=", "==", "!=", "<", ">")

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?![A-Za-z_]))
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<name>[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)
  | (?P<op><=|>=|==|!=|<|>)
  | (?P<punct>[()\[\],])
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "'": "'"}


@dataclass(frozen=True)
class Token:
    kind: str  # number, string, name, keyword, op, punct, end
    text: str
    at: int  # offset in the expression


def tokenize(text: str) -> list[Token]:
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            hint = " (write == to compare)" if text[pos] == "=" else ""
            raise _error(text, pos, f"unexpected character {text[pos]!r}{hint}")
        kind = match.lastgroup or ""
        if kind != "space":
            word = match.group()
            if kind == "name" and word.lower() in KEYWORDS:
                kind, word = "keyword", word.lower()
            tokens.append(Token(kind, word, pos))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def _error(text: str, at: int, message: str) -> InvalidFilter:
    return InvalidFilter(f"--where: {message} at column {at + 1}:\n  {text}\n  {' ' * at}^")


# ---------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Literal:
    value: Any

    def __call__(self, record: dict[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]

    def __call__(self, record: dict[str, Any]) -> Any:
        value: Any = record
        for part in self.path:
            if isinstance(value, dict):
                value = value.get(part)
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return None
        return value


@dataclass(frozen=True)
class ListOf:
    items: tuple[Node, ...]

    def __call__(self, record: dict[str, Any]) -> Any:
        return [item(record) for item in self.items]


@dataclass(frozen=True)
class Compare:
    op: str
    left: Node
    right: Node

    def __call__(self, record: dict[str, Any]) -> bool:
        return compare(self.op, self.left(record), self.right(record))


@dataclass(frozen=True)
class Logic:
    op: str  # and, or, not
    parts: tuple[Node, ...]

    def __call__(self, record: dict[str, Any]) -> bool:
        if self.op == "not":
            return not _truthy(self.parts[0](record))
        if self.op == "and":
            return all(_truthy(part(record)) for part in self.parts)
        return any(_truthy(part(record)) for part in self.parts)


Node = Literal | Field | ListOf | Compare | Logic


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if type(a) is not type(b) and not (isinstance(a, str) and isinstance(b, str)):
        return False
    return bool(a == b)


def compare(op: str, a: Any, b: Any) -> bool:
    """``a op b`` with the language's rules: no conversions, null and mismatches never order."""
    if op == "==":
        return _equal(a, b)
    if op == "!=":
        return not _equal(a, b)
    if op in ("in", "not in"):
        found = _contains(b, a)
        return found if op == "in" else not found
    ordered = (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str))
    if not ordered:
        return False
    return bool({"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op])


def _contains(container: Any, item: Any) -> bool:
    if isinstance(container, list):
        return any(_equal(item, element) for element in container)
    if isinstance(container, dict):
        return isinstance(item, str) and item in container
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    return False


def _truthy(value: Any) -> bool:
    """A bare value as a condition: null, false, 0 and empty things are false."""
    return bool(value)


# ---------------------------------------------------------------- the parser


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    @property
    def token(self) -> Token:
        return self.tokens[self.pos]

    def take(self, kind: str, text: str | None = None) -> Token | None:
        token = self.token
        if token.kind == kind and (text is None or token.text == text):
            self.pos += 1
            return token
        return None

    def fail(self, message: str) -> InvalidFilter:
        token = self.token
        found = "the end" if token.kind == "end" else repr(token.text)
        return _error(self.text, token.at, f"{message}, found {found}")

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.fail("expected a condition")
        node = self.disjunction()
        if self.token.kind != "end":
            raise self.fail("expected 'and', 'or' or the end")
        return node

    def disjunction(self) -> Node:
        parts = [self.conjunction()]
        while self.take("keyword", "or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else Logic("or", tuple(parts))

    def conjunction(self) -> Node:
        parts = [self.negation()]
        while self.take("keyword", "and"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else Logic("and", tuple(parts))

    def negation(self) -> Node:
        if self.take("keyword", "not"):
            return Logic("not", (self.negation(),))
        return self.comparison()

    def comparison(self) -> Node:
        left = self.value()
        op = self.take("op")
        if op is not None:
            return Compare(op.text, left, self.value())
        if self.take("keyword", "in"):
            return Compare("in", left, self.value())
        if self.token.kind == "keyword" and self.token.text == "not":
            self.pos += 1
            if not self.take("keyword", "in"):
                raise self.fail("expected 'in' after 'not'")
            return Compare("not in", left, self.value())
        return left

    def value(self) -> Node:
        token = self.token
        if self.take("punct", "("):
            node = self.disjunction()
            if not self.take("punct", ")"):
                raise self.fail("expected ')'")
            return node
        if self.take("punct", "["):
            items: list[Node] = []
            while not self.take("punct", "]"):
                items.append(self.value())
                if not self.take("punct", ",") and self.token.text != "]":
                    raise self.fail("expected ',' or ']'")
            return ListOf(tuple(items))
        if self.take("number"):
            number = float(token.text)
            is_int = re.fullmatch(r"-?\d+", token.text) is not None
            return Literal(int(token.text) if is_int else number)
        if self.take("string"):
            body = token.text[1:-1]
            return Literal(re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), body))
        if token.kind == "keyword" and token.text in ("true", "false", "null"):
            self.pos += 1
            return Literal({"true": True, "false": False, "null": None}[token.text])
        if self.take("name"):
            path = tuple(token.text.split("."))
            if path[0] not in FIELDS:
                hint = 'quote a string, e.g. "{0}", or name an argument as args.{0}'.format(path[0])
                raise _error(self.text, token.at, f"unknown field {path[0]!r} ({hint}; fields: {', '.join(FIELDS)})")
            return Field(path)
        raise self.fail("expected a field, a number, a string, true, false, null, a [list] or '('")


@dataclass(frozen=True)
class Filter:
    """A compiled ``--where`` expression: call it with a task."""

    text: str
    node: Node

    def __call__(self, task: Task) -> bool:
        return _truthy(self.node(record(task)))


def compile_filter(text: str) -> Filter:
    """Parse ``text`` once; raises :class:`InvalidFilter` pointing at the problem."""
    return Filter(text, _Parser(text).parse())


def record(task: Task) -> dict[str, Any]:
    """The fields a filter sees for ``task``."""
    run = task.run or {}
    last = task.attempts[-1] if task.attempts else {}
    return {
        "id": task.id,
        "state": task.state.value,
        "priority": task.priority,
        "tags": list(task.tags),
        "args": task.args,
        "requires": task.requires,
        "max_attempts": task.max_attempts,
        "lease": task.lease,
        "cmd": task.cmd,
        "result": task.result,
        "attempts": len(task.attempts),
        "worker": run.get("worker") or last.get("worker"),
        "submitted": task.submitted,
        "run": task.run,
        "requeued": task.requeued,
    }


def where(text: str | None) -> Callable[[Task], bool] | None:
    """``compile_filter(text)``, or None for no filter."""
    return None if text is None else compile_filter(text)


__all__ = ["FIELDS", "Filter", "compile_filter", "record", "where"]
