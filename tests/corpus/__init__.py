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

BOMB_25 = "args:\n  l0: &l0 [lol, lol]\n" + "".join(f"  l{i}: &l{i} [*l{i - 1}, *l{i - 1}]\n" for i in range(1, 25))
DEEP_ALIASES = "".join(f"l{i}: &l{i} [{'*l' + str(i - 1) if i else 1}]\n" for i in range(40)) + "args: {}\n"
MARKER = "# --- gitqueue: the lines below are written by gitqueue ---"
FORGED_ATTEMPTS = f"args: {{a: 1}}\n{MARKER}\nattempts: [1, 2]\n".encode()
FORGED_CLAIM = f"args: {{a: 1}}\n{MARKER}\nrun: {{token: abc, worker: w/0, claimed_at: soon}}\n".encode()
MARKER_IN_VALUE = f'args: {{note: "see\n{MARKER}\nbelow"}}\n'.encode()


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
        """The path as messages print it (bytes that are not UTF-8 as \\xNN, a newline as \\n)."""
        text = self.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return text.replace("\n", "\\n")


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
    # values PyYAML's constructors cannot build (they raise ValueError, AttributeError, ..., not YAMLError)
    Hostile(
        "timestamp-hello", "pending/stamp.yaml", b"args: {a: !!timestamp hello}\n", "cannot read 'hello' as !!timestamp"
    ),
    Hostile("int-abc", "pending/int-abc.yaml", b"args: {a: !!int abc}\n", "cannot read 'abc' as !!int"),
    Hostile("float-abc", "pending/float-abc.yaml", b"args: {a: !!float abc}\n", "cannot read 'abc' as !!float"),
    Hostile("bool-maybe", "pending/bool.yaml", b"args: {a: !!bool maybe}\n", "cannot read 'maybe' as !!bool"),
    Hostile(
        "5000-digits", "pending/digits.yaml", b"args: {a: 1}\npriority: " + b"9" * 5000 + b"\n", "5,000 characters"
    ),
    Hostile("hex-digits", "pending/hex.yaml", b"args: {seed: 0x" + b"f" * 5000 + b"}\n", "5,002 characters"),
    Hostile("huge-lease", "pending/lease.yaml", b"args: {a: 1}\nlease: " + b"9" * 400 + b"\n", "'lease' is too large"),
    # aliases: few enough, but expanding to millions of values; or to themselves
    Hostile("alias-bomb-25", "pending/bomb25.yaml", BOMB_25.encode(), "aliases repeat more than 100,000 values"),
    Hostile("recursive-alias", "pending/loop.yaml", b"args: &a {x: *a}\n", "a recursive structure"),
    Hostile("deep-by-aliases", "pending/deep-alias.yaml", DEEP_ALIASES.encode(), "counting what its aliases repeat"),
    # gitqueue's own records, forged or damaged by hand
    Hostile("forged-attempts", "pending/attempts.yaml", FORGED_ATTEMPTS, "'attempts' must be a list of mappings"),
    Hostile("forged-claim", "running/claimed.yaml", FORGED_CLAIM, "'run.claimed_at' must be a time", worker=False),
    Hostile("marker-in-value", "pending/marker.yaml", MARKER_IN_VALUE, "marker line sits inside a value"),
    Hostile(  # rich markup in a value: status must print it, not interpret it
        "markup", "pending/markup.yaml", b"args: {a: 1}\npriority: '[/red] [bold]'\n", "not str '[/red] [bold]'"
    ),
    # encodings and line ends
    Hostile("utf16", "pending/utf16.yaml", "args: {lr: 1}\n".encode("utf-16"), "UTF-16 text"),
    Hostile("bom-broken", "pending/bom-broken.yaml", b"\xef\xbb\xbfargs: {lr: 1\n", "expected ',' or '}'"),
    Hostile("crlf-wrong-type", "pending/crlf.yaml", b"args: {a: 1}\r\npriority: high\r\n", ":2:11: field 'priority'"),
    Hostile("nul-after-bom", "pending/bom-nul.yaml", b"\xef\xbb\xbfargs: {a: 1}\0\n", "binary file"),
    # odd names and links
    Hostile("newline-in-name", "pending/new\nline.yaml", b"args: {lr: 1}\n", "invalid task id"),
    Hostile("empty-id", "pending/.yaml", b"args: {lr: 1}\n", "invalid task id ''"),
    Hostile("id-too-long", f"pending/{'x' * 129}.yaml", b"args: {lr: 1}\n", "1 to 128"),
    Hostile("colon-in-id", "pending/a:b.yaml", b"args: {lr: 1}\n", "invalid task id 'a:b'"),
    Hostile("link-outside", "pending/passwd.yaml", expect="symbolic link", link_to="/etc/passwd"),
    Hostile("dangling-link", "pending/dangling.yaml", expect="symbolic link", link_to="../nowhere.yaml"),
    Hostile("link-as-folder", "pending/ab", expect="not a task file", link_to="../done"),
]

# Odd but valid: what a person's editor may write. Each must run like any task.
ODD_VALID = {
    "bom": b"\xef\xbb\xbfargs: {i: 1001}\n",
    "crlf": b"args: {i: 1002}\r\npriority: 0\r\n",
    "lone-cr": b"args: {i: 1003}\rtags: [cr]\r",
    "no-newline": b"args: {i: 1004}",
    "few-aliases": b"args: {i: 1005, a: &x [1, 2], b: *x}\n",
}


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
