"""Hostile and broken task files, generated (never committed: a 50 MB file, odd names, a link).

Each case is a file a person (or an attacker with push access) could put in a queue, and the
words every checker must say about it: ``gitqueue validate``, the server hook and a worker.
``write_corpus(clone)`` writes them all into a work tree; a test then commits and pushes them
with plain git.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024

ALIAS_BOMB = """args:
  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
  f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
  g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
  h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
  i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@dataclass(frozen=True)
class Hostile:
    """One hostile file: where it goes, what it holds, and what a checker says (``expect``)."""

    name: str
    path: str
    content: bytes = b""
    expect: str = ""
    link_to: str | None = None  # a symbolic link to this target instead of content
    big: bool = False
    worker: bool = True  # a worker looks there (pending/ and the top folder) and reports it

    @property
    def shown(self) -> str:
        """The path as messages print it (bytes that are not UTF-8 as \\xNN)."""
        return self.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


CASES = [
    Hostile("invalid-yaml", "pending/broken-yaml.yaml", b"args: {lr: 0.01\npriority: 3\n", "expected ',' or '}'"),
    Hostile("not-a-mapping", "pending/a-list.yaml", b"- lr: 0.01\n- lr: 0.02\n", "must be a mapping"),
    Hostile("empty", "pending/empty.yaml", b"", "but it is empty"),
    Hostile(
        "wrong-type", "pending/wrong-type.yaml", b"args: {lr: 0.01}\npriority: high\n", "'priority' must be an integer"
    ),
    Hostile("args-not-mapping", "pending/args-list.yaml", b"args: [0.01, 32]\n", "'args' must be a mapping"),
    Hostile("unknown-field", "pending/typo.yaml", b"args: {lr: 0.01}\npriorty: 3\n", "unknown field 'priorty'"),
    Hostile("no-args", "pending/no-args.yaml", b"priority: 3\n", "missing field 'args'"),
    Hostile("forged-run", "pending/forged.yaml", b"args: {}\nrun: {token: abc}\n", "is written by gitqueue"),
    Hostile("duplicate-key", "pending/dup-key.yaml", b"args: {lr: 1}\nargs: {lr: 2}\n", "duplicate key 'args'"),
    Hostile("alias-bomb", "pending/alias-bomb.yaml", ALIAS_BOMB.encode(), "aliases"),
    Hostile("deep-nesting", "pending/deep.yaml", b"args: {x: " + b"[" * 200 + b"]" * 200 + b"}\n", "nested deeper"),
    Hostile("binary-junk", "pending/junk.yaml", bytes(range(256)) * 4, "binary file"),
    Hostile("not-utf8", "pending/latin1.yaml", b"args: {name: caf\xe9}\n", "not UTF-8"),
    Hostile("dotdot-id", "pending/...yaml", b"args: {lr: 1}\n", "invalid task id '..'"),
    Hostile("id-with-space", "pending/my task.yaml", b"args: {lr: 1}\n", "invalid task id 'my task'"),
    Hostile("unicode-hyphen", "pending/lr0.01\u2010bs32.yaml", b"args: {lr: 1}\n", "invalid task id"),
    Hostile("cyrillic-a", "pending/t\u0430sk.yaml", b"args: {lr: 1}\n", "invalid task id"),
    Hostile("name-not-utf8", "pending/\udcff\udcfe.yaml", b"args: {lr: 1}\n", "invalid task id"),  # bytes ff fe
    Hostile("slash-in-id", "pending/sweeps/lr0.1.yaml", b"args: {lr: 0.1}\n", "belongs in pending/"),
    Hostile("nested-too-deep", "pending/a/b/c.yaml", b"args: {lr: 1}\n", "nested too deep"),
    Hostile("yml-extension", "pending/short.yml", b"args: {lr: 1}\n", "end in .yaml"),
    Hostile("symlink", "pending/link.yaml", expect="symbolic link", link_to="../gitqueue.yaml"),
    Hostile("at-the-root", "lr0.5.yaml", b"args: {lr: 0.5}\n", "outside the state folders"),
    Hostile("in-a-typo-folder", "pendng/lr0.6.yaml", b"args: {lr: 0.6}\n", "outside the state folders", worker=False),
    Hostile("50-megabytes", "pending/huge.yaml", expect="at most 1,048,576 are read", big=True),
]


# A submodule entry (a commit id, no blob) where a task file belongs: git can carry it, but
# there is no file to write on disk, so it is staged with ``stage_submodule`` after ``git add``.
SUBMODULE = Hostile("submodule", "pending/submodule.yaml", expect="a submodule, not a task file")


def stage_submodule(run: Callable[..., object]) -> Hostile:
    """Stage SUBMODULE in a clone (``run`` is the clone's git); returns the case."""
    run("update-index", "--add", "--cacheinfo", "160000," + "1" * 40 + "," + SUBMODULE.path)
    return SUBMODULE


def content(case: Hostile) -> bytes:
    if case.big:  # valid-looking YAML, just far too much of it
        line = b"# padding padding padding padding padding padding padding padding padding\n"
        return b"args: {lr: 0.01}\n" + line * (50 * MB // len(line))
    return case.content


def write_corpus(top: Path, cases: list[Hostile] | None = None) -> list[Hostile]:
    """Write ``cases`` (default: all) into the work tree ``top``; returns them."""
    chosen = CASES if cases is None else cases
    for case in chosen:
        target = top / case.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if case.link_to is not None:
            os.symlink(case.link_to, target)
        else:
            target.write_bytes(content(case))
    return list(chosen)


def small() -> list[Hostile]:
    """Every case but the 50 MB one (for tests that push over slower transports)."""
    return [case for case in CASES if not case.big]
