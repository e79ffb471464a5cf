"""Many runs at once in one worker process: its slots, their GPUs, one push per cycle.

A :class:`Slots` loop steps every run without blocking on any: each run's command runs in a
thread of its own (a :class:`~gitqueue.worker.child.ChildRun`, exactly as a single run: its own
process group, log, result file, token, attempt, time limit and stop), while this thread does
everything that speaks to git for all of them. One push reports every ended run and claims the
next ones (the :class:`~gitqueue.worker.hand.Hand`'s ``flush``; with runs under way it goes on in a
thread of its own, so that a slot whose run ends meanwhile starts its next one at once); one push
keeps every run's lease alive (:class:`SlotLeases`: one lease ref per run, pushed together by
:meth:`~gitqueue.gitstore.GitStore.heartbeats`); one fetch every ``look_every`` seconds looks for
a cancel of any of them. A task asking more GPUs than are free
waits in hand; one asking more than the worker owns is never claimed (see the hand).

It is given the :class:`~gitqueue.worker.worker.Worker` whose hand, runner, signals, summary and
helpers it uses; the worker calls :meth:`Slots.run` when it has more than one slot or GPUs.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gitqueue.errors import GitqueueError, TaskNotFound
from gitqueue.gpus import GpuPool, gpus_wanted
from gitqueue.queue import Report, Run
from gitqueue.worker.command import started_line
from gitqueue.worker.hand import SUSPECTS, Aside
from gitqueue.worker.lease import RunCheck, TakenAway, heartbeat_message, why_taken

if TYPE_CHECKING:
    from gitqueue.worker.worker import Worker

STEP = 0.2  # longest wait between looks at the runs (a run's end wakes the loop at once)


@dataclass
class Slot:
    """One run under way: its GPUs, its thread, how it ended (set by its thread), and its lease."""

    run: Run
    gpus: tuple[str, ...] | None
    started: float
    thread: threading.Thread | None = None
    report: Report | None = None
    lost: TakenAway | None = None
    error: BaseException | None = None
    ended: bool = False
    taken: str | None = None  # set by the loop: why the run no longer holds its task
    heartbeat: str | None = None  # its lease ref's last heartbeat commit


class Slots:
    """The loop of a worker with many slots (see the module's docstring)."""

    def __init__(self, worker: Worker, *, pool: GpuPool | None) -> None:
        self.worker, self.hand, self.pool = worker, worker.hand, pool
        self.count = worker.options.slots
        self.slots: dict[str, Slot] = {}  # run token -> its slot
        self.wake = threading.Event()  # a run ended
        self.ending: int | None = None  # stop starting runs; exit with this once every run ended
        self.wrong_command = False  # tasks in a row lacked a placeholder: stop starting runs, then say so
        self.ahead = True  # claim a next run per slot before the current ones end
        self.leases = SlotLeases(worker, self.slots, count=self.count)
        self.next_try, self.delay = 0.0, 1.0  # an idle slot's next look for work once the queue ran dry
        self.idle_since: float | None = None
        self.came_back_empty = False  # the last claim, made with nothing in hand, got nothing
        self.pushing: tuple[Aside, int] | None = None  # a push under way while runs go on, and what it asked

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Work until the queue is drained (or the limits say stop); returns an exit code."""
        worker = self.worker
        while True:
            now = time.monotonic()
            self._collect()
            if self.hand.take_found():  # claimed for us while our push lost: run them now
                self.idle_since, self.delay, self.came_back_empty = None, 1.0, False
            if self._take_push():  # nothing else speaks to git meanwhile: runs end and start
                if worker.signal is None and self.ending is None and not self.wrong_command:
                    self._start_runs(now)
                self.wake.wait(STEP)
                self.wake.clear()
                continue
            if worker.signal is not None or self.ending is not None or self.wrong_command:
                if not self.slots:
                    return self._end()
            else:
                self._start_runs(now)
                if self._claim_due(now):
                    self._claim()
                    continue
                if not self.slots and not self.hand.held:
                    if self.hand.pace.turn(held=0) > 0 and not self.came_back_empty:  # a push_budget's turn
                        self.wake.wait(STEP)
                        continue
                    code = self._idle(now)
                    if code is not None:
                        return code
                    continue
            self.leases.tend(time.monotonic(), before_beat=self._give_back_waiting)
            self.wake.wait(STEP)
            self.wake.clear()

    def _end(self) -> int:
        """Every run ended: report them, give back what was not started, and say how we stop."""
        if self.wrong_command and self.worker.signal is None:
            return self.worker._wrong_command()
        self.hand.flush(claim=0, release=True)
        if self.worker.signal is not None:
            return self.worker.command.stop_code or 128 + self.worker.signal
        return self.ending if self.ending is not None else 0

    def _idle(self, now: float) -> int | None:
        """Nothing in hand nor running: an exit code if it is time to stop, else None (after a wait)."""
        hand, worker = self.hand, self.worker
        if hand.suspects:
            return worker._wrong_command()
        if hand.reports:
            hand.flush(claim=0)
        self.idle_since = self.idle_since or now
        if worker._idle(now - self.idle_since, self.delay):
            return 0
        hand.pace.drained = self.came_back_empty = False  # look again
        return None

    # ------------------------------------------------------------ claims

    def _wanted(self) -> int:
        """How many runs to hold, not started: one per free slot, and (claiming ahead) one more
        per slot, times a batch's worth each for short tasks; never past --max-tasks."""
        hand, options = self.hand, self.worker.options
        free = self.count - len(self.slots)
        s = hand.summary
        if hand.pace.paced:  # other machines share the branch, or a budget: the pacer's batch, in all
            wanted = hand.pace.size(ran=s.done + s.failed, held=len(hand.held), free=free)
        else:
            wanted = free + (self.count * hand.pace.size(ran=s.done + s.failed) if self.ahead else 0)
        if options.max_tasks is not None:
            wanted = min(wanted, options.max_tasks - s.done - s.failed - len(self.slots))
        return max(0, wanted)

    def _claim_due(self, now: float) -> bool:
        """Time for the one push of a cycle: a slot has nothing to start, or runs ended with
        half of what is held started; not while the last try lost (others get a moment), and
        not before the next look once the queue gave less than asked."""
        pace, hand = self.hand.pace, self.hand
        if not self.slots and not hand.held:  # empty-handed: claim before deciding we are idle
            return not self.came_back_empty and pace.turn(held=0) <= 0  # (under a push_budget, in turn)
        if now < pace.retry_at or pace.wait(now) > 0:  # lost the last try, or not our turn (pacer)
            return False
        if pace.drained and now < self.next_try:
            return False
        wanted = self._wanted()
        if len(hand.held) >= wanted and not (hand.reports and pace.drained):
            return False
        idle_slot = self.count - len(self.slots) > len(hand.held)
        return idle_slot or (bool(hand.reports) and len(hand.held) * 2 <= wanted)

    def _claim(self) -> None:
        """Report every ended run and claim what the slots want, in one push. With runs in hand
        or under way the push goes on in a thread of its own, so that a slot whose run ends
        meanwhile starts its next one at once; empty-handed, here."""
        hand = self.hand
        asked = self._wanted() - len(hand.held)
        empty_handed = not hand.held and not self.slots
        if empty_handed:
            self._landed(self._push(asked, patient=True), asked=asked, empty_handed=True)
            return
        self.pushing = (Aside(lambda: self._push(asked, patient=False), wake=self.wake), asked)

    def _push(self, asked: int, *, patient: bool) -> list[Run]:
        self.worker._maybe_reap(notes=True)
        return self.hand.flush(claim=asked, patient=patient)

    def _take_push(self) -> bool:
        """Whether a push is still under way; once it is over, take in what it claimed."""
        if self.pushing is None:
            return False
        aside, asked = self.pushing
        if not aside.over():
            return True
        self.pushing = None
        self._landed(aside.take(), asked=asked, empty_handed=False)
        return False

    def _landed(self, claimed: list[Run], *, asked: int, empty_handed: bool) -> None:
        hand = self.hand
        now = time.monotonic()
        hand.held_since.update({run.token: now for run in claimed})
        hand.held.extend(claimed)
        hand.note()
        self.came_back_empty = empty_handed and not claimed and not hand.pace.lost_tries
        if hand.pace.lost_tries:
            return
        hand.pace.drained = len(claimed) < asked
        if claimed:
            self.idle_since, self.delay = None, 1.0
        elif hand.pace.drained:
            self.next_try = now + self.delay
            self.delay = min(self.delay * 2, self.worker.options.poll_max)

    # ------------------------------------------------------------ runs

    def _start_runs(self, now: float) -> None:
        """Start held runs while a slot is free: each the first held run whose GPUs are free."""
        hand = self.hand
        while len(self.slots) < self.count and hand.held:
            chosen = first_fitting(hand.held, pool=self.pool)
            if chosen is None:
                return  # a run waits for GPUs another run holds
            run, gpus = chosen
            hand.held.remove(run)
            self._start(run, gpus, now)
            hand.held_since.pop(run.token, None)

    def _start(self, run: Run, gpus: tuple[str, ...] | None, now: float) -> None:
        worker, hand = self.worker, self.hand
        slot = Slot(run, gpus, now)
        on = "" if gpus is None else f" on GPU {','.join(gpus)}"
        worker.say(started_line(run) + on)
        self.slots[run.token] = slot
        with hand.lock:
            hand.running[run.token] = run
        hand.note()  # from now on it has started: if we die, its attempt is spent
        self.leases.started(run, now=now, waited=now - hand.held_since.get(run.token, now))
        slot.thread = threading.Thread(target=self._work, args=(slot,), name=f"run {run.id}", daemon=True)
        slot.thread.start()

    def _work(self, slot: Slot) -> None:
        """A run's thread: its command, as a single worker runs it."""
        try:
            check = RunCheck(self.worker.signals, taken=lambda: slot.taken)
            slot.report = self.worker.command(slot.run, check, gpus=slot.gpus)
        except TakenAway as exc:
            slot.lost = exc
        except BaseException as exc:  # told to the loop, which raises it
            slot.error = exc
        finally:
            slot.ended = True
            self.wake.set()

    def _collect(self) -> None:
        """Take in every run that ended: free its slot and GPUs, and keep its report for the next push."""
        for token, slot in list(self.slots.items()):
            if not slot.ended:
                continue
            if slot.thread is not None:
                slot.thread.join()
            del self.slots[token]
            with self.hand.lock:
                self.hand.running.pop(token, None)
            if slot.gpus is not None and self.pool is not None:
                self.pool.give(slot.gpus)
            if slot.error is not None:
                self.hand.note()
                raise slot.error
            self._ended(slot)
            self.hand.note()

    def _ended(self, slot: Slot) -> None:
        worker, hand, run = self.worker, self.hand, slot.run
        took = time.monotonic() - slot.started
        if slot.lost is not None:
            worker.summary.lost += 1
            worker.say(f"{run.id}: {slot.lost}; run stopped, nothing reported")
            if slot.heartbeat is not None:  # a move by hand leaves the run's lease ref behind
                worker.queue.store.drop_lease(run.token)
            return
        report = slot.report
        if report is None:  # held back as a suspect: nothing to report yet
            if len(hand.suspects) >= SUSPECTS:
                self.wrong_command = True
            return
        report = dataclasses.replace(report, lease_ref=slot.heartbeat is not None, args=run.args)
        with hand.lock:
            hand.reports.append(report)
        worker.seconds["run"] += took
        if report.outcome == "interrupted":
            if worker.signal is None:  # the machine is at fault (the command cannot start)
                self.ending = worker.command.stop_code or 1
            return
        hand.pace.took(took)
        if took >= worker.heartbeat_every(run.lease):
            self.ahead = False  # long runs: claim for free slots only, as a single worker does
        else:
            self.ahead = True
        how = "" if report.exit_code is None else f" (exit {report.exit_code})"
        worker.say(f"{'✓' if report.outcome == 'done' else '✗'} {run.id} {report.outcome}{how} in {took:.1f}s")
        code = worker._count(report)
        if code is not None and self.ending is None:
            self.ending = code

    def _give_back_waiting(self, now: float) -> None:
        """Runs held for a heartbeat's interval will not start soon: give them back to the queue
        for idle workers (reporting what ended in the same push), and stop claiming ahead."""
        hand = self.hand
        waited = [run for run in hand.held if now - hand.held_since.get(run.token, now) >= self.leases.every()]
        if waited:
            self.ahead = False
            hand.give_back()


class SlotLeases:
    """The leases of every run of one worker: one look (a fetch) every ``look_every`` seconds
    for a cancel of any of them, and one heartbeat push for all of them every heartbeat period
    (after a look, so that a run which lost its task never re-creates its deleted lease ref)."""

    def __init__(self, worker: Worker, slots: dict[str, Slot], *, count: int) -> None:
        self.worker, self.slots, self.count = worker, slots, count
        self.next_beat = self.next_look = 0.0

    def started(self, run: Run, *, now: float, waited: float) -> None:
        """A run started, after ``waited`` seconds in hand since its claim."""
        every = self.worker.heartbeat_every(run.lease)
        if waited >= every:
            self.next_beat = now  # it waited, silent, a heartbeat's interval: look (and beat) at once
        elif len(self.slots) == 1:
            self.next_beat = max(self.next_beat, now + every)
            self.next_look = max(self.next_look, now + self.worker.options.look_every)

    def every(self) -> float:
        """The heartbeat period of the run with the shortest lease."""
        return min(self.worker.heartbeat_every(slot.run.lease) for slot in self.slots.values())

    def tend(self, now: float, *, before_beat: Callable[[float], None]) -> None:
        """Beat or look when it is time; ``before_beat(now)`` is told first at each beat."""
        if not self.slots:
            return
        if now >= self.next_beat:
            self.next_beat = now + self.every()
            self.next_look = now + self.worker.options.look_every
            before_beat(now)
            self.look()
            self.beat()
        elif now >= self.next_look:
            self.next_look = now + self.worker.options.look_every
            self.look()

    def look(self) -> None:
        """One fetch: tell each run whose task was cancelled, requeued or reaped to stop."""
        try:
            snap = self.worker.queue.snapshot()
        except GitqueueError:
            return  # the remote is away: keep running and beating, the next look tries again
        for slot in self.slots.values():
            if slot.ended or slot.taken is not None:
                continue
            try:
                task = snap.get(slot.run.id)
            except TaskNotFound:
                task = None
            except GitqueueError:
                continue
            slot.taken = why_taken(task, slot.run)

    def beat(self) -> None:
        """One push of every running run's heartbeat (each its own lease ref)."""
        queue = self.worker.queue
        when = queue.clock()
        beats = {
            token: (slot.heartbeat, heartbeat_message(slot.run, worker=queue.worker, when=when, slots=self.count))
            for token, slot in self.slots.items()
            if slot.taken is None and not slot.ended
        }
        pushed = queue.store.heartbeats(beats, author=queue.identity, when=when)
        for token, commit in pushed.items():
            self.slots[token].heartbeat = commit


def first_fitting(held: Iterable[Run], *, pool: GpuPool | None) -> tuple[Run, tuple[str, ...] | None] | None:
    """The first held run whose GPUs are free, with the GPUs it now holds; None if none fits now."""
    for run in held:
        if pool is None:
            return run, None
        gpus = pool.take(gpus_wanted(run.task, pool=pool))
        if gpus is not None:
            return run, gpus
    return None
