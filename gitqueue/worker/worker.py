"""The worker loop: claim, run, report, repeat.

:class:`Worker` owns the loop: when to claim (its :class:`~gitqueue.worker.hand.Hand` reports
and claims in one push), when to reap, running each run with a lease
:class:`~gitqueue.worker.lease.Watch`, tallying outcomes and deciding when to stop. It calls the
:class:`~gitqueue.queue.Queue`'s public methods and the parts below it, each given what it
needs as arguments: the hand, the runner (by default a
:class:`~gitqueue.worker.runner.CommandRunner`), the signals and the lease watch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import IO

from gitqueue import leftovers
from gitqueue.errors import CacheDamaged, GitqueueError
from gitqueue.queue import Queue, Report, Run
from gitqueue.worker.command import started_line
from gitqueue.worker.hand import SUSPECTS, Hand
from gitqueue.worker.lease import TakenAway, Watch
from gitqueue.worker.options import EXIT_TASKS_FAILED, EXIT_WRONG_COMMAND, Options, Summary
from gitqueue.worker.runner import CommandRunner
from gitqueue.worker.signals import Signals
from gitqueue.worker.slots import Slots


class Worker:
    """Claims tasks from ``queue`` and runs each with ``runner`` until told to stop.

    ``runner(run, watch)`` does the work of one run and returns its Report (or None if
    the task was taken away while it ran); ``watch()`` must be called often by long
    runners: it keeps the lease alive and raises :class:`Stop` or ``TakenAway``.
    The default runner runs ``options.command`` as a child process.
    """

    def __init__(
        self,
        queue: Queue,
        options: Options,
        *,
        runner: Callable[[Run, Watch], Report | None] | None = None,
        log: IO[str] | None = None,
    ) -> None:
        self.queue = queue
        self.options = options
        self.log = log or sys.stderr
        self.summary = Summary()
        self.seconds: defaultdict[str, float] = defaultdict(float)  # where the time went, for GITQUEUE_STATS_FILE
        self.signals = Signals(self.say)  # set by SIGINT/SIGTERM: return the task and stop
        refuse_slots(runner, options)
        self.hand = Hand(
            queue, options, summary=self.summary, seconds=self.seconds, say=self.say, runs_everything=runner is not None
        )
        self.command = CommandRunner(options, worker=queue.worker, hand=self.hand, signals=self.signals, say=self.say)
        self.runner = runner or self.command
        self._last_reap = float("-inf")
        self.slots = Slots(self, pool=self.hand.pool) if options.slots > 1 or options.gpus else None
        queue.checks.tell = lambda problem: self.say(f"skipping {problem.message} (left as it is)")
        queue.store.tell = self.say  # a damaged cache, rebuilt
        if not options.command and not options.allow_task_cmd and runner is None:
            raise GitqueueError("no command to run: give one after --, or --allow-task-cmd to run tasks' own cmd")

    @property
    def signal(self) -> int | None:
        """The stop signal this worker got, if any."""
        return self.signals.received

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Work until the queue is drained (or the limits say stop); returns an exit code."""
        if warning := self.queue.head_warning():
            self.say(f"warning: {warning}")
        with self.signals.installed():
            try:
                self.hand.pace.start(self.queue, say=self.say)  # the budget and the fleet before any push
                code = self._loop() if self.slots is None else self.slots.run()
            except CacheDamaged:  # rebuilding did not help: give back what we hold before stopping
                with contextlib.suppress(GitqueueError):
                    self.hand.flush(claim=0, release=True)
                raise
            finally:
                self.hand.note()
                self.hand.pace.stop()
        elapsed = time.monotonic() - self.summary.started
        s = self.summary
        if code == 0 and s.failed:
            code = EXIT_TASKS_FAILED  # a script (or Slurm) must see that not all went well
        self.say(f"stopping: {s.done} done, {s.failed} failed, {s.lost} taken away, in {elapsed:.1f}s")
        write_stats(self)
        return code

    def _loop(self) -> int:
        hand, delay, idle_since = self.hand, 1.0, None
        while True:
            if self.signal is not None:
                hand.flush(claim=0, release=True)
                return 128 + self.signal
            claiming = hand.pace.due(held=len(hand.held), reported=bool(hand.reports))
            self._maybe_reap(notes=claiming)  # busy workers too: a finish usually hands them their next run
            if claiming and (turn := hand.pace.turn(held=len(hand.held))) > 0:  # under a push_budget, our turn
                self._pause(turn)  # nothing to run meanwhile; a signal ends the wait (see the loop's top)
                continue
            if claiming:
                hand.claim_next()
            if hand.catch_up():
                continue  # the push that went on beside the last run brought nothing: claim again now
            if not hand.held and hand.suspects:  # nothing more to try: every task tried lacks the arg
                return self._wrong_command()
            if not hand.held:
                hand.report_ended()  # never wait nor stop with ended runs not reported
                now = time.monotonic()
                idle_since = idle_since or now
                if self._idle(now - idle_since, delay):
                    return 0
                delay = min(delay * 2, self.options.poll_max)
                continue
            delay, idle_since = 1.0, None
            code = self._run_next()
            if code is not None:
                return code

    def _idle(self, waited: float, delay: float) -> bool:
        """Nothing in hand: True if it is time to stop, else wait a while (reaping after it)."""
        if not self.options.wait and (self.options.idle_timeout is None or waited >= self.options.idle_timeout):
            self.say("nothing to claim" + self._running_elsewhere())
            return True
        if waited == 0:
            patience = "" if self.options.wait else f" for up to {self.options.idle_timeout:g}s"
            self.say(f"nothing to claim; waiting for tasks{patience}")
        self._pause(min(delay, max(self.options.reap_every, 0.5)))
        self._maybe_reap(force=True)
        return False

    def _run_next(self) -> int | None:
        """Run the next run in hand; an exit code if the worker must stop now."""
        started = time.monotonic()
        report = self._execute(self.hand.held.popleft())
        self.seconds["run"] += time.monotonic() - started
        if report is None:  # taken away while it ran, or held back as a suspect: nothing to report
            if len(self.hand.suspects) >= SUSPECTS:
                return self._wrong_command()
            return None
        if report.outcome == "interrupted":
            self.hand.flush(claim=0, release=True)
            return self.command.stop_code or 128 + (self.signal or signal.SIGTERM)
        stop_code = self._count(report)
        if stop_code is not None:
            self.hand.flush(claim=0, release=True)
        return stop_code

    def _running_elsewhere(self) -> str:
        """For "nothing to claim": how many tasks other runs hold, and until when their leases run."""
        try:
            others = [run for run in self.queue.runs() if run["worker"] != self.queue.worker]
        except GitqueueError:
            return ""
        if not others:
            return ""
        ends = [run["lease_ends"] for run in others if run["lease_ends"]]
        until = f"; their leases run until {max(ends)} unless renewed" if ends else ""
        return f" ({len(others)} task{'s' * (len(others) != 1)} running elsewhere{until})"

    def _count(self, report: Report) -> int | None:
        """Tally a report; an exit code if the worker must stop now."""
        s = self.summary
        if report.outcome == "done":
            s.done += 1
            s.failures_in_a_row = 0
        else:
            s.failed += 1
            s.failures_in_a_row += 1
            limit = self.options.max_failures
            if limit and s.failures_in_a_row >= limit:
                self.say(f"{s.failures_in_a_row} failures in a row (--max-failures {limit}): is this machine broken?")
                return 1
        if self.options.max_tasks is not None and s.done + s.failed >= self.options.max_tasks:
            return 0
        return None

    def _wrong_command(self) -> int:
        """Every task tried lacks a placeholder: give them (and every held run) back untouched, and stop."""
        suspects = self.hand.suspects
        placeholders = sorted({missing.placeholder for _, missing in suspects})
        have = sorted({name for _, missing in suspects for name in missing.have})
        count = len(suspects)
        self.say(
            f"placeholder {', '.join(placeholders)} of the command names an arg that none of the {count} "
            f"task{'s' if count != 1 else ''} tried has (their args: {', '.join(have) or 'none'}): "
            "is the command right? Returning them untouched (no attempt spent) and stopping"
        )
        self.hand.flush(claim=0, release=True)
        return EXIT_WRONG_COMMAND

    def _maybe_reap(self, *, force: bool = False, notes: bool = False) -> None:
        """Every --reap-every seconds; and, with ``notes`` (we are about to claim), at once
        when a worker of this machine has died holding runs (its note says so: a look at a
        local folder, no git), so that its tasks are among those we claim."""
        now = time.monotonic()
        due = force or now - self._last_reap >= self.options.reap_every
        runs_folder = self.hand.runs_folder
        if not due and not (notes and leftovers.dead_runs(runs_folder, queue=self.queue.here)):
            return
        self._last_reap = now
        for message in leftovers.stop_leftovers(runs_folder, self.options.grace):
            self.say(message)
        for reaped in self.queue.reap_runs():
            self.say(
                f"{reaped.id}: {reaped.reason}; returned to the queue"
                + ("" if reaped.spent else " (never started: no attempt spent)")
            )

    # ------------------------------------------------------------ one run

    def heartbeat_every(self, lease: float) -> float:
        """Seconds between heartbeats of a run holding a ``lease`` of this many seconds (the
        one place the cadence is set: a pacer may stretch it to fit a push budget)."""
        return self.options.heartbeat or self.hand.pace.heartbeat_every(lease)

    def _watch(self, run: Run) -> Watch:
        return Watch(
            self.queue,
            run,
            every=self.heartbeat_every(run.lease),
            look_every=self.options.look_every,
            signals=self.signals,
            batched=lambda: bool(self.hand.held),
            give_back=self.hand.give_back,
        )

    def _execute(self, run: Run) -> Report | None:
        self.say(started_line(run))
        hand, watch = self.hand, self._watch(run)
        started = time.monotonic()
        report: Report | None = None
        try:
            if started - hand.held_since.pop(run.token, started) >= watch.every:
                # It waited in its batch, silent, for a heartbeat's interval or more: a reaper may
                # have given it away. Look (and keep its lease alive) before running it.
                watch.beat()
            hand.current = run
            hand.note()  # from now on it has started: if we die, its attempt is spent
            report = self.runner(run, watch)
            if report is not None and report.outcome != "interrupted":
                watch.settle(started)
            if report is not None:
                report = dataclasses.replace(report, lease_ref=watch.heartbeat is not None, args=run.args)
                hand.reports.append(report)  # ended, not reported yet: noted as started
        except TakenAway as exc:
            self.summary.lost += 1
            how = "its run had ended, nothing reported" if report is not None else "run stopped, nothing reported"
            self.say(f"{run.id}: {exc}; {how}")
            if watch.heartbeat is not None:  # a move by hand leaves the run's lease ref behind
                self.queue.store.drop_lease(run.token)
            return None
        finally:
            hand.current = None
            hand.note()
        if report is not None:
            took = time.monotonic() - started
            hand.pace.took(took)
            how = "" if report.exit_code is None else f" (exit {report.exit_code})"
            self.say(f"{'✓' if report.outcome == 'done' else '✗'} {run.id} {report.outcome}{how} in {took:.1f}s")
        return report

    # ------------------------------------------------------------ plumbing

    def say(self, message: str) -> None:
        print(f"[{self.queue.worker}] {message}", file=self.log, flush=True)

    def _pause(self, seconds: float) -> None:
        """Sleep while idle, waking early for a signal."""
        deadline = time.monotonic() + seconds
        self.seconds["idle"] += max(0.0, seconds)
        while self.signal is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def refuse_slots(runner: Callable[[Run, Watch], Report | None] | None, options: Options) -> None:
    """A runner of one's own runs in the worker's thread: one run at a time, no GPUs to share."""
    if runner is not None and (options.slots > 1 or options.gpus):
        raise GitqueueError(
            "a runner of your own (@gitqueue.loop, runner=) runs one task at a time: "
            "leave out slots and gpus, or start one worker per GPU"
        )


def write_stats(worker: Worker) -> None:
    """With GITQUEUE_STATS_FILE set (bench/ sets it), write a worker's counters there as JSON."""
    path = os.environ.get("GITQUEUE_STATS_FILE")
    if not path:
        return
    s, queue, store = worker.summary, worker.queue, worker.queue.store
    stats = {
        "done": s.done,
        "failed": s.failed,
        "lost": s.lost,
        "pushes": store.pushes,
        "rejected_pushes": store.rejected_pushes,
        "fetches": store.fetches,
        "heartbeat_pushes": store.heartbeat_pushes,
        "seconds": {**store.seconds, **worker.seconds, "backoff": queue.backed_off},
        "started": s.started,  # time.monotonic(): comparable across processes on one machine
        "ended": time.monotonic(),
    }
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(stats))
