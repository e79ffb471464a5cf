"""A person's edits to a task file, made line by line so their comments and layout survive.

``gitqueue set ID priority=50`` changes the value on the ``priority:`` line and nothing else:
the comment after it, the lines around it and their order stay as the person wrote them.
``args.lr=0.02`` does the same one level down, inside a block mapping, or rewrites just the
``args:`` line when it is a one-line ``{...}`` mapping. Every edit is checked by parsing the
result: if the file's layout defeats a line edit, nothing is written and the person is told
to use ``gitqueue edit``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from gitqueue.errors import GitqueueError, InvalidTask
from gitqueue.task import MARKER, PERSON_FIELDS, Task, load_yaml

# Fields ``set`` can reach inside with KEY.SUB.
NESTED = ("args", "requires")
NOTE = "# gitqueue:"


def flow(value: Any) -> str:
    """``value`` as one line of YAML (a scalar, or a flow ``[...]`` / ``{...}``)."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=1_000_000, sort_keys=False)
    text = text.strip()
    return text[: -len("...")].strip() if text.endswith("\n...") or text.endswith("...") else text


def split_comment(line: str) -> tuple[str, str]:
    """``"priority: 5  # high"`` -> (``"priority: 5"``, ``"  # high"``); quotes respected."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            start = len(line[:i].rstrip())
            return line[:start], line[start:]
    return line.rstrip(), ""


def _key_line(lines: list[str], key: str, indent: str, start: int, stop: int) -> int | None:
    pattern = re.compile(rf"^{re.escape(indent)}(?:{re.escape(key)}|'{re.escape(key)}'|\"{re.escape(key)}\")\s*:(\s|$)")
    for i in range(start, stop):
        if pattern.match(lines[i]):
            return i
    return None


def _block_end(lines: list[str], at: int, indent: str, stop: int) -> int:
    """The line after the block whose key line is ``at``: the more-indented lines below it
    (and a sequence written at the key's own indentation). Blank and comment lines count
    only when more of the block follows them."""
    end = at + 1
    for i in range(at + 1, stop):
        line = lines[i]
        body = line.lstrip()
        if not body or body.startswith("#"):
            continue
        width = len(line) - len(body)
        if width > len(indent) or (width == len(indent) and (body.startswith("- ") or body == "-")):
            end = i + 1
            continue
        break
    return end


def _set_line(lines: list[str], at: int, indent: str, value: Any, stop: int) -> None:
    """Put ``value`` on the key line ``at``, keeping its comment; a nested block under it
    is replaced by the one-line value."""
    end = _block_end(lines, at, indent, stop)
    head, comment = split_comment(lines[at])
    prefix = head[: head.index(":") + 1]
    lines[at:end] = [f"{prefix} {flow(value)}{comment}"]


def set_fields(text: str, changes: dict[str, Any], *, path: str) -> str:
    """``text`` (a whole task file) with each change applied to the person's lines.

    Keys are person fields (``priority``) or one level into ``args``/``requires``
    (``args.lr``). Raises InvalidTask for keys that cannot be set, GitqueueError when a line
    edit cannot express the change.
    """
    person, marker, rest = text.partition(MARKER)
    lines = person.split("\n")
    trailing = lines.pop() if lines and lines[-1] == "" else None
    for key, value in changes.items():
        top, _, sub = key.partition(".")
        if top not in PERSON_FIELDS:
            raise InvalidTask(path, f"cannot set {key!r}: a person sets {', '.join(PERSON_FIELDS)} (and args.NAME)")
        if sub and (top not in NESTED or "." in sub):
            raise InvalidTask(path, f"cannot set {key!r}: only args.NAME and requires.NAME reach inside a field")
        at = _key_line(lines, top, "", 0, len(lines))
        if not sub:
            if at is None:
                lines.append(f"{top}: {flow(value)}")
            else:
                _set_line(lines, at, "", value, len(lines))
            continue
        if at is None:
            lines += [f"{top}:", f"  {sub}: {flow(value)}"]
            continue
        end = _block_end(lines, at, "", len(lines))
        children = [i for i in range(at + 1, end) if lines[i].strip() and not lines[i].lstrip().startswith("#")]
        if not children:  # a one-line {...} mapping, or an empty one: rewrite that line
            head, comment = split_comment(lines[at])
            current = load_yaml(head, path=path).get(top) or {}
            if not isinstance(current, dict):
                raise InvalidTask(path, f"cannot set {key!r}: {top} is not a mapping")
            current[sub] = value
            lines[at] = f"{top}: {flow(current)}{comment}"
            continue
        indent = lines[children[0]][: len(lines[children[0]]) - len(lines[children[0]].lstrip())]
        child = _key_line(lines, sub, indent, at + 1, end)
        if child is None:
            lines.insert(children[-1] + 1 + _tail(lines, children[-1], end, indent), f"{indent}{sub}: {flow(value)}")
        else:
            _set_line(lines, child, indent, value, end)
    if trailing is not None:
        lines.append(trailing)
    new_person = "\n".join(lines)
    if not new_person.endswith("\n"):
        new_person += "\n"
    result = new_person + marker + rest
    _check(text, result, changes, path=path)
    return result


def _tail(lines: list[str], last_child: int, end: int, indent: str) -> int:
    """Lines after the last child that still belong to it (its own nested block)."""
    return _block_end(lines, last_child, indent, end) - last_child - 1


def _check(before: str, after: str, changes: dict[str, Any], *, path: str) -> None:
    expected = copy.deepcopy(load_yaml(before, path=path)) or {}
    for key, value in changes.items():
        top, _, sub = key.partition(".")
        if sub:
            expected.setdefault(top, {})
            if not isinstance(expected[top], dict):
                raise InvalidTask(path, f"cannot set {key!r}: {top} is not a mapping")
            expected[top][sub] = value
        else:
            expected[top] = value
    try:
        got = load_yaml(after, path=path)
    except InvalidTask:
        got = None
    if got != expected:
        raise GitqueueError(f"{path}: its layout defeats a line-by-line change; use `gitqueue edit` to change it")


def describe(before: Task, after: Task) -> str:
    """What a person changed, for the commit subject: ``priority 0 -> 50, args.lr 0.01 -> 0.02``."""
    parts = []
    for key in PERSON_FIELDS:
        a, b = getattr(before, key), getattr(after, key)
        if a == b:
            continue
        if key in NESTED and isinstance(a, dict) and isinstance(b, dict):
            for sub in dict.fromkeys([*a, *b]):
                if a.get(sub) != b.get(sub):
                    parts.append(f"{key}.{sub} {_short(a.get(sub))} -> {_short(b.get(sub))}")
        else:
            parts.append(f"{key} {_short(a)} -> {_short(b)}")
    if not parts and before.text != after.text:
        parts.append("comments or layout")
    return ", ".join(parts[:4]) + (", ..." if len(parts) > 4 else "")


def _short(value: Any) -> str:
    text = "unset" if value is None else flow(value)
    return text if len(text) <= 30 else text[:27] + "..."


def strip_notes(text: str) -> str:
    """``text`` without the ``# gitqueue:`` lines ``edit`` put above it."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(NOTE))


def with_notes(text: str, problem: str) -> str:
    """``text`` for the editor again, headed by why it was refused."""
    notes = [f"{NOTE} {line}" for line in problem.splitlines()]
    notes.append(f"{NOTE} fix it and save again (or save it unchanged to give up); these lines are dropped")
    return "\n".join(notes) + "\n" + strip_notes(text)
