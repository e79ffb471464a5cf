"""Figures as Markdown: one table per part, the targets of issue 5, and the machine."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.1f} ms"


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class Section:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        if self.rows:
            out.append("| " + " | ".join(self.columns) + " |")
            out.append("|" + "|".join("---" for _ in self.columns) + "|")
            out += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in self.rows]
            out.append("")
        out += [f"{note}" for note in self.notes]
        if self.notes:
            out.append("")
        return "\n".join(out)


@dataclass
class Target:
    what: str
    measured: str
    met: bool | None  # None: not measured in this run


@dataclass
class Report:
    machine: dict[str, str]
    command: str
    sections: list[Section] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def section(self, title: str, columns: list[str]) -> Section:
        section = Section(title, columns)
        self.sections.append(section)
        return section

    def target(self, what: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(what, measured, met))

    def markdown(self) -> str:
        m = self.machine
        out = [
            "# gitqueue benchmark results",
            "",
            f"- date: {m['date']}",
            f"- machine: {m['nproc']} cores, {m['cpu']}, {m['memory']}",
            f"- git {m['git']}, Python {m['python']}, gitqueue {m['gitqueue']} (commit {m['commit']})",
            f"- command: `{self.command}`, took {m.get('took', '?')}",
            f"- load average before → after: {m.get('load', '?')} (other work on the machine skews figures)",
            "",
        ]
        if self.failures:
            out += ["**Parts that failed:**", ""] + [f"- {f}" for f in self.failures] + [""]
        if self.targets:
            out += ["## Targets (issue 5)", "", "| target | measured | met |", "|---|---|---|"]
            for t in self.targets:
                verdict = "-" if t.met is None else ("yes" if t.met else "**no**")
                out.append(f"| {t.what} | {t.measured} | {verdict} |")
            out.append("")
        out += ["## Figures", ""]
        out += [s.markdown() for s in self.sections]
        return "\n".join(out).rstrip() + "\n"
