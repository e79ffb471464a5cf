"""Finding the queue (``--queue``, ``GITQUEUE_QUEUE``, ``.gitqueue``) and its settings file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gitqueue.errors import GitqueueError, InvalidTask, QueueNotFound
from gitqueue.task import MAX_FIELD_INT, load_yaml
from gitqueue.urls import redact

CONFIG_FILE = ".gitqueue"
PATIENCE = 120.0  # seconds an unreachable remote is retried, unless GITQUEUE_PATIENCE says otherwise
EMBEDDED_REPO = ".gitqueue.git"
SETTINGS_FILE = "gitqueue.yaml"
FORMAT_VERSION = 1
DEFAULT_BRANCH = "main"  # a new queue's branch where the remote's HEAD names none


_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_BUDGET = re.compile(r"\s*(\d+)\s*/\s*(s|min|h)\s*")


@dataclass(frozen=True)
class PushBudget:
    """``push_budget: 6/min``: at most ``pushes`` pushes per ``seconds`` for the whole fleet,
    branch pushes and lease heartbeats together (forges cap pushes per repository)."""

    pushes: int
    seconds: float

    @property
    def rate(self) -> float:
        """Pushes per second."""
        return self.pushes / self.seconds

    def __str__(self) -> str:
        unit = next((name for name, seconds in _UNITS.items() if seconds == self.seconds), f"{self.seconds:g}s")
        return f"{self.pushes}/{unit}"

    @classmethod
    def parse(cls, value: object) -> PushBudget:
        """``N/s``, ``N/min`` or ``N/h`` with N a whole number of pushes, at least 1."""
        found = _BUDGET.fullmatch(value) if isinstance(value, str) else None
        if found is None:
            raise InvalidTask(SETTINGS_FILE, f"push_budget must look like 6/min (N/s, N/min or N/h), not {value!r}")
        pushes = int(found.group(1))
        if not 1 <= pushes <= MAX_FIELD_INT:
            raise InvalidTask(SETTINGS_FILE, f"push_budget must allow at least 1 push, not {value!r}")
        return cls(pushes, _UNITS[found.group(2)])


@dataclass(frozen=True)
class Settings:
    """The queue's ``gitqueue.yaml``: defaults that a task's own fields override, and the
    fleet's ``push_budget`` (None: no budget).

    A bad ``push_budget`` does not make the settings unreadable (the queue keeps working,
    without a budget): it is kept in ``problem`` for ``gitqueue validate`` and workers to say."""

    priority: int = 0
    max_attempts: int = 3
    lease: int = 600
    push_budget: PushBudget | None = None
    problem: str | None = None

    @classmethod
    def parse(cls, raw: bytes) -> Settings:
        data = load_yaml(raw, path=SETTINGS_FILE) or {}
        if not isinstance(data, dict):
            raise InvalidTask(SETTINGS_FILE, "queue settings must be a mapping")
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            raise InvalidTask(SETTINGS_FILE, "'defaults' must be a mapping")
        values: dict[str, Any] = {}
        for key in ("priority", "max_attempts", "lease"):
            if key in defaults:
                value = defaults[key]
                if not isinstance(value, int) or isinstance(value, bool):
                    raise InvalidTask(SETTINGS_FILE, f"defaults.{key} must be an integer, not {value!r}")
                low = -MAX_FIELD_INT if key == "priority" else 1
                if not low <= value <= MAX_FIELD_INT:
                    raise InvalidTask(SETTINGS_FILE, f"defaults.{key} must be between {low:,} and {MAX_FIELD_INT:,}")
                values[key] = value
        if data.get("push_budget") is not None:
            try:
                values["push_budget"] = PushBudget.parse(data["push_budget"])
            except InvalidTask as exc:
                values["problem"] = str(exc)
        return cls(**values)

    def render(self) -> bytes:
        head = "# gitqueue queue settings. Tasks live in pending/ running/ done/ failed/ cancelled/.\n"
        body = {
            "format": FORMAT_VERSION,
            "defaults": {"priority": self.priority, "max_attempts": self.max_attempts, "lease": self.lease},
        }
        if self.push_budget is not None:
            body["push_budget"] = str(self.push_budget)
        return (head + yaml.safe_dump(body, sort_keys=False)).encode()


def find_config(start: Path | None = None) -> Path | None:
    """The nearest ``.gitqueue`` file in ``start`` or a folder above it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class QueueRef:
    """Which queue: its URL and, where known, its branch (None: the remote's HEAD names it)."""

    url: str
    branch: str | None = None


def read_config(path: Path) -> str:
    """The queue URL a ``.gitqueue`` file names; relative paths are relative to the file."""
    return read_queue_ref(path).url


def read_queue_ref(path: Path) -> QueueRef:
    """The queue a ``.gitqueue`` file names: ``queue: URL`` and, if written, ``branch: NAME``."""
    data = load_yaml(path.read_bytes(), path=str(path))
    if not isinstance(data, dict) or not isinstance(data.get("queue"), str):
        raise QueueNotFound(f"{path}: expected a line 'queue: URL'")
    url = data["queue"]
    if "://" not in url and not Path(url).is_absolute() and ":" not in url.split("/", 1)[0]:
        url = str((path.parent / url).resolve())
    branch = data.get("branch")
    return QueueRef(url, branch if isinstance(branch, str) and branch else None)


def write_config(folder: Path, url: str, *, branch: str | None = None) -> Path:
    """Remember the queue in ``folder/.gitqueue``, never with a secret its URL holds."""
    path = folder / CONFIG_FILE
    body: dict[str, str] = {"queue": redact(url)}
    if branch:
        body["branch"] = branch
    path.write_text(
        "# Written by `gitqueue init`: the queue that gitqueue commands use in this folder.\n"
        + yaml.safe_dump(body, sort_keys=False)
    )
    return path


def resolve_queue(explicit: str | None = None) -> QueueRef:
    """``--queue``, else ``$GITQUEUE_QUEUE``, else the nearest ``.gitqueue`` file.

    ``$GITQUEUE_BRANCH`` names the branch; else a ``.gitqueue`` file's own ``branch:``;
    else none, and the remote's HEAD decides.
    """
    branch = os.environ.get("GITQUEUE_BRANCH") or None
    if explicit:
        return QueueRef(explicit, branch)
    if os.environ.get("GITQUEUE_QUEUE"):
        return QueueRef(os.environ["GITQUEUE_QUEUE"], branch)
    config = find_config()
    if config is None:
        raise QueueNotFound("no queue given: pass --queue URL, set GITQUEUE_QUEUE, or run `gitqueue init` here first")
    found = read_queue_ref(config)
    return QueueRef(found.url, branch or found.branch)


def resolve_queue_url(explicit: str | None = None) -> str:
    """``--queue``, else ``$GITQUEUE_QUEUE``, else the nearest ``.gitqueue`` file."""
    return resolve_queue(explicit).url


cli_patience: float | None = None  # `gitqueue --patience S`, while that command runs


def patience() -> float:
    """Seconds to keep trying an unreachable remote: ``--patience``, else ``$GITQUEUE_PATIENCE``,
    else 120."""
    if cli_patience is not None:
        return cli_patience
    text = os.environ.get("GITQUEUE_PATIENCE", "").strip()
    if not text:
        return PATIENCE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise GitqueueError(f"GITQUEUE_PATIENCE={text!r}: expected a number of seconds, 0 or more")
    return value
