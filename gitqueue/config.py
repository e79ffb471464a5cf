"""Finding the queue (``--queue``, ``GITQUEUE_QUEUE``, ``.gitqueue``) and its settings file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gitqueue.errors import InvalidTask, QueueNotFound
from gitqueue.task import MAX_FIELD_INT, load_yaml

CONFIG_FILE = ".gitqueue"
EMBEDDED_REPO = ".gitqueue.git"
SETTINGS_FILE = "gitqueue.yaml"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Settings:
    """The queue's ``gitqueue.yaml``: defaults that a task's own fields override."""

    priority: int = 0
    max_attempts: int = 3
    lease: int = 600

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
        return cls(**values)

    def render(self) -> bytes:
        head = "# gitqueue queue settings. Tasks live in pending/ running/ done/ failed/ cancelled/.\n"
        body = {
            "format": FORMAT_VERSION,
            "defaults": {"priority": self.priority, "max_attempts": self.max_attempts, "lease": self.lease},
        }
        return (head + yaml.safe_dump(body, sort_keys=False)).encode()


def find_config(start: Path | None = None) -> Path | None:
    """The nearest ``.gitqueue`` file in ``start`` or a folder above it."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_FILE
        if candidate.is_file():
            return candidate
    return None


def read_config(path: Path) -> str:
    """The queue URL a ``.gitqueue`` file names; relative paths are relative to the file."""
    data = load_yaml(path.read_bytes(), path=str(path))
    if not isinstance(data, dict) or not isinstance(data.get("queue"), str):
        raise QueueNotFound(f"{path}: expected a line 'queue: URL'")
    url = data["queue"]
    if "://" not in url and not Path(url).is_absolute() and ":" not in url.split("/", 1)[0]:
        url = str((path.parent / url).resolve())
    return url


def write_config(folder: Path, url: str) -> Path:
    path = folder / CONFIG_FILE
    path.write_text(
        "# Written by `gitqueue init`: the queue that gitqueue commands use in this folder.\n"
        + yaml.safe_dump({"queue": url}, sort_keys=False)
    )
    return path


def resolve_queue_url(explicit: str | None = None) -> str:
    """``--queue``, else ``$GITQUEUE_QUEUE``, else the nearest ``.gitqueue`` file."""
    if explicit:
        return explicit
    if os.environ.get("GITQUEUE_QUEUE"):
        return os.environ["GITQUEUE_QUEUE"]
    config = find_config()
    if config is None:
        raise QueueNotFound("no queue given: pass --queue URL, set GITQUEUE_QUEUE, or run `gitqueue init` here first")
    return read_config(config)
