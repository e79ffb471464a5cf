"""How far a sweep has come and how long the rest will take: for ``status`` and ``report``.

The rate is measured over the last runs that ended (done, failed or reaped), up to now, so a
fleet that stopped shows a falling rate instead of the speed it once had (a drained queue
shows the pace it had while it ran). Time left is the
tasks still to run (pending and running) at that rate; it says nothing while no run has
ended yet, and zero once nothing is left.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

RATE_WINDOW = 100  # runs ended that the rate is measured over
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
        rate = "no run ended yet" if self.rate is None else f"{format_rate(self.rate)}"
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


__all__ = ["ENDED", "Progress", "estimate", "format_duration", "format_rate", "utc"]
