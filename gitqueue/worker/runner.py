"""The default runner: a run's command, filled from its task's args, as a child process.

:class:`CommandRunner` picks the command (the worker's, or the task's own with
``allow_task_cmd``), fills its placeholders, lays out the run's log, args and result files and
its environment, hands the child to a :class:`~gitqueue.worker.child.ChildRun`, and turns the
child's :class:`~gitqueue.worker.child.Outcome` into the run's Report (reading its result file).
It is given the options, the worker's :class:`~gitqueue.worker.hand.Hand` (for tasks held back
for lacking a placeholder), its signals and a ``say`` callable.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitqueue.errors import InvalidTask
from gitqueue.gpus import env_for
from gitqueue.queue import ERROR_TAIL, Report, Run
from gitqueue.task import MAX_FILE_BYTES, load_yaml, now_iso, result_problem
from gitqueue.worker.child import ChildRun, Outcome
from gitqueue.worker.command import MissingArg, expand
from gitqueue.worker.hand import Hand
from gitqueue.worker.lease import RunCheck, TakenAway, Watch
from gitqueue.worker.options import EXIT_NO_COMMAND, Options
from gitqueue.worker.signals import Signals, Stop

# Linux refuses to start a command with one argv item or environment string longer than this
# (MAX_ARG_STRLEN, "NAME=value" and its NUL included): E2BIG, "Argument list too long".
ARG_STRING_LIMIT = 128 * 1024


class CommandRunner:
    """``runner(run, watch)`` for commands; ``stop_code`` is set when the machine is at fault."""

    def __init__(
        self, options: Options, *, worker: str, hand: Hand, signals: Signals, say: Callable[[str], None]
    ) -> None:
        self.options, self.worker, self.hand, self.signals, self.say = options, worker, hand, signals, say
        self.stop_code: int | None = None  # set when the worker itself is broken

    def __call__(self, run: Run, watch: Watch | RunCheck, *, gpus: tuple[str, ...] | None = None) -> Report | None:
        """Run the task's command as a child process, streaming its output to us and a log;
        ``gpus``: the GPUs the run holds, its command's CUDA_VISIBLE_DEVICES (None: left alone)."""
        own = bool(run.task.cmd and self.options.allow_task_cmd)
        template = run.task.cmd if own and run.task.cmd else self.options.command
        try:
            argv = expand(template, run.args)
        except MissingArg as exc:
            if own:  # the task's own command lacks the task's own arg
                self.say(f"{run.id}: {exc}; not run")
                return Report(run.id, run.token, "failed", error=str(exc), final=True)
            return self.hand.suspect(run, exc)
        if not own:
            self.hand.command_ran()
        stem = self.options.log_dir / f"{run.id}.{run.attempt}"
        log_path, result_path = stem.with_name(stem.name + ".log"), stem.with_name(stem.name + ".result")
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        result_path.unlink(missing_ok=True)
        env, note = self._environment(run, result_path, stem.with_name(stem.name + ".args.json"))
        env.update(env_for(gpus))
        notes = [f"{now_iso()} {run.id} attempt {run.attempt}: {argv}", *([note] if note else [])]
        child = ChildRun(
            argv,
            env=env,
            log_path=log_path,
            notes=notes,
            grace=self.options.grace,
            runs_folder=self.hand.runs_folder,
            task_id=run.id,
            worker=self.worker,
            say=self.say,
        )
        limit = run.task.timeout or self.options.task_timeout  # the task's own `timeout` wins
        try:
            outcome = child.run(
                check=watch.check,
                limit=limit,
                stopping=lambda: self.hand.mark_stopping(run.token),
                first_signal=self.signals.for_child,
            )
        except Stop:
            return self._interrupted(run)
        except TakenAway:
            if self.signals.received is None:
                raise
            return self._interrupted(run)  # taken away, but a signal came meanwhile: stopping wins
        if outcome.start_error is not None:
            return self._cannot_start(run, outcome.start_error, argv, machine=not own and argv[:1] == template[:1])
        return self._report(run, outcome, limit, result_path)

    def _interrupted(self, run: Run) -> Report:
        return Report(run.id, run.token, "interrupted", error=f"worker stopped by signal {self.signals.received}")

    def _report(self, run: Run, outcome: Outcome, limit: float | None, result_path: Path) -> Report:
        code, timed_out = outcome.code, outcome.timed_out
        if code == 0 and not timed_out:
            return Report(run.id, run.token, "done", result=self._read_result(run, result_path))
        if self.signals.received is not None and not timed_out:
            # The signal reached the command too (Slurm's scancel signals every process of the
            # job): it ended because the worker is being stopped, not by its own failure.
            return self._interrupted(run)
        output = outcome.output[-ERROR_TAIL:]
        if timed_out:
            error = f"timed out after {limit:g}s (stopped; exit status {code})\n{output}".strip()
            return Report(run.id, run.token, "timeout", exit_code=code, error=error)
        return Report(run.id, run.token, "failed", exit_code=code, error=f"exit status {code}\n{output}".strip())

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
            "GITQUEUE_WORKER": self.worker,
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
