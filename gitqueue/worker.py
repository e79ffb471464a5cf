"""The worker loop: claim, run, report, repeat.

A :class:`Worker` takes one task at a time. A running task is watched while its
command runs: the run's lease is kept alive by heartbeats pushed to a ref of the run's
own (``refs/gitqueue/leases/<token>``, never the queue branch), and at each heartbeat
the worker checks that it still holds the task, stopping the command if a person
cancelled it or a reaper handed it on. Finishing a task and claiming the next share one
commit and one push.

Commands are argv lists: ``{name}`` and ``{a.b}`` in an argument are replaced by the
task's args, and nothing ever passes through a shell.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import dataclasses
import errno
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from gitqueue import leftovers
from gitqueue.errors import CacheDamaged, GitqueueError, InvalidTask, LostRace, NotHeld, TaskNotFound
from gitqueue.queue import ERROR_TAIL, Queue, Report, Run
from gitqueue.task import MAX_FILE_BYTES, State, Task, load_yaml, now_iso, result_problem
from gitqueue.validate import display

# Signals that stop a worker: its runs go back to pending without spending an attempt.
# SIGUSR1 is the warning Slurm sends before a job's time limit (``--signal=B:USR1@120``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_.-]*)\}")
EXIT_NO_COMMAND = 127
EXIT_WRONG_COMMAND = 2  # bad usage: the worker's command names an arg no task it tried has
SHOWN_ARGS = 1000  # characters of a task's args shown when its run starts
SUSPECTS = 3  # tasks in a row lacking a placeholder, before any had it: the command is wrong, not the tasks
# Linux refuses to start a command with one argv item or environment string longer than this
# (MAX_ARG_STRLEN, "NAME=value" and its NUL included): E2BIG, "Argument list too long".
ARG_STRING_LIMIT = 128 * 1024
EXIT_TASKS_FAILED = 7  # the worker ended as asked, but some of the tasks it ran failed


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
        return _as_argument(value)

    return [PLACEHOLDER.sub(fill, item) for item in argv]


def _as_argument(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


@dataclass
class Options:
    """How a worker behaves (the flags of ``gitqueue work``)."""

    command: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    max_tasks: int | None = None
    idle_timeout: float | None = None  # keep polling this long when idle (None: exit at once)
    wait: bool = False  # keep polling for ever
    max_failures: int | None = None  # stop after this many failures in a row (None or 0: never)
    allow_task_cmd: bool = False  # run a task's own `cmd` (whoever can push gains code execution)
    log_dir: Path = Path("gitqueue-logs")
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL when stopping a command
    heartbeat: float | None = None  # seconds between heartbeats (default: a third of the lease)
    reap_every: float = 30.0  # seconds between looks for runs whose lease ran out
    look_every: float = 3.0  # seconds between looks (fetches) for a cancel of the running task
    poll_max: float = 30.0  # longest wait between polls of an idle queue
    max_batch: int = 64  # short tasks: hold up to this many claims, report them in one push
    batch_seconds: float = 1.0  # size a batch to take about this long (longer while pushes collide)
    task_timeout: float | None = None  # wall-clock seconds a run may take (a task's `timeout` wins)


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    lost: int = 0  # cancelled, reaped or requeued under us
    failures_in_a_row: int = 0
    started: float = field(default_factory=time.monotonic)


class Stop(Exception):
    """Raised inside a run when the worker must stop (a signal arrived)."""


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
        self.runner = runner or self._run_command
        self.custom_runner = runner is not None
        self.in_process = False  # a runner works in this thread: a signal interrupts it (KeyboardInterrupt)
        self.log = log or sys.stderr
        self.summary = Summary()
        self.held: deque[Run] = deque()  # claimed in a batch, not started yet
        self._held_since: dict[str, float] = {}  # run token -> when it was claimed (monotonic)
        self.reports: list[Report] = []  # runs that ended, not reported yet
        self._seconds_per_task: float | None = None  # moving average: sizes the next batch
        self._batch_seconds = options.batch_seconds  # grows while our pushes lose races
        self._lost_tries, self._retry_at = 0, 0.0  # one-try flushes lost in a row; next try not before
        self.seconds: defaultdict[str, float] = defaultdict(float)  # where the time went, for GITQUEUE_STATS_FILE
        self._batch, self._drained = 0, False  # runs in hand after the last claim; it got fewer than asked
        self.signal: int | None = None  # set by SIGINT/SIGTERM: return the task and stop
        self.stop_code: int | None = None  # set when the worker itself is broken
        self._last_reap = float("-inf")
        self._runs_folder = queue.runs_folder  # what our commands are, and what we hold (see leftovers)
        self._holdings = leftovers.Holdings(self._runs_folder, queue=queue.here, worker=queue.worker)
        self._current: Run | None = None  # the run under way
        self._stopping: str | None = None  # the token of the run whose command we are stopping
        self._warned: set[str] = set()
        # Runs whose task lacks a placeholder of our command, held back while no task has had them
        # all: the command may be wrong, not the tasks (see _suspect).
        self.suspects: list[tuple[Run, MissingArg]] = []
        self._command_fits = False  # our command's placeholders were filled for some task
        queue.checks.tell = lambda problem: self.say(f"skipping {problem.message} (left as it is)")
        queue.store.tell = self.say  # a damaged cache, rebuilt
        if not options.command and not options.allow_task_cmd and runner is None:
            raise GitqueueError("no command to run: give one after --, or --allow-task-cmd to run tasks' own cmd")

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Work until the queue is drained (or the limits say stop); returns an exit code."""
        warning = self.queue.head_warning()
        if warning:
            self.say(f"warning: {warning}")
        with self._signals():
            try:
                code = self._loop()
            except CacheDamaged:  # rebuilding did not help: give back what we hold before stopping
                with contextlib.suppress(GitqueueError):
                    self._flush(claim=0, release=True)
                raise
            finally:
                self._note()
        elapsed = time.monotonic() - self.summary.started
        s = self.summary
        if code == 0 and s.failed:
            code = EXIT_TASKS_FAILED  # a script (or Slurm) must see that not all went well
        self.say(f"stopping: {s.done} done, {s.failed} failed, {s.lost} taken away, in {elapsed:.1f}s")
        self._write_stats()
        return code

    def _write_stats(self) -> None:
        """With GITQUEUE_STATS_FILE set (bench/ sets it), write this worker's counters there as JSON."""
        path = os.environ.get("GITQUEUE_STATS_FILE")
        if not path:
            return
        s, store = self.summary, self.queue.store
        stats = {
            "done": s.done,
            "failed": s.failed,
            "lost": s.lost,
            "pushes": store.pushes,
            "rejected_pushes": store.rejected_pushes,
            "fetches": store.fetches,
            "seconds": {**store.seconds, **self.seconds, "backoff": self.queue.backed_off},
            "started": s.started,  # time.monotonic(): comparable across processes on one machine
            "ended": time.monotonic(),
        }
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps(stats))

    def _loop(self) -> int:
        delay = 1.0
        idle_since: float | None = None
        while True:
            if self.signal is not None:
                self._flush(claim=0, release=True)
                return 128 + self.signal
            claiming = self._due()
            self._maybe_reap(notes=claiming)  # busy workers too: a finish usually hands them their next run
            if claiming:
                # With runs still in hand, one try: if another worker wins the push, run the
                # next task and try again after it, instead of waiting idle for the branch.
                asked = self._batch_size() - len(self.held)
                claimed = self._flush(claim=asked, patient=not self.held)
                self._held_since.update({run.token: time.monotonic() for run in claimed})
                self.held.extend(claimed)
                self._note()
                if not self._lost_tries:  # it landed: the queue gave what it had
                    self._batch = len(self.held)
                    self._drained = len(claimed) < asked  # nothing more to claim for now: report at the end
            if not self.held and self.suspects:  # nothing more to try: every task tried lacks the arg
                return self._wrong_command()
            if not self.held:
                now = time.monotonic()
                idle_since = idle_since or now
                waited = now - idle_since
                if not self.options.wait and (self.options.idle_timeout is None or waited >= self.options.idle_timeout):
                    self.say("nothing to claim" + self._running_elsewhere())
                    return 0
                if waited == 0:
                    patience = "" if self.options.wait else f" for up to {self.options.idle_timeout:g}s"
                    self.say(f"nothing to claim; waiting for tasks{patience}")
                self._pause(min(delay, max(self.options.reap_every, 0.5)))
                delay = min(delay * 2, self.options.poll_max)
                self._maybe_reap(force=True)
                continue
            delay, idle_since = 1.0, None
            started = time.monotonic()
            report = self._execute(self.held.popleft())
            self.seconds["run"] += time.monotonic() - started
            if report is None:  # taken away while it ran, or held back as a suspect: nothing to report
                if len(self.suspects) >= SUSPECTS:
                    return self._wrong_command()
                continue
            if report.outcome == "interrupted":
                self._flush(claim=0, release=True)
                return self.stop_code or 128 + (self.signal or signal.SIGTERM)
            stop_code = self._count(report)
            if stop_code is not None:
                self._flush(claim=0, release=True)
                return stop_code

    def _note(self) -> None:
        """Note what we hold in the cache, so that if this process dies a worker (or `gitqueue
        reap`) on this machine returns it at once, spending an attempt only for what started."""
        held = {run.token: (run.id, False) for run in self.held}
        held.update({report.token or "": (report.task_id, True) for report in self.reports})
        if self._current is not None:
            held[self._current.token] = (self._current.id, True)
        else:
            self._stopping = None
        self._holdings.note(held, stopping=self._stopping)

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

    def _due(self) -> bool:
        """Time to report and claim: nothing left in hand, or half a batch run with more to
        claim, so the next claims land while the rest of this batch still runs."""
        if not self.held:
            return True
        if self._drained or time.monotonic() < self._retry_at:  # lost the last try: give others a moment
            return False
        return bool(self.reports) and len(self.held) * 2 <= self._batch

    def _batch_size(self) -> int:
        """How many claims to take next: about ``batch_seconds`` of work, 1 for long tasks."""
        limit = self.options.max_batch
        if self.options.max_tasks is not None:
            limit = min(limit, self.options.max_tasks - self.summary.done - self.summary.failed)
        if self._seconds_per_task is None:
            return 1
        return max(1, min(limit, int(self._batch_seconds / max(self._seconds_per_task, 1e-3))))

    def _adapt(self, lost_races: int) -> None:
        """Many workers on one branch: when our pushes lose races, push less often (bigger
        batches), and drift back once they land first time."""
        base = self.options.batch_seconds
        if lost_races:
            self._batch_seconds = min(base * 8, self._batch_seconds * 2)
        else:
            self._batch_seconds = max(base, self._batch_seconds * 0.8)

    def _flush(self, *, claim: int, release: bool = False, patient: bool = True) -> list[Run]:
        """Report every ended run, give back the held runs not started if ``release``, and
        claim up to ``claim`` new runs: one commit, one push. Not ``patient``: one try, and
        nothing changes if another writer wins it."""
        lost_before = self.queue.store.rejected_pushes
        started = time.monotonic()
        try:
            claimed = self._report_and_claim(max(claim, 0), release, patient)
        except LostRace:
            self._lost_tries += 1
            self._retry_at = time.monotonic() + self.queue._backoff(self._lost_tries)
            claimed = []
        else:
            self._lost_tries, self._retry_at = 0, 0.0
        finally:
            self.seconds["flush"] += time.monotonic() - started
        self._adapt(self.queue.store.rejected_pushes - lost_before)
        self._note()
        return claimed

    def _report_and_claim(self, claim: int, release: bool, patient: bool) -> list[Run]:
        reports = list(self.reports)
        if release:
            unstarted = [*self.held, *(run for run, _ in self.suspects)]
            reports += [Report(run.id, run.token, "released") for run in unstarted]
        if not reports:
            return self.queue.claim_batch(claim, **self._claim_options(), patient=patient) if claim else []
        then_claim = {**self._claim_options(), "count": claim} if claim else None
        finished = self.queue.finish(reports, then_claim=then_claim, patient=patient)
        self.reports = []  # landed: reported, and the held runs given back
        if release:
            self.held.clear()
            self.suspects.clear()
        for lost in finished.losses:  # the task was taken away, or a person broke its file
            self.summary.lost += 1
            if isinstance(lost, NotHeld):
                self.say(f"{lost.task_id}: {lost}")
            else:  # InvalidTask: its path names the task's file
                self.say(f"{Path(lost.path).stem}: cannot record how the run ended: {lost}")
        for task in finished.tasks:
            if task.state is not State.DONE and task.attempts and task.attempts[-1].get("outcome") == "failed":
                retry = "will retry" if task.state is State.PENDING else "out of attempts"
                self.say(f"{task.id}: back to {task.state.value} ({retry}, attempts spent {task.attempts_spent})")
        returned = any(task.state is State.PENDING for task in finished.tasks)  # the claim could not see these
        if claim and returned and not finished.claimed and not self.held:
            return self.queue.claim_batch(claim, **self._claim_options())
        return finished.claimed

    def _claim_options(self) -> dict[str, Any]:
        return {"labels": self.options.labels, "eligible": self._eligible}

    def _eligible(self, task: Task) -> bool:
        if self.custom_runner:  # e.g. a @loop function: it runs every task
            return True
        if task.cmd is not None and self.options.allow_task_cmd:
            return True
        return bool(self.options.command)

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

    def _suspect(self, run: Run, missing: MissingArg) -> Report | None:
        """A task lacks a placeholder of our command. Once the command has run some task, the
        task is at fault and fails at once (a retry cannot mend it); before that it is held
        back, as SUSPECTS tasks in a row lacking one mean the command is wrong (a typo)."""
        if self._command_fits:
            self.say(f"{run.id}: {missing}; not run")
            return Report(run.id, run.token, "failed", error=str(missing), final=True)
        self.suspects.append((run, missing))
        self.say(f"{run.id}: {missing}; held back, not run: is it the task or the command?")
        return None

    def _command_ran(self) -> None:
        """Our command's placeholders were all filled: tasks held back for lacking one are at fault."""
        self._command_fits = True
        for run, missing in self.suspects:
            self.say(f"{run.id}: {missing}; not run")
            self.reports.append(Report(run.id, run.token, "failed", error=str(missing), final=True))
        self.suspects.clear()

    def _wrong_command(self) -> int:
        """Every task tried lacks a placeholder: give them (and every held run) back untouched, and stop."""
        placeholders = sorted({missing.placeholder for _, missing in self.suspects})
        have = sorted({name for _, missing in self.suspects for name in missing.have})
        count = len(self.suspects)
        self.say(
            f"placeholder {', '.join(placeholders)} of the command names an arg that none of the {count} "
            f"task{'s' if count != 1 else ''} tried has (their args: {', '.join(have) or 'none'}): "
            "is the command right? Returning them untouched (no attempt spent) and stopping"
        )
        self._flush(claim=0, release=True)
        return EXIT_WRONG_COMMAND

    def _maybe_reap(self, *, force: bool = False, notes: bool = False) -> None:
        """Every --reap-every seconds; and, with ``notes`` (we are about to claim), at once
        when a worker of this machine has died holding runs (its note says so: a look at a
        local folder, no git), so that its tasks are among those we claim."""
        now = time.monotonic()
        due = force or now - self._last_reap >= self.options.reap_every
        if not due and not (notes and leftovers.dead_runs(self._runs_folder, queue=self.queue.here)):
            return
        self._last_reap = now
        for message in leftovers.stop_leftovers(self._runs_folder, self.options.grace):
            self.say(message)
        for reaped in self.queue.reap_runs():
            self.say(
                f"{reaped.id}: {reaped.reason}; returned to the queue"
                + ("" if reaped.spent else " (never started: no attempt spent)")
            )

    # ------------------------------------------------------------ one run

    def _execute(self, run: Run) -> Report | None:
        args = " ".join(f"{k}={_as_argument(v)}" for k, v in run.args.items())
        args = args if len(args) <= SHOWN_ARGS else f"{args[:SHOWN_ARGS]}... ({len(args):,} characters)"
        args = args if args.isprintable() else display(args)  # a task's terminal escapes are shown, not sent
        self.say(f"▶ {run.id} (attempt {run.attempt}) {args}")
        watch = Watch(self, run)
        started = time.monotonic()
        report: Report | None = None
        try:
            if started - self._held_since.pop(run.token, started) >= watch.every:
                # It waited in its batch, silent, for a heartbeat's interval or more: a reaper may
                # have given it away. Look (and keep its lease alive) before running it.
                watch.beat()
            self._current = run
            self._note()  # from now on it has started: if we die, its attempt is spent
            report = self.runner(run, watch)
            if report is not None and report.outcome != "interrupted":
                watch.settle(started)
            if report is not None:
                report = dataclasses.replace(report, lease_ref=watch.heartbeat is not None, args=run.args)
                self.reports.append(report)  # ended, not reported yet: noted as started
        except TakenAway as exc:
            self.summary.lost += 1
            how = "its run had ended, nothing reported" if report is not None else "run stopped, nothing reported"
            self.say(f"{run.id}: {exc}; {how}")
            if watch.heartbeat is not None:  # a move by hand leaves the run's lease ref behind
                self.queue.store.drop_lease(run.token)
            return None
        finally:
            self._current = None
            self._note()
        if report is not None:
            took = time.monotonic() - started
            average = self._seconds_per_task
            self._seconds_per_task = took if average is None else 0.7 * average + 0.3 * took
            how = "" if report.exit_code is None else f" (exit {report.exit_code})"
            self.say(f"{'✓' if report.outcome == 'done' else '✗'} {run.id} {report.outcome}{how} in {took:.1f}s")
        return report

    def _run_command(self, run: Run, watch: Watch) -> Report | None:
        """Run the task's command as a child process, streaming its output to us and a log."""
        own = bool(run.task.cmd and self.options.allow_task_cmd)
        template = run.task.cmd if own and run.task.cmd else self.options.command
        try:
            argv = expand(template, run.args)
        except MissingArg as exc:
            if own:  # the task's own command lacks the task's own arg
                self.say(f"{run.id}: {exc}; not run")
                return Report(run.id, run.token, "failed", error=str(exc), final=True)
            return self._suspect(run, exc)
        if not own:
            self._command_ran()
        stem = self.options.log_dir / f"{run.id}.{run.attempt}"
        log_path, result_path = stem.with_name(stem.name + ".log"), stem.with_name(stem.name + ".result")
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        result_path.unlink(missing_ok=True)
        env, note = self._environment(run, result_path, stem.with_name(stem.name + ".args.json"))
        with open(log_path, "wb") as log:
            log.write(f"# {now_iso()} {run.id} attempt {run.attempt}: {argv}\n".encode())
            if note:
                log.write(f"# {note}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(
                    argv,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=_die_with(os.getpid()),
                )
            except OSError as exc:
                return self._cannot_start(run, exc, argv, machine=not own and argv[:1] == template[:1])
            running = leftovers.record(self._runs_folder, child.pid, run.id, self.queue.worker)
            try:
                # Each stream keeps its own last lines: their interleaving across two pipes is not
                # knowable. An error records stdout's, then stderr's, where its story usually ends.
                out_tail: deque[bytes] = deque(maxlen=64)
                err_tail: deque[bytes] = deque(maxlen=64)
                lock = threading.Lock()
                pumps = [
                    threading.Thread(target=_pump, args=(child.stdout, sys.stdout, log, out_tail, lock), daemon=True),
                    threading.Thread(target=_pump, args=(child.stderr, sys.stderr, log, err_tail, lock), daemon=True),
                ]
                for pump in pumps:
                    pump.start()
                limit = self._time_limit(run)
                try:
                    timed_out = self._watch_child(child, watch, limit)
                except (Stop, TakenAway):
                    self._stopping = run.token  # `gitqueue status` on this machine shows it stopping
                    self._note()
                    self._stop_child(child, first=self._signal_for_child())
                    for pump in pumps:
                        pump.join(timeout=5)
                    if self.signal is None:
                        raise
                    return Report(run.id, run.token, "interrupted", error=f"worker stopped by signal {self.signal}")
                except BaseException:  # anything else ends the worker: never leave the child running
                    self._stop_child(child, first=signal.SIGKILL)
                    raise
                for pump in pumps:
                    pump.join(timeout=5)
            finally:
                leftovers.forget(running)
        code = child.returncode
        if code == 0 and not timed_out:
            return Report(run.id, run.token, "done", result=self._read_result(run, result_path))
        if self.signal is not None and not timed_out:
            # The signal reached the command too (Slurm's scancel signals every process of the
            # job): it ended because the worker is being stopped, not by its own failure.
            return Report(run.id, run.token, "interrupted", error=f"worker stopped by signal {self.signal}")
        output = (b"".join(out_tail) + b"".join(err_tail)).decode(errors="replace")[-ERROR_TAIL:]
        if timed_out:
            error = f"timed out after {limit:g}s (stopped; exit status {code})\n{output}".strip()
            return Report(run.id, run.token, "timeout", exit_code=code, error=error)
        return Report(run.id, run.token, "failed", exit_code=code, error=f"exit status {code}\n{output}".strip())

    def _time_limit(self, run: Run) -> float | None:
        """The run's wall-clock limit: the task's own ``timeout``, else ``--task-timeout``."""
        return run.task.timeout or self.options.task_timeout

    def _watch_child(self, child: subprocess.Popen[bytes], watch: Watch, limit: float | None) -> bool:
        """Wait for the child, keeping its lease alive; past ``limit`` seconds stop its process
        group (SIGTERM, SIGKILL after the grace) and return True."""
        deadline = None if limit is None else time.monotonic() + limit
        while child.poll() is None:
            watch.check()
            if deadline is not None and time.monotonic() >= deadline:
                self.say(f"{watch.run.id}: over its time limit of {limit:g}s; stopping it")
                self._stop_child(child)
                return True
            wait = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=wait)
        return False

    def _signal_for_child(self) -> int:
        """What a stopping worker sends its command first: Ctrl-C as Ctrl-C, anything else
        (SIGTERM, Slurm's warning SIGUSR1) as SIGTERM, which every program takes as 'stop'."""
        return signal.SIGINT if self.signal == signal.SIGINT else signal.SIGTERM

    def _environment(self, run: Run, result_path: Path, args_path: Path) -> tuple[dict[str, str], str]:
        """The command's environment, and a note for the run's log if GITQUEUE_ARGS was left out.

        The args are always in the file named by GITQUEUE_ARGS_FILE; GITQUEUE_ARGS holds them too
        unless they are longer than one environment string may be (the command could not start).
        """
        args = json.dumps(run.args, default=str)
        args_path.write_text(args, encoding="utf-8")
        env = {
            **os.environ,
            "GITQUEUE_TASK_ID": run.id,
            "GITQUEUE_ARGS_FILE": str(args_path.resolve()),
            "GITQUEUE_ATTEMPT": str(run.attempt),
            "GITQUEUE_RESULT_FILE": str(result_path.resolve()),
            "GITQUEUE_WORKER": self.queue.worker,
        }
        size = len(f"GITQUEUE_ARGS={args}".encode()) + 1
        if size <= ARG_STRING_LIMIT:
            env["GITQUEUE_ARGS"] = args
            return env, ""
        note = (
            f"GITQUEUE_ARGS left out: the args are {size:,} bytes, more than one environment variable may hold "
            f"({ARG_STRING_LIMIT:,}); read them from GITQUEUE_ARGS_FILE"
        )
        self.say(f"{run.id}: {note}")
        return env, note

    def _cannot_start(self, run: Run, exc: OSError, argv: list[str], *, machine: bool) -> Report:
        """A command that does not start. The machine's fault (our own program is missing or
        not executable) stops the worker, returning the task: a broken worker must not burn the
        queue. The task's fault (its args make the command too long, its own program is
        missing) spends that task's attempt, and the worker goes on."""
        why = f"cannot start {argv[0][:200]!r}: {exc.strerror}"
        if exc.errno == errno.E2BIG:
            longest = max(range(len(argv)), key=lambda i: len(argv[i].encode()))
            size = len(argv[longest].encode())
            why += (
                f" (argument {longest} is {size:,} bytes; one argument may hold {ARG_STRING_LIMIT:,}: pass such "
                "args through GITQUEUE_ARGS_FILE, not a placeholder)"
                if size >= ARG_STRING_LIMIT
                else " (the command line and environment are longer than this system allows)"
            )
        elif machine:
            self.stop_code = EXIT_NO_COMMAND
            self.say(f"{why}; returning {run.id} and stopping")
            return Report(run.id, run.token, "interrupted", error=why)
        self.say(f"{run.id}: {why}")
        return Report(run.id, run.token, "failed", error=why)

    def _read_result(self, run: Run, path: Path) -> Any:
        try:
            if not path.exists() or path.stat().st_size == 0:
                return None
            if not path.is_file():  # a folder, a FIFO, a device: never block on it or read it for ever
                raise InvalidTask(str(path), "not a regular file")
            if path.stat().st_size > MAX_FILE_BYTES:  # never read 10 GB to refuse them
                raise InvalidTask(str(path), f"{path.stat().st_size:,} bytes; at most {MAX_FILE_BYTES:,} are read")
            value = load_yaml(path.read_bytes(), path=str(path))  # JSON is YAML
        except InvalidTask as exc:
            self.say(f"{run.id}: result file ignored: {exc}")
            return None
        except OSError as exc:
            self.say(f"{run.id}: result file ignored: cannot read {path}: {exc.strerror}")
            return None
        if not isinstance(value, dict):
            self.say(f"{run.id}: result file ignored: {path} holds a {type(value).__name__}, not a mapping")
            return None
        problem = result_problem(run.task.evolve(result=value))
        if problem is not None:
            self.say(f"{run.id}: result file ignored: {path}: {problem}")
            return None
        return value

    def _stop_child(self, child: subprocess.Popen[bytes], *, first: int = signal.SIGTERM) -> None:
        """Signal the child's process group (the signal the worker got, else SIGTERM), then
        SIGKILL what is left of it after the grace period: the child, or (on Linux) processes
        it started that outlive it. A second Ctrl-C meanwhile cuts the grace short."""
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, first)
            deadline = time.monotonic() + self.options.grace
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=self.options.grace)
            while child.poll() is not None and leftovers.members(child.pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # the child is gone; what it started gets the rest of the grace
            if child.poll() is not None and not leftovers.members(child.pid):
                return
        except KeyboardInterrupt:
            self.say("stopping the run now")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5.0)

    # ------------------------------------------------------------ plumbing

    def say(self, message: str) -> None:
        print(f"[{self.queue.worker}] {message}", file=self.log, flush=True)

    def _pause(self, seconds: float) -> None:
        """Sleep while idle, waking early for a signal."""
        deadline = time.monotonic() + seconds
        self.seconds["idle"] += max(0.0, seconds)
        while self.signal is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, frame: Any) -> None:
            again = self.signal is not None
            if not again:
                self.signal = signum
                self.say(f"got {signal.Signals(signum).name}: stopping the current run, returning its task")
            if self.in_process or (again and signum == signal.SIGINT):
                self.in_process = False
                raise KeyboardInterrupt  # stop a function running in this thread; a second Ctrl-C: stop now

        previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class TakenAway(GitqueueError):
    """The run's task was cancelled, requeued or reaped while it ran."""


class Watch:
    """Keeps one run's lease alive and tells the runner when to stop.

    ``check()`` is cheap between heartbeats; at each heartbeat it pushes the run's lease
    ref and fetches the queue to see that the run still holds its task.
    """

    def __init__(self, worker: Worker, run: Run) -> None:
        self.worker = worker
        self.run = run
        every = worker.options.heartbeat or min(30.0, max(1.0, run.lease / 3))
        self.every = every
        self.look_every = min(every, worker.options.look_every)
        now = time.monotonic()
        self.next_beat = now + every
        self.next_look = now + self.look_every
        self.heartbeat: str | None = None

    def check(self) -> None:
        """Raise Stop or TakenAway when the run must end; beat or look when it is time."""
        if self.worker.signal is not None:
            raise Stop()
        now = time.monotonic()
        if now >= self.next_beat:
            self.next_beat, self.next_look = now + self.every, now + self.look_every
            self.beat()
        elif now >= self.next_look:
            self.next_look = now + self.look_every
            self.look()

    def beat(self) -> None:
        """Make sure the run still holds its task, then push a heartbeat.

        In that order, so that a run which lost its task never re-creates the lease ref
        that the cancel, requeue or reap deleted. A run this long was no short task: runs
        held in its batch go back to the queue for idle workers, and runs that ended are
        reported now rather than after this one.
        """
        if self.worker.held or self.worker.reports:
            self.worker._flush(claim=0, release=True)
        self.look()
        self.push_heartbeat()

    def look(self) -> None:
        """TakenAway if the run no longer holds its task (cancelled, requeued, reaped).

        A fetch, no push: cheap enough to do every few seconds between heartbeats, so that
        a cancel stops the run within seconds, not a heartbeat interval.
        """
        queue, run = self.worker.queue, self.run
        try:
            task = queue.get(run.id)
        except TaskNotFound:
            raise TakenAway("its task file is gone from the queue") from None
        except GitqueueError:
            return  # the remote is away: keep running and beating, the next look tries again
        if task.state is State.CANCELLED:
            raise TakenAway("cancelled")
        if task.state is State.RUNNING and task.token != run.token:
            holder = (task.run or {}).get("worker")
            raise TakenAway(f"its task is held by another run now (of {holder}), no longer by this one")
        if task.state is not State.RUNNING:
            raise TakenAway(f"its task is {task.state.value} now, no longer held by this run")

    def settle(self, started: float) -> None:
        """At the end of a run, look once more, so that a cancel which landed since the last
        look is told as such, not as done. Not for the short runs of a batch (more claims in
        hand): a fetch each would cost them more than the cancel of one short run is worth."""
        if not self.worker.held or time.monotonic() - started >= self.look_every:
            self.look()

    def push_heartbeat(self) -> None:
        """Keep the lease alive; safe from a second thread (writes objects, runs git push)."""
        queue, run = self.worker.queue, self.run
        when = queue.clock()  # the clock every record of this queue is written by
        message = f"heartbeat {run.id} by {queue.worker}\n\nGitqueue-Run: {run.token}\nGitqueue-Time: {now_iso(when)}\n"
        pushed = queue.store.heartbeat(
            run.token, parent=self.heartbeat, message=message, author=queue.identity, when=when
        )
        if pushed is not None:
            self.heartbeat = pushed


def _die_with(worker_pid: int) -> Callable[[], None] | None:
    """On Linux, the child gets SIGTERM if its worker dies without stopping it (SIGKILL, OOM).

    The dead worker's task goes back to the queue and runs elsewhere; its orphaned child
    must not run on beside the rerun (on the same GPU, say). Only the child itself is told,
    not processes it started: the next worker on the machine stops those (see leftovers).
    """
    if _prctl is None:
        return None

    def arm() -> None:  # runs in the child between fork and exec: nothing but syscalls
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != worker_pid:  # the worker died before we armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PR_SET_PDEATHSIG = 1
_prctl = _load_prctl()


def _pump(source: IO[bytes] | None, sink: IO[str], log: IO[bytes], tail: deque[bytes], lock: threading.Lock) -> None:
    """Copy a child's stream to our own stream and the run's log, keeping the last lines."""
    if source is None:
        return
    out = getattr(sink, "buffer", None)
    echo = True
    for line in iter(source.readline, b""):
        with lock:
            log.write(line)
            log.flush()
            tail.append(line)
        if not echo:
            continue
        try:
            if out is not None:
                out.write(line)
                out.flush()
            else:
                sink.write(line.decode(errors="replace"))
                sink.flush()
        except (OSError, ValueError):  # our terminal or pipe went away: keep draining, or the child blocks
            echo = False


# ---------------------------------------------------------------- Python API

_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("gitqueue_current_run", default=None)


def current_task() -> Run:
    """The run the innermost :func:`loop` function is working on."""
    run = _current.get()
    if run is None:
        raise GitqueueError("current_task() is only available inside a @gitqueue.loop function")
    return run


def loop(
    queue: str | Queue | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    worker: str | None = None,
    max_tasks: int | None = None,
    wait: bool = False,
    idle_timeout: float | None = None,
    max_failures: int | None = None,
) -> Callable[[Callable[..., Any]], Callable[[], int]]:
    """Turn an experiment function into a worker: calling it works through the queue.

    The function's parameters are filled from each task's args (converted to the
    parameter's annotated type, defaults used for args the task lacks); its return value
    becomes the task's result (a mapping, else ``{"value": ...}``); an exception fails
    the task with its traceback's tail.

    >>> @gitqueue.loop(labels={"gpu": "a100"})        # doctest: +SKIP
    ... def train(lr: float, bs: int = 32) -> dict:
    ...     return {"acc": fit(lr, bs), "task": gitqueue.current_task().id}
    >>> train()                                         # doctest: +SKIP
    """

    def decorate(function: Callable[..., Any]) -> Callable[[], int]:
        try:  # scripts with `from __future__ import annotations` have strings for annotations
            signature = inspect.signature(function, eval_str=True)
        except (NameError, SyntaxError, TypeError):
            signature = inspect.signature(function)

        def runner(run: Run, watch: Watch) -> Report:
            try:
                kwargs = _bind(signature, run.args)
            except MissingArg as exc:
                return Report(run.id, run.token, "failed", error=str(exc), final=True)
            beating = _BackgroundWatch(watch)
            token = _current.set(run)
            worker = watch.worker
            try:
                if worker.signal is not None:  # it came before the function started
                    raise KeyboardInterrupt
                worker.in_process = True  # from now on a SIGINT or SIGTERM raises KeyboardInterrupt here
                value = function(**kwargs)
            except KeyboardInterrupt:
                return Report(run.id, run.token, "interrupted", error="interrupted")
            except Exception as exc:
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
                return Report(run.id, run.token, "failed", error=text[-ERROR_TAIL:])
            finally:
                worker.in_process = False
                _current.reset(token)
                beating.stop()
            result = value if isinstance(value, dict) or value is None else {"value": value}
            return Report(run.id, run.token, "done", result=result)

        def work() -> int:
            options = Options(
                labels=dict(labels or {}),
                max_tasks=max_tasks,
                wait=wait,
                idle_timeout=idle_timeout,
                max_failures=max_failures,
            )
            own = not isinstance(queue, Queue)
            q = queue if isinstance(queue, Queue) else Queue.open(queue, worker=worker)
            try:
                return Worker(q, options, runner=runner).run()
            finally:
                if own:
                    q.close()

        work.__name__ = function.__name__
        work.__doc__ = function.__doc__
        return work

    return decorate


def _bind(signature: inspect.Signature, args: Mapping[str, Any]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    takes_rest = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for name, param in signature.parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        if name in args:
            kwargs[name] = _convert(args[name], param.annotation, name)
        elif param.default is param.empty:
            have = ", ".join(sorted(args)) or "none"
            raise MissingArg(f"parameter {name!r} has no default and the task lacks it (its args: {have})")
    if takes_rest:
        kwargs.update({k: v for k, v in args.items() if k not in kwargs})
    return kwargs


def _convert(value: Any, annotation: Any, name: str) -> Any:
    kind = annotation if annotation in (int, float, str, bool) else None  # not Any, list[int], MyClass, ...
    if kind is None or isinstance(value, kind):
        return value
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() in {"true", "yes", "1", "on"}:
                return True
            if value.lower() in {"false", "no", "0", "off"}:
                return False
            raise ValueError(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)  # int(2.5) would quietly run the experiment with 2
        if kind in (int, float, str, bool):
            return kind(value)
    except (TypeError, ValueError):
        raise MissingArg(f"arg {name}={value!r} cannot be read as {kind.__name__}") from None
    return value


class _BackgroundWatch:
    """Heartbeats for a function running in this thread (it cannot be stopped from outside)."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.watch.every):
            with contextlib.suppress(GitqueueError):
                self.watch.push_heartbeat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
