"""How far a sweep has come and how long the rest will take: for ``status`` and ``report``.

The rate is measured over the last runs that ended (done, failed or reaped), up to now, so a
fleet that stopped shows a falling rate instead of the speed it once had (a drained queue
shows the pace it had while it ran). Time left is the
tasks still to run (pending and running) at that rate; it says nothing while no run has
ended yet, and zero once nothing is left.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gitqueue import history

if TYPE_CHECKING:
    from rich.console import Console

    from gitqueue.queue import Queue

RATE_WINDOW = 100  # runs ended that the rate is measured over
RATE_COMMITS = 200  # the branch's last commits that ``status`` reads the pace from
ENDED = frozenset({"done", "failed", "reaped"})  # attempt outcomes that took a run to its end


@dataclass(frozen=True)
class Progress:
    """Counts and the estimate made from them."""

    finished: int  # done, failed or cancelled: nothing more will run
    remaining: int  # pending or running
    total: int
    rate: float | None  # runs ended per second, lately
    eta: float | None  # seconds left at that rate (0 when nothing is left)

    @property
    def fraction(self) -> float:
        return self.finished / self.total if self.total else 1.0

    def describe(self) -> str:
        """``1.5 tasks/s, about 3m20s left`` (or what is known of it)."""
        if self.rate is not None:
            rate = format_rate(self.rate)
        else:  # runs may have ended within one second of each other: commits keep whole seconds
            rate = "rate not known yet" if self.finished else "no run ended yet"
        if self.remaining == 0:
            return f"{rate}, nothing left to run"
        left = "time left unknown" if self.eta is None else f"about {format_duration(self.eta)} left"
        return f"{rate}, {left}"


def estimate(counts: Mapping[str, int], ended: Sequence[float], *, now: float, window: int = RATE_WINDOW) -> Progress:
    """The progress of a queue with ``counts`` per state, whose runs ended at times ``ended``."""
    remaining = counts.get("pending", 0) + counts.get("running", 0)
    finished = counts.get("done", 0) + counts.get("failed", 0) + counts.get("cancelled", 0)
    recent = sorted(ended)[-window:]
    until = now if remaining else (recent[-1] if recent else now)  # a drained queue: its pace while it ran
    rate = None
    if len(recent) >= 2 and until > recent[0]:
        rate = (len(recent) - 1) / (until - recent[0])
    eta = 0.0 if remaining == 0 else (remaining / rate if rate else None)
    return Progress(finished=finished, remaining=remaining, total=finished + remaining, rate=rate, eta=eta)


def format_rate(rate: float) -> str:
    if rate >= 0.1:
        return f"{rate:.2g} tasks/s" if rate < 10 else f"{rate:.0f} tasks/s"
    if rate * 60 >= 0.1:
        return f"{rate * 60:.2g} tasks/min"
    return f"{rate * 3600:.2g} tasks/h"


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def utc(moment: float) -> str:
    """A timestamp as plotting wants it: UTC, to the millisecond, without a zone."""
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def queue_status(queue: Queue) -> dict[str, Any]:
    """``queue.status()`` and its ``progress``: finished, remaining, total, rate (runs ended per
    second, from the branch's last commits) and eta (seconds)."""
    info = queue.status()
    commits = history.recent_commits(queue.store, info["tip"], RATE_COMMITS) if info.get("tip") else []
    info["progress"] = asdict(estimate(info["counts"], history.ended_runs(commits), now=queue.clock()))
    return info


def status_line(info: Mapping[str, Any], *, now: float) -> str:
    """One line for a log: the time, the counts and the estimate."""
    counts = "  ".join(f"{state} {n}" for state, n in info["counts"].items())
    prog = Progress(**info["progress"])
    done = f"{prog.finished}/{prog.total} finished"
    return f"{utc(now)[:19].replace(' ', 'T')}Z  {counts}  (total {info['total']})  {done}, {prog.describe()}"


def watch_lines(
    queue: Queue,
    *,
    interval: float,
    emit: Callable[[str], None],
    sleep: Callable[[float], None] | None = None,
    rounds: int | None = None,
) -> None:
    """``status --watch`` off a terminal: a line each time the counts, the running tasks or
    the invalid files change (looked at every ``interval`` seconds, ``rounds`` times)."""
    last: tuple[object, ...] | None = None
    done = 0
    while rounds is None or done < rounds:
        if done:
            (sleep or time.sleep)(interval)  # time.sleep as it is now, not as it was at import
        done += 1
        info = queue_status(queue)
        key = (tuple(info["counts"].items()), tuple(r["id"] for r in info["running"]), len(info["invalid"]))
        if key != last:
            emit(status_line(info, now=queue.clock()))
            last = key


Report = Callable[[str, int, "int | None"], None]  # (what, done so far, total or None)


@contextmanager
def bars(console: Console) -> Iterator[Report | None]:
    """A function that shows ``(what, done, total)`` as a bar per ``what`` on ``console``, if
    it is a terminal (None elsewhere: a log or a pipe shows nothing). The bars go at the end."""
    if not console.is_terminal:
        yield None
        return
    from rich import progress as bar

    columns = (bar.SpinnerColumn(), bar.TextColumn("{task.description}"), bar.BarColumn(), bar.MofNCompleteColumn(),
               bar.TimeElapsedColumn())  # fmt: skip
    with bar.Progress(*columns, console=console, transient=True) as shown:
        ids: dict[str, Any] = {}

        def update(what: str, done: int, total: int | None) -> None:
            if what not in ids:
                ids[what] = shown.add_task(what, total=total)
            shown.update(ids[what], completed=done, total=total, refresh=True)  # seen at once, not at the next tick

        yield update


@contextmanager
def on_terminal(queue: Queue, console: Console) -> Iterator[None]:
    """Show the queue's long operations (``Queue.on_progress``) as bars on a terminal."""
    with bars(console) as update:
        queue.on_progress = update
        try:
            yield
        finally:
            queue.on_progress = None


@contextmanager
def counting(console: Console, what: str) -> Iterator[Callable[[int], None] | None]:
    """A function that shows a count of ``what`` on a terminal (None elsewhere)."""
    with bars(console) as update:
        yield None if update is None else (lambda n: update(what, n, None))


__all__ = [
    "ENDED",
    "Progress",
    "bars",
    "counting",
    "estimate",
    "format_duration",
    "format_rate",
    "on_terminal",
    "queue_status",
    "status_line",
    "utc",
    "watch_lines",
]
