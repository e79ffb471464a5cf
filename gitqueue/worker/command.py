"""Command templates: filling a task's args into an argv list.

Owns ``expand`` (``{name}`` and ``{a.b}`` placeholders, ``{{``/``}}`` for braces), how a value is
written as one argument (and a run's args in its start line), and :class:`MissingArg`. Calls
nothing of gitqueue but its errors and ``display``: the worker's runner and loops and the ``@loop``
decorator call it. Nothing ever passes through a shell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gitqueue.errors import GitqueueError
from gitqueue.validate import display

if TYPE_CHECKING:
    from gitqueue.queue import Run

SHOWN_ARGS = 1000  # characters of a task's args shown when its run starts
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.-]*)\}")


class MissingArg(GitqueueError):
    """A command placeholder names an argument the task does not have."""

    def __init__(self, message: str, *, placeholder: str = "", have: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.placeholder = placeholder
        self.have = have


def expand(argv: list[str], args: Mapping[str, Any]) -> list[str]:
    """Fill ``{name}`` / ``{a.b}`` placeholders of each argv item from ``args``.

    ``{{`` and ``}}`` stand for literal braces. Values are written as on a command line:
    numbers and strings as they are, booleans as true/false, lists and mappings as JSON.
    """

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        value: Any = args
        for part in match.group(1).split("."):
            if not isinstance(value, Mapping) or part not in value:
                names = tuple(sorted(map(str, args)))
                have = ", ".join(names) or "none"
                raise MissingArg(
                    f"placeholder {token} names an arg the task lacks (its args: {have})", placeholder=token, have=names
                )
            value = value[part]
        return as_argument(value)

    return [PLACEHOLDER.sub(fill, item) for item in argv]


def as_argument(value: Any) -> str:
    """One value written as one command-line argument."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def started_line(run: Run) -> str:
    """The log line of a run's start: its id, attempt and args (shortened, escapes shown)."""
    args = " ".join(f"{k}={as_argument(v)}" for k, v in run.args.items())
    args = args if len(args) <= SHOWN_ARGS else f"{args[:SHOWN_ARGS]}... ({len(args):,} characters)"
    args = args if args.isprintable() else display(args)  # a task's terminal escapes are shown, not sent
    return f"▶ {run.id} (attempt {run.attempt}) {args}"
