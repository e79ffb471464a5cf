"""The experiment-script API: ``@gitqueue.loop`` and ``gitqueue.current_task()``.

``loop`` turns a function into a worker whose runner calls it in this thread: the task's args
are bound to its parameters (converted to their annotated types), its return value becomes the
result. It builds a :class:`~gitqueue.worker.worker.Worker` and calls only what a runner is given:
the run and its :class:`~gitqueue.worker.lease.Watch`.
"""

from __future__ import annotations

import contextvars
import inspect
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from gitqueue.errors import GitqueueError
from gitqueue.queue import ERROR_TAIL, Queue, Report, Run
from gitqueue.worker.command import MissingArg
from gitqueue.worker.lease import BackgroundWatch, Watch
from gitqueue.worker.options import Options
from gitqueue.worker.worker import Worker

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
        runner = _runner(function)

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


def _runner(function: Callable[..., Any]) -> Callable[[Run, Watch], Report]:
    """A runner calling ``function`` in this thread, with heartbeats from a second one."""
    try:  # scripts with `from __future__ import annotations` have strings for annotations
        signature = inspect.signature(function, eval_str=True)
    except (NameError, SyntaxError, TypeError):
        signature = inspect.signature(function)

    def runner(run: Run, watch: Watch) -> Report:
        try:
            kwargs = _bind(signature, run.args)
        except MissingArg as exc:
            return Report(run.id, run.token, "failed", error=str(exc), final=True)
        beating = BackgroundWatch(watch)
        token = _current.set(run)
        signals = watch.signals
        try:
            if signals.received is not None:  # it came before the function started
                raise KeyboardInterrupt
            signals.in_process = True  # from now on a SIGINT or SIGTERM raises KeyboardInterrupt here
            value = function(**kwargs)
        except KeyboardInterrupt:
            return Report(run.id, run.token, "interrupted", error="interrupted")
        except Exception as exc:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            return Report(run.id, run.token, "failed", error=text[-ERROR_TAIL:])
        finally:
            signals.in_process = False
            _current.reset(token)
            beating.stop()
        result = value if isinstance(value, dict) or value is None else {"value": value}
        return Report(run.id, run.token, "done", result=result)

    return runner


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
