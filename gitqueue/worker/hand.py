"""What a worker has in hand, and the one push that reports and claims.

:class:`Hand` owns the runs claimed and not started (a batch), the runs that ended and are not
reported yet, the runs held back as suspects (their task lacks a placeholder of the command), the
run under way, and the note of all of them in this machine's runs folder (see
:mod:`gitqueue.leftovers`). ``flush`` reports every ended run and claims the next ones in one
commit and one push, through the :class:`~gitqueue.queue.Queue`'s public methods; :class:`Pace`
sizes the batch. It calls nothing of the worker's loop: it is given the queue, the options, the
summary to tally losses in and a ``say`` callable.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gitqueue import leftovers
from gitqueue.errors import InvalidTask, LostRace, NotHeld
from gitqueue.gpus import GpuPool, misfit
from gitqueue.queue import Ask, Queue, Report, Run
from gitqueue.task import State, Task
from gitqueue.worker.command import MissingArg
from gitqueue.worker.options import Options, Summary
from gitqueue.worker.pace import Pace

SUSPECTS = 3  # tasks in a row lacking a placeholder, before any had it: the command is wrong, not the tasks


class Hand:
    """The runs one worker holds, reported and claimed one push at a time.

    ``runs_everything``: the worker's runner runs any task (a ``@loop`` function), so every
    task is eligible; else a task needs our command, or its own with ``allow_task_cmd``.
    """

    def __init__(
        self,
        queue: Queue,
        options: Options,
        *,
        summary: Summary,
        seconds: defaultdict[str, float],
        say: Callable[[str], None],
        runs_everything: bool,
    ) -> None:
        self.queue, self.options, self.summary, self.seconds, self.say = queue, options, summary, seconds, say
        self.runs_everything = runs_everything
        self.pace = Pace(options, slots=options.slots)
        self.held: deque[Run] = deque()  # claimed in a batch, not started yet
        self.held_since: dict[str, float] = {}  # run token -> when it was claimed (monotonic)
        self.reports: list[Report] = []  # runs that ended, not reported yet
        # Runs whose task lacks a placeholder of our command, held back while no task has had them
        # all: the command may be wrong, not the tasks (see suspect).
        self.suspects: list[tuple[Run, MissingArg]] = []
        self.command_fits = False  # our command's placeholders were filled for some task
        self.current: Run | None = None  # the run under way (one slot)
        self.running: dict[str, Run] = {}  # the runs under way, by token (many slots)
        # The worker's GPUs (--gpus): a task asking more than it owns is never claimed.
        self.pool = GpuPool(options.gpus) if options.gpus else None
        self.misfits: set[str] = set()  # tasks said to ask more GPUs than we own (said once each)
        # Runs of many slots call suspect, command_ran and mark_stopping from their own threads.
        self.lock = threading.RLock()
        self.stopping: str | None = None  # the token of the run whose command we are stopping
        self.pushing: tuple[Aside, int] | None = None  # a claim's push under way while runs go on, and what it asked
        self.runs_folder = queue.runs_folder  # what our commands are, and what we hold (see leftovers)
        self._holdings = leftovers.Holdings(self.runs_folder, queue=queue.here, worker=queue.worker)

    def note(self) -> None:
        """Note what we hold in the cache, so that if this process dies a worker (or `gitqueue
        reap`) on this machine returns it at once, spending an attempt only for what started."""
        with self.lock:
            held = {run.token: (run.id, False) for run in self.held}
            held.update({report.token or "": (report.task_id, True) for report in self.reports})
            held.update({token: (run.id, True) for token, run in self.running.items()})
            if self.current is not None:
                held[self.current.token] = (self.current.id, True)
            elif not self.running:
                self.stopping = None
            self._holdings.note(held, stopping=self.stopping)

    def mark_stopping(self, token: str) -> None:
        """The command of this run is being stopped: the note says so while it stops."""
        with self.lock:
            self.stopping = token
            self.note()

    def claim_next(self) -> None:
        """Report what ended and claim the next batch. With runs still in hand, one try in a
        thread of its own while the next run goes on (see :meth:`settle_push`): if another
        worker wins the push, try again after it, instead of waiting idle."""
        if self.pushing is not None and not self.settle_push(wait=False):
            return  # one push at a time: the last one is still under way
        with self.pace.sizing_turn(self.queue, held=len(self.held)):  # a first claim: see there
            self._claim_next()

    def _claim_next(self) -> None:
        s = self.summary
        self.pace.start(self.queue, say=self.say)  # learn the budget and the fleet before the first push
        asked = self.pace.size(ran=s.done + s.failed, held=len(self.held)) - len(self.held)
        if self.held:
            self.pushing = (Aside(lambda: self._flush(claim=asked, patient=False), wake=threading.Event()), asked)
            return
        self._claimed(self._flush(claim=asked, patient=True), asked)

    def settle_push(self, *, wait: bool) -> bool:
        """Take in what a push under way claimed, once it is over (``wait``: wait for it).
        True if one was taken in."""
        if self.pushing is None or not (wait or self.pushing[0].over()):
            return False
        aside, asked = self.pushing
        self.pushing = None
        self._claimed(aside.take(), asked)
        return True

    def catch_up(self) -> bool:
        """Between runs: take in the push under way (waiting for it with nothing in hand) and the
        runs found claimed for us. True if that push brought nothing and nothing is in hand."""
        settled = self.settle_push(wait=not self.held)
        found = self.take_found()
        return settled and not self.held and not found

    def report_ended(self) -> None:
        """Report the runs that ended, if any (one patient push)."""
        if self.reports:
            self.flush(claim=0)

    def _claimed(self, claimed: list[Run], asked: int) -> None:
        self.held_since.update({run.token: time.monotonic() for run in claimed})
        self.held.extend(claimed)
        self.note()
        if not self.pace.lost_tries:  # it landed: the queue gave what it had
            self.pace.batch = len(self.held)
            self.pace.drained = len(claimed) < asked  # nothing more to claim for now: report at the end

    def take_found(self) -> list[Run]:
        """Runs others claimed for us that a fetch showed while our own push did not land:
        now in hand (each once)."""
        found = self.queue.lifecycle.take_found()
        if found:  # served, maybe never landing a push of our own: learn the fleet from that view
            self.pace.learn(self.queue, say=self.say, tip=self.queue.lifecycle.found_on)
            now = time.monotonic()
            self.held_since.update({run.token: now for run in found})
            self.held.extend(found)
            self.pace.batch = len(self.held)  # as a landed claim's: claim again once half of it has run
            self.note()
        return found

    def give_back(self) -> None:
        """Report what ended and return the runs not started, if there are any."""
        if self.held or self.reports:
            self.flush(claim=0, release=True)

    def flush(self, *, claim: int, release: bool = False, patient: bool = True) -> list[Run]:
        """Report every ended run, give back the held runs not started if ``release``, and
        claim up to ``claim`` new runs: one commit, one push (after a push under way). Not
        ``patient``: one try, and nothing changes if another writer wins it."""
        self.settle_push(wait=True)
        return self._flush(claim=claim, release=release, patient=patient)

    def _flush(self, *, claim: int, release: bool = False, patient: bool = True) -> list[Run]:
        """See :meth:`flush`.

        Runs of many slots may end (adding reports) while a claim's push is under way: only
        the reports it carried are taken off when it lands. A release is never under way
        while held runs start."""
        lost_before = self.queue.store.rejected_pushes
        landed_before = self.queue.protocol.last_landed  # to learn after a push of ours landed
        started = time.monotonic()
        try:
            claimed = self._report_and_claim(max(claim, 0), release, patient)
        except LostRace:
            self.pace.lost_tries += 1
            self.pace.retry_at = time.monotonic() + self.queue._backoff(self.pace.lost_tries)
            claimed = []
        else:
            self.pace.lost_tries, self.pace.retry_at = 0, 0.0
        finally:
            self.seconds["flush"] += time.monotonic() - started
        self.pace.adapt(self.queue.store.rejected_pushes - lost_before)
        if self.queue.protocol.last_landed != landed_before:  # our push landed: pace the next
            self.pace.pushed(time.monotonic())
            self.pace.learn(self.queue, say=self.say)
        elif claimed:  # served by another worker's push: learn the fleet from the view that showed it
            self.pace.learn(self.queue, say=self.say, tip=self.queue.lifecycle.found_on)
        if claimed:
            self.pace.served(time.monotonic() - started)
        self.note()
        return claimed

    def _report_and_claim(self, claim: int, release: bool, patient: bool) -> list[Run]:
        with self.lock:
            sent = list(self.reports)
        reports = list(sent)
        if release:
            self.held.extend(self.queue.lifecycle.take_found())  # claimed for us, not started: back too
            unstarted = [*self.held, *(run for run, _ in self.suspects)]
            reports += [Report(run.id, run.token, "released") for run in unstarted]
        if not reports:
            return self.queue.claim_batch(claim, **self._claim_options(), patient=patient) if claim else []
        then_claim = {**self._claim_options(), "count": claim} if claim else None
        finished = self.queue.finish(reports, then_claim=then_claim, patient=patient, hand_off=self.pace.may_ask())
        with self.lock:
            del self.reports[: len(sent)]  # landed: reported (reports only grow meanwhile), held runs given back
            if release:
                self.held.clear()
                self.suspects.clear()
        self._tell(finished.losses, finished.tasks)
        returned = any(task.state is State.PENDING for task in finished.tasks)  # the claim could not see these
        if claim and returned and not finished.claimed and not self.held:
            return self.queue.claim_batch(claim, **self._claim_options())
        return finished.claimed

    def _tell(self, losses: list[NotHeld | InvalidTask], tasks: list[Task]) -> None:
        """Say which reports did not land, and which failed tasks go back to pending."""
        for lost in losses:  # the task was taken away, or a person broke its file
            self.summary.lost += 1
            if isinstance(lost, NotHeld):
                self.say(f"{lost.task_id}: {lost}")
            else:  # InvalidTask: its path names the task's file
                self.say(f"{Path(lost.path).stem}: cannot record how the run ended: {lost}")
        for task in tasks:
            if task.state is not State.DONE and task.attempts and task.attempts[-1].get("outcome") == "failed":
                retry = "will retry" if task.state is State.PENDING else "out of attempts"
                self.say(f"{task.id}: back to {task.state.value} ({retry}, attempts spent {task.attempts_spent})")

    def _claim_options(self) -> dict[str, Any]:
        # A lost race asks for work (a request ref); whoever lands next claims for us. Not under a
        # push_budget: a request is a push of its own, and saves us none.
        own_cmd_only = not self.runs_everything and not self.options.command
        lease = self.pace.lease()  # a budget too small for the queue's lease lengthens it
        gpus = None if self.pool is None else len(self.pool.owned)
        ask = Ask(
            labels=dict(self.options.labels), own_cmd_only=own_cmd_only, gpus=gpus, lease=lease, slots=self.pace.slots
        )
        ask_for = ask if self.pace.may_ask() else None
        return {"labels": self.options.labels, "eligible": self._eligible, "ask": ask_for, "lease": lease}

    def _eligible(self, task: Task) -> bool:
        if self.runs_everything:  # e.g. a @loop function: it runs every task
            return True
        why = misfit(task, pool=self.pool)
        if why is not None:
            if task.id not in self.misfits:
                self.misfits.add(task.id)
                self.say(why)
            return False
        if task.cmd is not None and self.options.allow_task_cmd:
            return True
        return bool(self.options.command)

    def suspect(self, run: Run, missing: MissingArg) -> Report | None:
        """A task lacks a placeholder of our command. Once the command has run some task, the
        task is at fault and fails at once (a retry cannot mend it); before that it is held
        back, as SUSPECTS tasks in a row lacking one mean the command is wrong (a typo)."""
        with self.lock:
            if self.command_fits:
                self.say(f"{run.id}: {missing}; not run")
                return Report(run.id, run.token, "failed", error=str(missing), final=True)
            self.suspects.append((run, missing))
            self.say(f"{run.id}: {missing}; held back, not run: is it the task or the command?")
            return None

    def command_ran(self) -> None:
        """Our command's placeholders were all filled: tasks held back for lacking one are at fault."""
        with self.lock:
            if self.command_fits and not self.suspects:
                return
            self.command_fits = True
            for run, missing in self.suspects:
                self.say(f"{run.id}: {missing}; not run")
                self.reports.append(Report(run.id, run.token, "failed", error=str(missing), final=True))
            self.suspects.clear()


class Aside:
    """One call in a thread of its own; its result (or its error) is taken once it is over."""

    def __init__(self, call: Callable[[], list[Run]], *, wake: threading.Event) -> None:
        self.result: list[Run] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call, wake), name="push", daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], list[Run]], wake: threading.Event) -> None:
        try:
            self.result = call()
        except BaseException as exc:  # told to the loop, which raises it
            self.error = exc
        finally:
            wake.set()

    def over(self) -> bool:
        return not self._thread.is_alive()

    def take(self) -> list[Run]:
        self._thread.join()
        if self.error is not None:
            raise self.error
        return self.result
