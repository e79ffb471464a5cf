"""Optuna search whose only storage is the queue: every trial is a task, its result in ``done/``.

A study file names the study (the tag its trials carry), the metric, the direction, how many
trials in all and how many in the queue at once, the sampler and the search space (in the
``--sample`` spec language of :mod:`gitqueue.sweep`). Trial ``n`` of study ``quad`` is the task
``quad-000n``.

The tuner keeps no state of its own. Each :meth:`Tuner.step` reads the study's tasks, builds
a fresh in-memory Optuna study from them (done trials with their metric, failed or cancelled
ones as failed, pending and running ones as running), asks it for as many new trials as there
is room for, and submits them in one commit. The sampler's seed is the study's seed plus the
trial's number, so two tuners that see the same trials propose the same ones. Stopped and
started again, on any machine, a tuner goes on where the queue stands. Several tuners on one
study never submit a trial twice: the ids are the trial numbers, and the queue's
compare-and-swap lets one submit of each id land (the other gets ``TaskExists`` and reads
again).

Needs the optional extra: ``pip install 'gitqueue[tune]'``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitqueue.errors import GitqueueError, InvalidStudy, TaskExists
from gitqueue.queue import Queue
from gitqueue.sweep import Distribution, parse_distribution
from gitqueue.task import ID_RE, State, Task, load_yaml

SAMPLERS = ("tpe", "random", "cmaes")
DIRECTIONS = ("minimize", "maximize")
FIELDS = ("study", "metric", "direction", "trials", "parallel", "sampler", "space", "seed", "args")
FINISHED = (State.DONE, State.FAILED, State.CANCELLED)


@dataclass(frozen=True)
class Study:
    """A study file, checked: what to search, for how long, and how to judge a trial."""

    name: str
    metric: str  # e.g. result.loss: a path into the task's result
    space: Mapping[str, Distribution]
    direction: str = "minimize"
    trials: int = 100
    parallel: int = 1
    sampler: str = "tpe"
    seed: int = 0
    args: Mapping[str, Any] = field(default_factory=dict)  # fixed args every trial gets

    @classmethod
    def load(cls, path: Path) -> Study:
        """Read and check a study file; InvalidStudy naming the file and the problem."""
        try:
            data = load_yaml(path.read_bytes(), path=str(path))
        except OSError as exc:
            raise InvalidStudy(f"{path}: cannot read it ({exc.strerror})") from None
        return cls.from_mapping(data, where=str(path))

    @classmethod
    def from_mapping(cls, data: Any, *, where: str) -> Study:
        if not isinstance(data, dict):
            raise InvalidStudy(f"{where}: a study file is a mapping with study, metric and space")
        unknown = [k for k in data if k not in FIELDS]
        if unknown:
            raise InvalidStudy(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        for key in ("study", "metric", "space"):
            if key not in data:
                raise InvalidStudy(f"{where}: missing field {key!r}")
        name, metric, space = data["study"], data["metric"], data["space"]
        if not isinstance(name, str) or not ID_RE.fullmatch(name) or len(name) > 100:
            raise InvalidStudy(f"{where}: study {name!r} must be a short name of A-Z a-z 0-9 . _ - (it names trials)")
        if not isinstance(metric, str) or not metric.startswith("result.") or metric == "result.":
            raise InvalidStudy(f"{where}: metric {metric!r} must name a field of the result, e.g. result.loss")
        if not isinstance(space, dict) or not space:
            raise InvalidStudy(f"{where}: space must map each arg to a distribution, e.g. x: 'uniform:-5:5'")
        study = cls(
            name=name,
            metric=metric,
            space={str(k): _distribution(where, k, v) for k, v in space.items()},
            direction=_choice(where, data, "direction", DIRECTIONS),
            trials=_count(where, data, "trials", 100),
            parallel=_count(where, data, "parallel", 1),
            sampler=_choice(where, data, "sampler", SAMPLERS),
            seed=_count(where, data, "seed", 0, least=0),
            args=data.get("args") or {},
        )
        if not isinstance(study.args, dict) or set(study.args) & set(study.space):
            raise InvalidStudy(f"{where}: args must be a mapping of fixed args, none of them also in space")
        return study

    def trial_id(self, number: int) -> str:
        return f"{self.name}-{number:0{max(4, len(str(self.trials - 1)))}d}"

    def number(self, task_id: str) -> int | None:
        """The trial number of ``task_id``, or None if it is no trial of this study."""
        match = re.fullmatch(re.escape(self.name) + r"-(\d+)", task_id)
        return int(match.group(1)) if match else None

    def value(self, task: Task) -> float | None:
        """The metric of a done trial (None if its result lacks it or it is not a number)."""
        value: Any = task.result
        for part in self.metric.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)


def _distribution(where: str, key: Any, spec: Any) -> Distribution:
    if not isinstance(spec, str):
        raise InvalidStudy(f"{where}: space {key!r} must be a spec like 'uniform:-5:5', not {spec!r:.40}")
    try:
        return parse_distribution(spec, spec=f"{key}: {spec}")
    except GitqueueError as exc:
        raise InvalidStudy(f"{where}: {exc}") from None


def _choice(where: str, data: dict[str, Any], key: str, options: tuple[str, ...]) -> str:
    value = data.get(key, options[0])
    if value not in options:
        raise InvalidStudy(f"{where}: {key} {value!r} is not one of {', '.join(options)}")
    return str(value)


def _count(where: str, data: dict[str, Any], key: str, default: int, *, least: int = 1) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidStudy(f"{where}: {key} must be a whole number of at least {least}, not {value!r}")
    return value


@dataclass
class Progress:
    """Where a study stands after one step."""

    done: int = 0
    failed: int = 0  # failed or cancelled trials, and done ones without the metric
    queued: int = 0  # pending or running
    submitted: list[str] = field(default_factory=list)  # trial ids this step submitted
    best: Task | None = None
    best_value: float | None = None

    @property
    def finished(self) -> int:
        return self.done + self.failed


class Tuner:
    """Feeds a study's trials into a queue and reads their results back from it."""

    def __init__(self, queue: Queue, study: Study) -> None:
        self.queue = queue
        self.study = study
        self._optuna = _import_optuna()

    def trials(self) -> dict[int, Task]:
        """The study's trials in the queue, by number (its tag and an id of its pattern)."""
        found = {}
        for task in self.queue.tasks(where=f'"{self.study.name}" in tags'):
            number = self.study.number(task.id)
            if number is not None:
                found[number] = task
        return found

    def progress(self, trials: Mapping[int, Task]) -> Progress:
        """Counts and the best done trial so far."""
        progress = Progress()
        sign = 1 if self.study.direction == "minimize" else -1
        for task in trials.values():
            value = self.study.value(task) if task.state is State.DONE else None
            if task.state is State.DONE and value is not None:
                progress.done += 1
                if progress.best_value is None or sign * value < sign * progress.best_value:
                    progress.best, progress.best_value = task, value
            elif task.state in FINISHED:
                progress.failed += 1
            else:
                progress.queued += 1
        return progress

    def step(self) -> Progress:
        """Read the study from the queue and submit trials until ``parallel`` are in it (or
        ``trials`` have been made). One commit; a rival tuner's landing first is no error."""
        trials = self.trials()
        progress = self.progress(trials)
        room = min(self.study.parallel - progress.queued, self.study.trials - len(trials))
        if room <= 0:
            return progress
        study = self.rebuild(trials)
        first = max(trials, default=-1) + 1
        specs: list[dict[str, Any]] = []
        for number in range(first, first + room):
            study.sampler = self._sampler(self.study.seed + number)
            trial = study.ask(self._distributions())
            specs.append({"id": self.study.trial_id(number), "args": {**self.study.args, **trial.params}})
        subject = f"tune {self.study.name}: trial{'s' if len(specs) > 1 else ''} {', '.join(s['id'] for s in specs)}"
        try:
            progress.submitted = self.queue.submit(
                [{**s, "tags": [self.study.name]} for s in specs], subject=f"{subject} ({self.study.sampler})"
            )
        except TaskExists:
            return progress  # another tuner submitted these numbers first: read again next step
        progress.queued += len(specs)
        return progress

    def rebuild(self, trials: Mapping[int, Task]) -> Any:
        """A fresh in-memory Optuna study holding every trial the queue has."""
        optuna = self._optuna
        states = optuna.trial.TrialState
        study = optuna.create_study(direction=self.study.direction, sampler=self._sampler(self.study.seed))
        distributions = self._distributions()
        for _number, task in sorted(trials.items()):
            params = {k: task.args[k] for k in distributions if k in task.args}
            if len(params) != len(distributions) or not all(d.contains(params[k]) for k, d in self.study.space.items()):
                continue  # edited by hand beyond the space: Optuna could not hold it
            value = self.study.value(task) if task.state is State.DONE else None
            if value is not None:
                state = states.COMPLETE
            elif task.state in FINISHED:
                state = states.FAIL
            else:
                state = states.RUNNING
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=value, state=state)
            )
        return study

    def _distributions(self) -> dict[str, Any]:
        return {key: _optuna_distribution(self._optuna, dist) for key, dist in self.study.space.items()}

    def _sampler(self, seed: int) -> Any:
        samplers = self._optuna.samplers
        if self.study.sampler == "random":
            return samplers.RandomSampler(seed=seed)
        if self.study.sampler == "cmaes":
            return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
        return samplers.TPESampler(seed=seed)

    def run(self, *, poll: float, sleep: Callable[[float], None], say: Callable[[Progress], None]) -> Progress:
        """Step until every trial has finished, telling ``say`` whenever something changed."""
        last: tuple[int, int, int] | None = None
        while True:
            progress = self.step()
            now = (progress.done, progress.failed, progress.queued)
            if now != last:
                say(progress)
                last = now
            if progress.finished >= self.study.trials:
                return progress
            sleep(poll)


def _optuna_distribution(optuna: Any, dist: Distribution) -> Any:
    distributions = optuna.distributions
    if dist.kind == "choice":
        return distributions.CategoricalDistribution(list(dist.choices))
    if dist.kind == "int":
        return distributions.IntDistribution(int(dist.low), int(dist.high))
    return distributions.FloatDistribution(float(dist.low), float(dist.high), log=dist.kind == "loguniform")


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise GitqueueError("gitqueue tune needs Optuna: pip install 'gitqueue[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna
