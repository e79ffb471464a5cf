"""Sweeps as data: fixed args, a grid, random samples and repeats, shared by the CLI and the API.

A :class:`Sweep` turns into the args of its tasks, always in the same order: each grid point
(the cartesian product of the axes, in the order given) gets every sample, and each of those
is repeated with ``seed: 0..N-1`` (or another ``repeat_key``). Samples are drawn once, from a
:class:`random.Random` seeded with ``seed``, so the same sweep with the same seed makes the
same tasks on any machine. Without a seed one is chosen and named in the commit subject.

Values written on a command line are read by :func:`parse_value`, here and nowhere else, so
that ``--grid lr=1e-3`` and ``Queue.submit([{"args": {"lr": 1e-3}}])`` store the same float.
This module only builds args: it reads no queue and calls nothing below it but the task's
YAML reader.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitqueue.errors import InvalidSweep, InvalidTask
from gitqueue.task import load_yaml

# Numbers as Python and YAML 1.2 write them; YAML 1.1 (PyYAML) reads 1e-3 as a string.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_INT = re.compile(r"[-+]?\d+")
SIGNIFICANT = 6  # digits a sampled float keeps: readable args and ids, and far finer than any search needs
KINDS = ("uniform", "loguniform", "int", "choice")


def parse_value(text: str) -> Any:
    """A value written on a command line: ``32`` an int, ``1e-3`` and ``0.1`` floats, ``true`` a
    bool, ``[1, 2]`` a list, anything else the string itself."""
    stripped = text.strip()
    if _INT.fullmatch(stripped):
        return int(stripped)
    if _NUMBER.fullmatch(stripped):
        return float(stripped)
    try:
        value = load_yaml(text, path="<command line>")
    except InvalidTask:
        return text
    return text if value is None and text != "null" else value


def _number(text: str, spec: str, *, what: str) -> float:
    value = parse_value(text)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidSweep(f"{spec!r}: {what} {text!r} is not a number")
    return value


@dataclass(frozen=True)
class Distribution:
    """Where one sampled arg's values come from: ``uniform:LOW:HIGH``, ``loguniform:LOW:HIGH``
    (LOW > 0), ``int:LOW:HIGH`` (both ends included) or ``choice:A,B,C``."""

    kind: str
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def draw(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return self.choices[rng.randrange(len(self.choices))]
        if self.kind == "int":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "loguniform":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return min(max(float(f"{value:.{SIGNIFICANT}g}"), self.low), self.high)  # rounded, never beyond a bound

    def contains(self, value: Any) -> bool:
        """True if ``value`` is one this distribution could give."""
        if self.kind == "choice":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int if self.kind == "int" else int | float):
            return False
        return self.low <= value <= self.high

    @property
    def spec(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(str(c) for c in self.choices)
        return f"{self.kind}:{_short(self.low)}:{_short(self.high)}"


def _short(number: float) -> str:
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else f"{number:g}"


def parse_distribution(text: str, *, spec: str | None = None) -> Distribution:
    """``loguniform:1e-5:1e-1`` -> a Distribution; InvalidSweep quoting ``spec`` if it is wrong."""
    spec = spec or text
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise InvalidSweep(f"{spec!r}: unknown distribution {kind!r} (use {', '.join(KINDS)})")
    if kind == "choice":
        return Distribution("choice", choices=tuple(_values(rest, spec)))
    bounds = rest.split(":")
    if len(bounds) != 2 or not all(b.strip() for b in bounds):
        raise InvalidSweep(f"{spec!r}: expected {kind}:LOW:HIGH")
    low, high = (_number(b, spec, what=name) for b, name in zip(bounds, ("low", "high"), strict=True))
    if low > high:
        raise InvalidSweep(f"{spec!r}: low {bounds[0]} is above high {bounds[1]}")
    if kind == "loguniform" and low <= 0:
        raise InvalidSweep(f"{spec!r}: loguniform needs bounds above 0")
    if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
        raise InvalidSweep(f"{spec!r}: int needs whole-number bounds")
    return Distribution(kind, low=low, high=high)


def _values(text: str, spec: str) -> list[Any]:
    """``0.1,0.01`` -> ``[0.1, 0.01]``; refuses an empty list or an empty value."""
    parts = text.split(",")
    if not text.strip() or any(not part.strip() for part in parts):
        raise InvalidSweep(f"{spec!r}: empty value (expected KEY=V1,V2,... with no empty values)")
    return [parse_value(part) for part in parts]


def _key_and_rest(spec: str, expected: str) -> tuple[str, str]:
    key, sep, rest = spec.partition("=")
    if not sep or not key.strip():
        raise InvalidSweep(f"{spec!r}: expected {expected}")
    return key.strip(), rest


def parse_axis(spec: str) -> tuple[str, list[Any]]:
    """``lr=0.1,0.01`` -> ``("lr", [0.1, 0.01])``."""
    key, rest = _key_and_rest(spec, "KEY=V1,V2,...")
    return key, _values(rest, spec)


def parse_sample(spec: str) -> tuple[str, Distribution]:
    """``lr=loguniform:1e-5:1e-1`` -> ``("lr", Distribution(...))``."""
    key, rest = _key_and_rest(spec, "KEY=DISTRIBUTION:... (e.g. lr=loguniform:1e-5:1e-1)")
    return key, parse_distribution(rest, spec=spec)


def parse_fixed(specs: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.01", "bs=32"]`` -> ``{"lr": 0.01, "bs": 32}``, refusing a key given twice."""
    fixed: dict[str, Any] = {}
    for spec in specs:
        key, rest = _key_and_rest(spec, "KEY=VALUE")
        if key in fixed:
            raise InvalidSweep(f"{spec!r}: {key!r} is given twice")
        fixed[key] = parse_value(rest)
    return fixed


def _keyed(specs: Sequence[str], parse: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        key, value = parse(spec)
        if key in out:
            raise InvalidSweep(f"{spec!r}: {key!r} is given twice")
        out[key] = value
    return out


@dataclass(frozen=True)
class Sweep:
    """Fixed args, grid axes, sampled args and repeats; :meth:`args` lists each task's args.

    >>> Sweep(grid={"lr": [0.1, 0.01]}, sample={"drop": "uniform:0:0.5"}, samples=2, seed=0).args()  # doctest: +SKIP
    """

    fixed: Mapping[str, Any] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    sample: Mapping[str, Any] = field(default_factory=dict)  # Distribution, or its spec as text
    samples: int | None = None
    seed: int | None = None
    repeat: int | None = None
    repeat_key: str = "seed"

    def __post_init__(self) -> None:
        sample = {
            k: parse_distribution(v, spec=f"{k}={v}") if isinstance(v, str) else v for k, v in self.sample.items()
        }
        object.__setattr__(self, "sample", sample)
        object.__setattr__(self, "grid", {k: list(v) for k, v in self.grid.items()})
        for key, values in self.grid.items():
            if not values:
                raise InvalidSweep(f"grid axis {key!r} has no values")
        if self.samples is not None and self.samples < 1:
            raise InvalidSweep(f"samples must be at least 1, not {self.samples}")
        if self.samples is not None and not sample:
            raise InvalidSweep("samples needs at least one sampled arg (--sample KEY=DISTRIBUTION)")
        if self.repeat is not None and self.repeat < 1:
            raise InvalidSweep(f"repeat must be at least 1, not {self.repeat}")
        self._check_keys()
        if sample and self.seed is None:
            object.__setattr__(self, "seed", secrets.randbelow(2**31))  # named in the subject: redo it with --seed

    def _check_keys(self) -> None:
        seen: dict[str, str] = {}
        keys = [("fixed", k) for k in self.fixed] + [("grid", k) for k in self.grid]
        keys += [("sample", k) for k in self.sample]
        keys += [("repeat", self.repeat_key)] if self.repeat else []
        for where, key in keys:
            if not isinstance(key, str) or not key:
                raise InvalidSweep(f"arg names must be non-empty strings, not {key!r}")
            if key in seen:
                raise InvalidSweep(f"arg {key!r} is given twice (as {seen[key]} and as {where})")
            seen[key] = where

    @classmethod
    def from_specs(
        cls,
        *,
        fixed: Sequence[str] = (),
        grid: Sequence[str] = (),
        sample: Sequence[str] = (),
        samples: int | None = None,
        seed: int | None = None,
        repeat: int | None = None,
        repeat_key: str | None = None,
    ) -> Sweep:
        """A sweep from command-line specs (``lr=0.1,0.01``, ``lr=loguniform:1e-5:1e-1``)."""
        if repeat_key is not None and repeat is None:
            raise InvalidSweep("--repeat-key names the arg of --repeat N: give --repeat too")
        return cls(
            fixed=parse_fixed(fixed),
            grid=_keyed(grid, parse_axis),
            sample=_keyed(sample, parse_sample),
            samples=samples,
            seed=seed,
            repeat=repeat,
            repeat_key=repeat_key or "seed",
        )

    @property
    def empty(self) -> bool:
        """True if the sweep names no grid, sample or repeat (then it is at most one task)."""
        return not (self.grid or self.sample or self.repeat)

    def draws(self) -> list[dict[str, Any]]:
        """The sampled args, ``samples`` of them (one empty mapping when nothing is sampled)."""
        if not self.sample:
            return [{}]
        rng = random.Random(self.seed)
        return [{key: dist.draw(rng) for key, dist in self.sample.items()} for _ in range(self.samples or 1)]

    def args(self) -> list[dict[str, Any]]:
        """Every task's args: grid points x samples x repeats, always in the same order."""
        draws = self.draws()
        repeats = [{self.repeat_key: r} for r in range(self.repeat)] if self.repeat else [{}]
        out = []
        for point in itertools.product(*self.grid.values()):
            grid_args = dict(zip(self.grid, point, strict=True))
            for drawn in draws:
                for extra in repeats:
                    out.append({**self.fixed, **grid_args, **drawn, **extra})
        return out

    def subject(self, count: int) -> str:
        """The commit subject of its submit: how many tasks and what made them."""
        what = []
        if self.grid:
            what.append("grid " + " x ".join(self.grid))
        if self.sample:
            spaces = ", ".join(f"{k}~{d.spec}" for k, d in self.sample.items())
            what.append(f"{self.samples or 1} samples of {spaces} (seed {self.seed})")
        if self.repeat:
            what.append(f"repeat {self.repeat} ({self.repeat_key})")
        return f"submit {count} tasks: " + "; ".join(what) if what else f"submit {count} tasks"
