"""The ``gitqueue`` command: a thin face over :class:`gitqueue.Queue`.

Each command opens the queue, calls one method and prints. Domain errors become one line
on stderr and the exit code their class names (see ``gitqueue --help``).
"""

from __future__ import annotations

import copy
import functools
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

from gitqueue import __version__, config
from gitqueue import validate as validate_rules
from gitqueue.config import SETTINGS_FILE, resolve_queue_url
from gitqueue.errors import EditConflict, GitqueueError, InvalidTask, NothingToClaim
from gitqueue.queue import Queue, default_worker
from gitqueue.task import State, Task, load_yaml

if TYPE_CHECKING:  # what only some commands use loads in them: `gitqueue work` on a fleet starts fast
    from rich.console import Console
    from rich.table import Table

    from gitqueue.snapshot import Problem
    from gitqueue.sweep import Sweep

EXIT_CODES = """Exit codes: 0 ok; 1 error; 2 bad usage; 3 nothing to claim; 4 the run no longer holds
the task (nothing changed); 5 the queue's remote is unreachable (retried for --patience seconds);
6 the remote refused our credentials (not retried); 7 (work) a task it ran failed."""


_argument_type = getattr(TyperArgument, "display_type_rich", None)


def _named_argument_type(self: TyperArgument, ctx: Any) -> str | None:
    """An argument with a metavar says what it takes; typer's own ``<list[str]>`` says nothing."""
    return None if self.metavar is not None or _argument_type is None else _argument_type(self, ctx)


if _argument_type is not None:  # typer 0.29 and later; older ones show no such type
    setattr(TyperArgument, "display_type_rich", _named_argument_type)  # noqa: B010 (typer's own name)


class _Group(TyperGroup):
    """Turns gitqueue's own errors into one line on stderr and their exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except GitqueueError as exc:
            typer.echo(f"gitqueue: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        finally:
            config.cli_patience = None  # one command's --patience, not the rest of the process's


app = typer.Typer(
    cls=_Group,
    help="A task queue for experiments in which the queue is a git repository.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

QueueOpt = Annotated[
    str | None,
    typer.Option("--queue", "-q", envvar="GITQUEUE_QUEUE", help="Queue URL (else the nearest .gitqueue file)."),
]
FormatOpt = Annotated[str, typer.Option("--format", "-f", help="table, json or ids.")]
WorkerOpt = Annotated[
    str | None, typer.Option("--worker", "-w", envvar="GITQUEUE_WORKER", help="Worker name [default: host/pid].")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="GITQUEUE_TOKEN", help="The run's token from `claim`; without it, any run."),
]
WhereOpt = Annotated[
    str | None,
    typer.Option("--where", "-W", help="""A filter like 'args.lr < 0.01 and "s3" in tags' (see ls --help)."""),
]


def _complete_ids(ctx: typer.Context, incomplete: str) -> list[str]:
    """Task ids for the shell, from the local cache (no fetch): see gitqueue.complete."""
    from gitqueue import complete

    return complete.task_ids(incomplete, queue=ctx.params.get("queue"), command=ctx.info_name or "")


def _complete_states(incomplete: str) -> list[str]:
    from gitqueue import complete

    return complete.states(incomplete)


IdArg = Annotated[str, typer.Argument(metavar="ID", autocompletion=_complete_ids)]
IdsArg = Annotated[list[str] | None, typer.Argument(metavar="ID", autocompletion=_complete_ids)]


@functools.cache
def err() -> Console:
    """The rich console on stderr, made on first use: rich loads only for the commands that print
    through it (not for `gitqueue work`, which a fleet starts many of at once)."""
    from rich.console import Console

    return Console(stderr=True)


@functools.cache
def out() -> Console:
    """The rich console on stdout (see :func:`err`)."""
    from rich.console import Console

    # In a terminal tables fit its width; piped into a file or a pager, rows stay whole.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gitqueue {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    patience: Annotated[
        float | None,
        typer.Option(
            min=0, envvar="GITQUEUE_PATIENCE", help="Seconds to keep trying an unreachable remote [default: 120]."
        ),
    ] = None,
) -> None:
    """A task queue for experiments in which the queue is a git repository."""
    config.cli_patience = patience  # every Queue the command opens reads it (config.patience)


# ---------------------------------------------------------------- parsing helpers


def parse_pairs(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["lr=0.01", "bs=32"]`` -> ``{"lr": 0.01, "bs": 32}``."""
    pairs: dict[str, Any] = {}
    if not items:
        return pairs  # (a worker without --label need not load sweep.py)
    from gitqueue.sweep import parse_value

    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=what)
        pairs[key] = parse_value(value)
    return pairs


def _labels(items: list[str] | None) -> dict[str, str]:
    return {k: str(v) for k, v in parse_pairs(items, "--label").items()}


def read_specs(source: str) -> list[dict[str, Any]]:
    """Tasks from a YAML file (a list, or ``tasks:``), a JSONL file, or ``-`` for stdin."""
    name = "<stdin>" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {source}: {exc.strerror}", param_hint="--from") from None
    if source.endswith(".jsonl") or (source == "-" and text.lstrip().startswith("{") and "\n{" in text):
        specs = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    specs.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidTask(name, f"not JSON: {exc.msg}", line=number, column=exc.colno) from None
        return specs
    data = load_yaml(text, path=name)
    if isinstance(data, dict) and isinstance(data.get("tasks"), list):
        data = data["tasks"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InvalidTask(name, "expected a list of tasks (or a mapping with 'tasks:')")
    return data


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={_compact(v)}" for k, v in value.items())
    return json.dumps(value) if isinstance(value, list) else str(value)


def _check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise typer.BadParameter(f"{fmt!r}: choose one of {', '.join(allowed)}", param_hint="--format")


# ---------------------------------------------------------------- commands


@app.command()
def init(
    url: Annotated[str | None, typer.Argument(help="Remote URL or path; none for an embedded local queue.")] = None,
    branch: Annotated[
        str | None, typer.Option(help="The queue's branch [default: the one the remote's HEAD names].")
    ] = None,
    no_hooks: Annotated[
        bool, typer.Option("--no-hooks", help="Install no server hook in a repository init creates.")
    ] = False,
) -> None:
    """Create or attach a queue and remember it in ./.gitqueue.

    With no URL, makes an embedded bare repository ./.gitqueue.git. With a URL (a path,
    file://, git://, ssh:// or https://) it initialises an empty remote, or attaches to an
    existing queue without changing it. The queue lives on the branch the remote's HEAD
    names (what `git clone` checks out), or on --branch. A repository that holds other
    work (your code) is refused unless --branch names the queue's own branch. A repository
    init creates on this machine gets the server hook that refuses pushes breaking the
    queue (--no-hooks: none). Put passwords in git's credential helper, not in the URL:
    gitqueue neither prints nor stores them.

    \b
    Examples:
      gitqueue init
      gitqueue init git@github.com:me/sweeps.git
      gitqueue init git@github.com:me/project.git --branch gitqueue   # beside your code
    """
    with Queue.init(url, branch=branch, hooks=not no_hooks) as queue:
        for note in queue.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(f"queue ready: {queue.url} on branch {queue.branch} (remembered in {Path.cwd() / '.gitqueue'})")


GridOpt = Annotated[
    list[str] | None, typer.Option("--grid", "-g", metavar="KEY=V1,V2,...", help="Sweep over these values.")
]
SampleOpt = Annotated[
    list[str] | None,
    typer.Option(
        metavar="KEY=DIST", help="KEY=loguniform:A:B, uniform:A:B, int:A:B or choice:V1,V2: sample the values."
    ),
]
RequireOpt = Annotated[
    list[str] | None, typer.Option(metavar="KEY=VALUE", help="A label a worker must have (repeatable).")
]
AfterOpt = Annotated[
    list[str] | None,
    typer.Option("--after", metavar="ID", help="ID of a task that must be done first (repeatable)."),
]


def _common_fields(
    fields: dict[str, int | None], *, tag: list[str] | None, require: list[str] | None, after: list[str] | None
) -> dict[str, Any]:
    """The fields `submit`'s options give every task it makes (``fields``: those given as they are)."""
    common: dict[str, Any] = {key: value for key, value in fields.items() if value is not None}
    if tag:
        common["tags"] = list(tag)
    if require:
        common["requires"] = parse_pairs(require, "--require")
    if after:
        common["after"] = list(after)
    return common


def _submit_specs(
    plan: Sweep, common: dict[str, Any], *, pairs: list[str] | None, source: str | None, task_id: str | None
) -> list[dict[str, Any]]:
    """The task specs `submit` makes: --from's tasks, then the sweep's (or the one task of KEY=VALUE pairs)."""
    specs: list[dict[str, Any]] = []
    if source and (plan.sample or plan.repeat):
        raise typer.BadParameter("--sample and --repeat make tasks of their own: they do not apply to --from's tasks")
    if source:
        specs = [{**common, **spec} if isinstance(spec, dict) else spec for spec in read_specs(source)]
    if not plan.empty:
        specs += [{**common, "args": args} for args in plan.args()]
    elif pairs or task_id is not None:
        specs.append({**common, "args": dict(plan.fixed)})
    elif not source:
        raise typer.BadParameter(
            "nothing to submit: give KEY=VALUE pairs, --grid, --sample or --from (or --id for a task without args)"
        )
    return specs


@app.command()
def submit(
    pairs: Annotated[list[str] | None, typer.Argument(metavar="KEY=VALUE", help="Arguments of one task.")] = None,
    grid: GridOpt = None,
    sample: SampleOpt = None,
    samples: Annotated[int | None, typer.Option(help="How many samples (each grid point gets them all).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the samples: the same seed makes the same tasks.")] = None,
    repeat: Annotated[int | None, typer.Option(help="Repeat each task N times with seed: 0..N-1.")] = None,
    repeat_key: Annotated[str | None, typer.Option(help="The arg --repeat sets [default: seed].")] = None,
    source: Annotated[str | None, typer.Option("--from", help="YAML or JSONL file of tasks, - for stdin.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first [default: 0].")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", metavar="TAG", help="A tag (repeatable).")] = None,
    require: RequireOpt = None,
    max_attempts: Annotated[int | None, typer.Option(help="Runs before the task fails for good.")] = None,
    lease: Annotated[int | None, typer.Option(help="Seconds a run holds the task without a heartbeat.")] = None,
    after: AfterOpt = None,
    task_id: Annotated[str | None, typer.Option("--id", help="Id of the task (one task only).")] = None,
    queue: QueueOpt = None,
    fmt: FormatOpt = "ids",
) -> None:
    """Add tasks: one, a grid (cartesian product), random samples or a file of them, in one commit.

    \b
    Examples:
      gitqueue submit lr=0.01 bs=32
      gitqueue submit --grid lr=0.1,0.01,0.001 --grid bs=32,64 --tag sweep-1
      gitqueue submit --sample lr=loguniform:1e-5:1e-1 --sample bs=choice:16,32,64 --samples 50 --seed 0
      gitqueue submit --grid model=a,b --repeat 3          # seed: 0, 1, 2 for each model
      gitqueue submit eval=1 --after 000012-lr0.01         # claimed once 000012-lr0.01 is done
      gitqueue submit --from tasks.yaml      # a list of {args: ..., priority: ...}
      seq 5 | jq -c '{args: {seed: .}}' | gitqueue submit --from -
    """
    from gitqueue import progress
    from gitqueue.sweep import Sweep

    _check_format(fmt, ("ids", "json"))
    plan = Sweep.from_specs(
        fixed=pairs or [],
        grid=grid or [],
        sample=sample or [],
        samples=samples,
        seed=seed,
        repeat=repeat,
        repeat_key=repeat_key,
    )
    fields = {"priority": priority, "max_attempts": max_attempts, "lease": lease}
    common = _common_fields(fields, tag=tag, require=require, after=after)
    specs = _submit_specs(plan, common, pairs=pairs, source=source, task_id=task_id)
    if task_id is not None:
        if len(specs) != 1:
            raise typer.BadParameter("--id names one task; a grid or file makes several", param_hint="--id")
        specs[0]["id"] = task_id
    subject = plan.subject(len(specs)) if not plan.empty and len(specs) > 1 else None
    with Queue.open(queue) as q, progress.on_terminal(q, err()):
        ids = q.submit(specs, subject=subject)
    if fmt == "json":
        _print_json(ids)
    else:
        for task_id_ in ids:
            typer.echo(task_id_)
        err().print(f"submitted {len(ids)} task{'s' if len(ids) != 1 else ''}")


@app.command()
def tune(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY.yaml", help="The study: space, metric, trials.")],
    best: Annotated[bool, typer.Option("--best", help="Print the best trial's args and result, and exit.")] = False,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the queue.")] = 5.0,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json (with --best).")] = "table",
) -> None:
    """Run an Optuna search whose storage is the queue: keep `parallel` trials in it until
    `trials` are done. Stop it and start it again anywhere: it goes on from the queue's tasks.
    Needs `pip install 'gitqueue[tune]'`.

    \b
    A study file:
      study: quad            # the tag its trials carry; trial 7 is the task quad-0007
      metric: result.loss
      direction: minimize    # or maximize
      trials: 30
      parallel: 3            # trials pending or running at once
      sampler: tpe           # or random, cmaes
      space: {x: "uniform:-5:5", y: "uniform:-5:5", lr: "loguniform:1e-5:1e-1"}

    \b
    Examples:
      gitqueue tune quad.yaml &
      gitqueue work --wait -- python quad.py --x {x} --y {y}
      gitqueue tune quad.yaml --best
    """
    from gitqueue.tune import Study, Tuner

    _check_format(fmt, ("table", "json"))
    study = Study.load(study_file)
    with Queue.open(queue) as q:
        tuner = Tuner(q, study)
        if best:
            progress = tuner.progress(tuner.trials())
        else:
            try:
                progress = tuner.run(poll=poll, sleep=time.sleep, say=lambda p: err().print(_tune_line(study.name, p)))
            except KeyboardInterrupt:
                err().print(f"{study.name}: stopped; `gitqueue tune {study_file}` goes on from the queue")
                raise typer.Exit(130) from None
    if not best:
        return
    if progress.best is None:
        raise GitqueueError(f"{study.name}: no trial is done with {study.metric} yet")
    found = {"id": progress.best.id, "value": progress.best_value, "args": progress.best.args}
    if fmt == "json":
        _print_json({**found, "result": progress.best.result})
    else:
        typer.echo(f"{found['id']}  {study.metric} = {found['value']}")
        typer.echo(f"args:   {json.dumps(found['args'])}")
        typer.echo(f"result: {json.dumps(progress.best.result, default=str)}")


def _tune_line(name: str, progress: Any) -> str:
    best = "" if progress.best is None else f", best {progress.best_value:.6g} ({progress.best.id})"
    return f"{name}: {progress.done} done, {progress.failed} failed, {progress.queued} in the queue{best}"


@app.command()
def claim(
    worker: WorkerOpt = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", "--require", "-l", metavar="KEY=VALUE", help="A label of this worker."),
    ] = None,
    lease: Annotated[int | None, typer.Option(help="Lease in seconds [default: the task's, else queue's].")] = None,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """Claim the best pending task (highest priority, then id) and print it.

    Exits 3 when nothing this worker may take is pending. Pass the printed token to `done`
    or `fail` so that a run which lost its task changes nothing.

    \b
    Example:
      while task=$(gitqueue claim --format json); do
        id=$(echo "$task" | jq -r .id); token=$(echo "$task" | jq -r .token)
        python train.py $(echo "$task" | jq -r '.args.lr') && gitqueue done "$id" --token "$token"
      done
    """
    _check_format(fmt, ("table", "json"))
    with Queue.open(queue, worker=worker or default_worker()) as q:
        run = q.claim(labels=_labels(label), lease=lease)
    if run is None:
        raise NothingToClaim("nothing to claim: no pending task this worker may take")
    if fmt == "json":
        _print_json(run.to_dict())
    else:
        typer.echo(f"claimed {run.id} (attempt {run.attempt}, token {run.token}, lease {run.lease}s)")
        typer.echo(f"args: {_compact(run.args)}")


@app.command()
def done(
    task_id: IdArg,
    result: Annotated[
        list[str] | None,
        typer.Option("--result", "-r", metavar="KEY=VALUE", help="A field of the result (repeatable)."),
    ] = None,
    result_file: Annotated[Path | None, typer.Option(help="A JSON or YAML mapping: the result.")] = None,
    token: TokenOpt = None,
    worker: WorkerOpt = None,
    queue: QueueOpt = None,
) -> None:
    """Finish a running task as done, with its result.

    \b
    Examples:
      gitqueue done 000003-lr0.01-bs32 --token 3f9a0c1d2e4b5a69 --result acc=0.93 --result loss=0.21
      gitqueue done 000003-lr0.01-bs32 --result-file metrics.json
    """
    value: Any = parse_pairs(result, "--result") or None
    if result_file is not None:
        loaded = load_yaml(result_file.read_bytes(), path=str(result_file))
        if not isinstance(loaded, dict):
            raise InvalidTask(str(result_file), "a result file must hold a mapping")
        value = {**loaded, **(value or {})}
    with Queue.open(queue, worker=worker) as q:
        task = q.done(task_id, token=token, result=value)
    typer.echo(f"{task.id}: done")


@app.command()
def fail(
    task_id: IdArg,
    error: Annotated[str | None, typer.Option("--error", "-e", help="What went wrong.")] = None,
    exit_code: Annotated[int | None, typer.Option(help="The run's exit status.")] = None,
    token: TokenOpt = None,
    worker: WorkerOpt = None,
    queue: QueueOpt = None,
) -> None:
    """Fail a running task's attempt: back to pending while attempts remain, else failed/.

    \b
    Example:
      gitqueue fail 000003-lr0.01-bs32 --token 3f9a0c1d2e4b5a69 --error "CUDA out of memory"
    """
    with Queue.open(queue, worker=worker) as q:
        task = q.fail(task_id, token=token, error=error, exit_code=exit_code)
    typer.echo(f"{task.id}: {task.state.value} (attempts spent {task.attempts_spent})")


@app.command()
def requeue(
    task_ids: IdsArg = None,
    where: WhereOpt = None,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json (the ids).")] = "text",
) -> None:
    """Send tasks back to pending: to rerun done ones, retry failed ones, revive cancelled ones.

    A running task's run is cut off: its later report changes nothing. With --where, every
    task the filter matches that is not pending, in the same one commit. No ids and no
    --where (say, `$(gitqueue ls ...)` found none) requeues nothing, and that is fine.

    \b
    Examples:
      gitqueue requeue 000007-lr0.1-bs64 000008-lr0.1-bs128
      gitqueue requeue $(gitqueue ls --state failed --format ids)
      gitqueue requeue --where 'state == "failed" and args.lr < 0.1'
    """
    _check_format(fmt, ("text", "json"))
    with Queue.open(queue) as q:
        ids = q.requeue(task_ids or [], where=where)
    _print_ids("requeued", ids, fmt)


def _print_ids(verb: str, ids: list[str], fmt: str) -> None:
    if fmt == "json":
        _print_json(ids)
    else:
        typer.echo(f"{verb} {len(ids)}" + (f": {' '.join(ids)}" if ids else ""))


@app.command()
def cancel(
    task_ids: IdsArg = None,
    where: WhereOpt = None,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json (the ids).")] = "text",
) -> None:
    """Withdraw pending or running tasks (a running task's worker stops it within seconds).

    With --where, every pending or running task the filter matches, in one commit. No ids
    and no --where cancels nothing.

    \b
    Examples:
      gitqueue cancel 000012-lr0.001-bs32
      gitqueue cancel --where 'args.lr >= 0.1 and "sweep-3" in tags' --format json
    """
    _check_format(fmt, ("text", "json"))
    with Queue.open(queue) as q:
        ids = q.cancel(task_ids or [], where=where)
    _print_ids("cancelled", ids, fmt)


@app.command("ls")
def ls(
    state: Annotated[
        str | None,
        typer.Option(
            "--state", "-s", help="pending, running, done, failed, cancelled.", autocompletion=_complete_states
        ),
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only tasks with this tag.")] = None,
    where: WhereOpt = None,
    queue: QueueOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """List tasks, highest priority first, then by id; then each invalid task file, with why.

    \b
    Examples:
      gitqueue ls --state pending
      gitqueue ls --tag sweep-1 --format json
      gitqueue ls --where 'args.lr < 0.01 and "sweep-3" in tags'
      gitqueue ls --where 'state in ["failed", "cancelled"] or result.acc >= 0.9'

    \b
    --where fields: id state priority tags args.NAME requires.NAME max_attempts lease
      cmd result.NAME attempts (runs so far) worker submitted.at submitted.by
    operators: < <= > >= == != in, not in, and, or, not, ( ); literals: 0.01 "text"
      true false null [lists]. A missing field is null and never orders: args.lr < 1
      skips tasks without lr. Numbers compare with numbers, strings with strings.
    """
    _check_format(fmt, ("table", "json", "ids"))
    if state is not None and state not in {s.value for s in State}:
        raise typer.BadParameter(f"{state!r}: one of {', '.join(s.value for s in State)}", param_hint="--state")
    problems: list[Problem] = []
    with Queue.open(queue) as q:
        tasks = [t for t in q.tasks(state, where=where, problems=problems) if tag is None or tag in t.tags]
    if where is not None or tag is not None:  # a filter cannot look inside a file that does not parse
        if problems:
            err().print(f"{len(problems)} invalid task file(s) not shown: `gitqueue validate` names them")
        problems = []
    if fmt == "json":
        shown = validate_rules.display
        invalid = [{"path": shown(p.path), "invalid": shown(p.message)} for p in problems]
        _print_json([t.to_dict() for t in tasks] + invalid)
    elif fmt == "ids":
        for task in tasks:
            typer.echo(task.id)
        if problems:
            err().print(f"{len(problems)} invalid task file(s) left out: `gitqueue validate` names them")
    else:
        rows = []
        for task in tasks:
            worker = (task.run or {}).get("worker") or (task.attempts[-1].get("worker") if task.attempts else "")
            tries = len(task.attempts) + (task.state is State.RUNNING)  # the run under way counts
            rows.append([task.id, task.state.value, task.priority, _compact(task.args), tries, worker])
        print_table(["ID", "STATE", "PRI", "ARGS", "TRIES", "WORKER"], rows)
        for problem in problems:
            typer.echo(f"invalid  {validate_rules.display(problem.message)}")


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Columns aligned with plain text: fast for 100,000 rows, and clean when piped. What a
    queue holds (args, results, workers) is shown, never sent: a terminal escape is printed
    as ``\x1b``, as validate prints file names."""
    cells = [headers, *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    sys.stdout.write("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if text.isprintable() else validate_rules.display(text)


@app.command()
def show(
    task_id: IdArg,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="yaml or json.")] = "yaml",
) -> None:
    """Show one task: its state and its file as the queue holds it.

    \b
    Example:
      gitqueue show 000003-lr0.01-bs32
    """
    _check_format(fmt, ("yaml", "json"))
    with Queue.open(queue) as q:
        task = q.get(task_id)
        waiting = q.waiting_on(task)
    if fmt == "json":
        _print_json({**task.to_dict(), "waiting": waiting and waiting.to_dict()})
    else:
        typer.echo(f"# {task.path} ({task.state.value})")
        if waiting is not None:
            on = ", ".join(f"{dep} ({state})" for dep, state in waiting.on.items())
            typer.echo(f"# waits on {on}" + (f"; stuck: {waiting.stuck}" if waiting.stuck else ""))
        typer.echo(task.text, nl=not task.text.endswith("\n"))


@app.command()
def status(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh in place until Ctrl-C.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.")] = 2.0,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """Counts per state, the oldest pending task, and running tasks with their workers.

    \b
    Examples:
      gitqueue status
      gitqueue status --watch
    """
    from gitqueue import progress

    _check_format(fmt, ("table", "json"))
    with Queue.open(queue) as q:
        if fmt == "json":
            _print_json(progress.queue_status(q))
            return
        _warn_head(q)
        if not watch:
            out().print(_status_view(progress.queue_status(q)))
            return
        if not out().is_terminal:  # a log or a pipe: a line each time something changed
            try:
                progress.watch_lines(q, interval=interval, emit=typer.echo)
            except KeyboardInterrupt:
                pass
            return
        from rich.live import Live

        with Live(_status_view(progress.queue_status(q)), console=out(), auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(_status_view(progress.queue_status(q)), refresh=True)
            except KeyboardInterrupt:
                pass


def _warn_head(q: Queue) -> None:
    warning = q.head_warning()
    if warning:
        typer.echo(f"gitqueue: warning: {warning}", err=True)


def _status_view(info: dict[str, Any]) -> Table:
    from rich.markup import escape
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    from gitqueue import progress

    grid = Table.grid(padding=(0, 2))
    counts = info["counts"]
    grid.add_row(f"[bold]{escape(info['queue'])}[/]")  # escape: what a queue holds is never markup
    grid.add_row("  ".join(f"{state} {n}" for state, n in counts.items()) + f"   (total {info['total']})")
    prog = progress.Progress(**info["progress"])
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(prog.total, 1), completed=prog.finished, width=40),
        f"{prog.finished}/{prog.total} finished ({100 * prog.fraction:.0f}%)  {prog.describe()}",
    )
    grid.add_row(bar)
    if info["oldest_pending"]:
        oldest = info["oldest_pending"]
        when = f"submitted {oldest['submitted']}" if oldest["submitted"] else "written by hand: no submit time"
        grid.add_row(f"oldest pending: {oldest['id']} ({when})")
    if info["waiting"]:
        grid.add_row(f"waiting on other tasks: {info['waiting']} (stuck {len(info['stuck'])})")
    for row in info["stuck"]:
        grid.add_row(f"[red]stuck[/] {row['id']}: {escape(str(row['stuck']))}")
    if info["running"]:
        phases = [row["phase"] for row in info["running"]]
        grid.add_row(
            f"runs: {phases.count('running')} running, {phases.count('held')} held in a batch (not started), "
            f"{phases.count('claimed')} claimed with no heartbeat yet"
        )
        running = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("TASK", "PHASE", "WORKER", "ATTEMPT", "FOR", "HEARTBEAT", "LEASE ENDS"):
            running.add_column(column)
        for row in info["running"]:
            age = "" if row["age"] is None else progress.format_duration(row["age"])
            beat, ends = row["heartbeat"] or "-", row["lease_ends"] or "-"
            running.add_row(row["id"], row["phase"], escape(str(row["worker"])), str(row["attempt"]), age, beat, ends)
        grid.add_row(running)
    for row in info.get("stopping", []):
        grid.add_row(f"stopping {row['id']} (worker {row['worker']}): its task was taken away; its command is ending")
    for problem in info["invalid"]:
        grid.add_row(f"[red]invalid[/] {escape(problem['problem'])}")
    return grid


# `work`'s options that take more than a line
LabelOpt = Annotated[
    list[str] | None,
    typer.Option("--label", "-l", metavar="KEY=VALUE", help="A label of this worker (repeatable)."),
]
MaxFailuresOpt = Annotated[int, typer.Option(min=0, help="Stop (exit 1) after this many failures in a row; 0: never.")]
AllowTaskCmdOpt = Annotated[
    bool, typer.Option("--allow-task-cmd", help="Run a task's own cmd: anyone who can push gains code execution.")
]
MaxBatchOpt = Annotated[
    int, typer.Option(min=1, help="Short tasks: hold up to N claims and report them in one push (1: one by one).")
]
ReapEveryOpt = Annotated[
    float,
    typer.Option(help="Seconds between looks for dead runs (lease run out, or their worker here gone)."),
]
MaxSkewOpt = Annotated[
    float, typer.Option(help="Seconds of clock difference to allow when judging another machine's lease.")
]
TaskTimeoutOpt = Annotated[
    float | None, typer.Option(min=0.001, help="Stop a run after this many seconds (a task's timeout wins).")
]


@app.command(context_settings={"allow_interspersed_args": False})
def work(
    command: Annotated[list[str] | None, typer.Argument(metavar="-- CMD [ARG]", help="Command run per task.")] = None,
    worker: WorkerOpt = None,
    label: LabelOpt = None,
    max_tasks: Annotated[int | None, typer.Option(help="Stop after this many tasks.")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Poll an empty queue this many seconds.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Poll an empty queue for ever (with backoff).")] = False,
    max_failures: MaxFailuresOpt = 5,
    allow_task_cmd: AllowTaskCmdOpt = False,
    log_dir: Annotated[Path, typer.Option(help="Where each run's output is logged.")] = Path("gitqueue-logs"),
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping a run.")] = 10.0,
    max_batch: MaxBatchOpt = 64,
    batch_seconds: Annotated[float, typer.Option(hidden=True, help="Size batches to about this much work.")] = 1.0,
    reap_every: ReapEveryOpt = 30.0,
    max_skew: MaxSkewOpt = 30.0,
    task_timeout: TaskTimeoutOpt = None,
    slots: Annotated[int | None, typer.Option(help="Runs at once (default: one per GPU, else 1).")] = None,
    gpus: Annotated[str | None, typer.Option(help="GPUs this worker owns: 0,1,2,3 or all; one per run.")] = None,
    queue: QueueOpt = None,
) -> None:
    """Work through the queue: claim a task, run CMD with its args, report, repeat.

    {name} and {a.b} in CMD's arguments become the task's args (no shell is involved). The command also gets
    GITQUEUE_TASK_ID, GITQUEUE_ARGS (JSON), GITQUEUE_ATTEMPT and GITQUEUE_RESULT_FILE: a JSON or YAML mapping written
    there becomes the task's result. Exit 0 marks the task done; anything else fails the attempt. A run past its
    task's `timeout` (else --task-timeout) gets SIGTERM, SIGKILL after --grace, and spends its attempt as `timeout`.
    Ctrl-C, SIGTERM or SIGUSR1 (Slurm's warning before a job's time limit) stops the run and returns its task without
    spending an attempt; its next run is still numbered one higher, as GITQUEUE_ATTEMPT counts runs. --slots N runs N
    tasks at once; --gpus gives each its own GPUs in CUDA_VISIBLE_DEVICES.

    The worker exits 0 when nothing is left for it and every task it ran was done (or it ran none); 7 if any task it
    ran failed, even one that will be retried; 1 if it stopped at --max-failures failures in a row; 2 if its command
    names a placeholder none of the tasks it tried has; 128+N after signal N; 127 if CMD cannot start.

    \b
    Examples:
      gitqueue work -- python train.py --lr {lr} --batch-size {bs}
      gitqueue work --gpus all --wait -- ./run.sh {model.name}
    """
    from gitqueue.worker import Options, Worker

    options = Options(
        command=list(command or []),
        labels=_labels(label),
        max_tasks=max_tasks,
        idle_timeout=idle_timeout,
        wait=wait,
        max_failures=max_failures,
        allow_task_cmd=allow_task_cmd,
        log_dir=log_dir,
        grace=grace,
        reap_every=reap_every,
        max_batch=max_batch,
        batch_seconds=batch_seconds,
        task_timeout=task_timeout,
        **_slots_and_gpus(slots=slots, gpus=gpus),
    )
    with Queue.open(queue, worker=worker or default_worker(), max_skew=max_skew, share_first_fetch=True) as q:
        code = Worker(q, options).run()
    raise typer.Exit(code)


def _slots_and_gpus(*, slots: int | None, gpus: str | None) -> dict[str, Any]:
    """The worker's ``slots`` and ``gpus`` options from ``--slots`` and ``--gpus``."""
    from gitqueue.gpus import parse_gpus, slot_count

    owned = None if gpus is None else parse_gpus(gpus)
    return {"slots": slot_count(gpus=owned, slots=slots), "gpus": owned}


@app.command()
def reap(
    max_skew: Annotated[float, typer.Option(help="Seconds of clock difference to allow between machines.")] = 30.0,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
) -> None:
    """Return tasks whose worker died to pending (or to failed), and say what is left running.

    A worker that died on this machine is known at once: its process is gone (workers note
    what they hold in the local cache). Elsewhere a run is dead when its last heartbeat is
    older than its lease plus --max-skew by this machine's clock. Only a run that started
    spends an attempt; claims a worker held but never started go back with none. Workers
    reap as they go; this is for when none is running.

    \b
    Examples:
      gitqueue reap
      gitqueue reap --max-skew 5 --format json
    """
    _check_format(fmt, ("text", "json"))
    with Queue.open(queue, max_skew=max_skew) as q:
        reaped = q.reap_runs()
        left = q.runs()
    if fmt == "json":
        _print_json({"reaped": [r.to_dict() for r in reaped], "running": left})
        return
    why = "" if reaped or left else ": nothing is running"
    typer.echo(f"reaped {len(reaped)}" + (f": {' '.join(r.id for r in reaped)}" if reaped else why))
    for r in reaped:
        typer.echo(f"  {r.id}: {r.reason}; " + ("attempt spent" if r.spent else "never started: no attempt spent"))
    if left:
        typer.echo(f"left {len(left)} running (their workers show signs of life, or their leases have not run out):")
    for run in left:
        typer.echo("  " + _lease_line(run))


def _lease_line(run: dict[str, Any]) -> str:
    """One run under way: whose, its last sign of life, when its lease runs out."""
    from gitqueue import progress

    beat = f"last heartbeat {run['heartbeat']}" if run["heartbeat"] else "no heartbeat yet"
    ends = "lease end unknown"
    if run["lease_ends"]:
        left = run["seconds_left"]
        took = progress.format_duration(abs(left))
        when = f"in {took}" if left >= 0 else f"{took} ago, plus --max-skew"
        ends = f"lease runs out {run['lease_ends']} ({when})"
    return f"{run['id']} (worker {run['worker']}, attempt {run['attempt']}): {beat}; {ends}"


@app.command()
def results(
    state: Annotated[
        str, typer.Option("--state", "-s", help="State of the tasks to show.", autocompletion=_complete_states)
    ] = "done",
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only tasks with this tag.")] = None,
    where: WhereOpt = None,
    sort: Annotated[
        str | None, typer.Option(metavar="COLUMN", help="Sort by a column, e.g. result.acc; -result.acc: descending.")
    ] = None,
    top: Annotated[int | None, typer.Option(metavar="N", min=0, help="Only the first N rows (after --sort).")] = None,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """Args and results as one row per task: the table to paste into an analysis.

    Columns: id, state, tags, args.NAME..., result.NAME..., then the last attempt's
    duration and worker, and the number of attempts (and the last error, if any).
    --sort orders by any column (rows without it come last), numbers by value.

    \b
    Examples:
      gitqueue results
      gitqueue results --sort -result.acc --top 5
      gitqueue results --format csv > sweep.csv
      gitqueue results --state failed --format json
      gitqueue results --where 'result.acc >= 0.9 and args.lr < 0.01'
    """
    _check_format(fmt, ("table", "csv", "json"))
    if state not in {s.value for s in State}:
        raise typer.BadParameter(f"{state!r}: one of {', '.join(s.value for s in State)}", param_hint="--state")
    with Queue.open(queue) as q:
        rows = [_result_row(t) for t in q.tasks(state, where=where) if tag is None or tag in t.tags]
    if sort:
        rows = _sorted_rows(rows, sort)
    rows = rows if top is None else rows[:top]
    if fmt == "json":
        _print_json(rows)
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if fmt == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _compact(v) if isinstance(v, dict | list) else v for k, v in row.items()})
        return
    print_table(columns, [[None if row.get(c) is None else _compact(row[c]) for c in columns] for row in rows])


def _sorted_rows(rows: list[dict[str, Any]], spec: str) -> list[dict[str, Any]]:
    """Rows by the column ``spec`` names (``-`` first: descending); rows without it last.
    Numbers sort by value, before text; anything else by its JSON."""
    column, descending = spec.removeprefix("-"), spec.startswith("-")
    if rows and not any(column in row for row in rows):
        names = ", ".join(dict.fromkeys(key for row in rows for key in row))
        raise typer.BadParameter(f"no column {column!r}; the columns are: {names}", param_hint="--sort")

    def key(row: dict[str, Any]) -> tuple[int, float, str]:
        value = row.get(column)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, -value if descending else value, "")
        return (1, 0.0, value if isinstance(value, str) else json.dumps(value, default=str))

    present = [row for row in rows if row.get(column) is not None]
    missing = [row for row in rows if row.get(column) is None]
    numbers = sorted((r for r in present if key(r)[0] == 0), key=key)
    texts = sorted((r for r in present if key(r)[0] == 1), key=key, reverse=descending)
    return numbers + texts + missing


def _result_row(task: Task) -> dict[str, Any]:
    """id, state, tags, args.*, result.*, then duration, worker and attempts of the last attempt
    (and a warning when the file's args are not those the result came from)."""
    last = task.attempts[-1] if task.attempts else {}
    row: dict[str, Any] = {"id": task.id, "state": task.state.value, "tags": list(task.tags)}
    ran = task.ran_with  # args changed while it ran: the result belongs to the args it ran with
    row.update({f"args.{k}": v for k, v in (task.args if ran is None else ran).items()})
    result = task.result if isinstance(task.result, dict) else ({"value": task.result} if task.result else {})
    row.update({f"result.{k}": v for k, v in result.items()})
    row.update({"duration": last.get("duration"), "worker": last.get("worker"), "attempts": len(task.attempts)})
    if task.args_changed:
        row["warning"] = f"args changed while it ran: the file now says {_compact(task.args)}"
    if task.state is not State.DONE and last.get("error"):
        row["error"] = str(last["error"]).strip().splitlines()[-1][:200]
    return row


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path("report.html"),
    metric: Annotated[
        str | None, typer.Option(help="Result field to plot, e.g. result.acc [default: the first numeric one].")
    ] = None,
    where: WhereOpt = None,
    watch: Annotated[bool, typer.Option("--watch", help="Rewrite the file each time the queue changes.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between looks at the queue with --watch.")] = 5.0,
    queue: QueueOpt = None,
) -> None:
    """Write one self-contained HTML page about the sweep: open it offline, mail it, publish it.

    It shows the counts and the time left, tasks done over time, a timeline of runs per
    worker (failures and reaps marked), parallel coordinates of the args against a result
    metric and the metric against each arg, the results table (sort and filter it in the
    page) and the queue's latest commits. Needs the `report` extra: pip install 'gitqueue[report]'.

    \b
    Examples:
      gitqueue report -o sweep.html
      gitqueue report --metric result.acc --where '"sweep-3" in tags'
      gitqueue report --watch -o /var/www/sweep.html     # rewritten as the queue changes
    """
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise GitqueueError("gitqueue report needs plotly: pip install 'gitqueue[report]'") from None
    from gitqueue.report import Reporter

    def said(sweep: Any) -> None:
        prog = sweep.progress
        err().print(f"wrote {output}: {prog.finished} of {prog.total} tasks finished, {prog.describe()}")

    with Queue.open(queue) as q:
        reporter = Reporter(q, metric=metric, where=where)
        if watch:
            try:
                reporter.watch(output, interval=interval, on_write=said)
            except KeyboardInterrupt:
                pass
        else:
            said(reporter.write(output))


# ---------------------------------------------------------------- people in the loop: validate, hooks, edit, set, log


@app.command()
def validate(
    paths: Annotated[list[Path] | None, typer.Argument(metavar="PATH", help="Task files or folders on disk.")] = None,
    all_files: Annotated[bool, typer.Option("--all", help="Every file of the queue (the default).")] = False,
    staged: Annotated[bool, typer.Option("--staged", help="What `git commit` would add in this clone.")] = False,
    since: Annotated[
        str | None, typer.Option(metavar="REV", help="Each commit after REV up to HEAD, as the server hook checks.")
    ] = None,
    ci: Annotated[
        bool, typer.Option("--ci", help="In CI: the files and every commit since the push's or request's base.")
    ] = False,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="text or json.")] = "text",
) -> None:
    """Check task files and print one line per problem; exit 1 if there is any.

    Malformed YAML (with line and column), unknown or wrongly typed fields, bad ids, a task
    in two folders, task-looking files outside the state folders, symlinks. In a clone of
    the queue, checks the files on disk; elsewhere, the queue's remote (--queue, else
    GITQUEUE_QUEUE, else ./.gitqueue). Workers and the git hooks apply the same checks.

    \b
    Examples:
      gitqueue validate                       # every file of this clone (or the queue)
      gitqueue validate pending/lr0.01.yaml   # one file, e.g. before you commit it
      gitqueue validate --staged              # what the pre-commit hook checks
      gitqueue validate --staged pending/a.yaml   # and these files (pre-commit passes them)
      gitqueue validate --since origin/main   # new commits, as the server hook checks them
      gitqueue validate --ci                  # in GitHub Actions or GitLab CI (gitqueue hooks ci github)
    """
    _check_format(fmt, ("text", "json"))
    top = validate_rules.queue_top()
    if ci:
        _validate_ci(top, fmt)
        return
    if (staged or since) and top is None:
        raise typer.BadParameter("--staged and --since work in a clone of the queue", param_hint="--staged/--since")
    problems = _validate_problems(top, paths=paths, staged=staged, since=since, queue=queue)
    if fmt == "json":
        _print_json([{"path": validate_rules.display(p.path), "problem": p.message} for p in problems])
    else:
        for problem in problems:
            typer.echo(problem.message)
        files = len({p.path for p in problems})
        plural = "s" * (len(problems) != 1), "s" * (files != 1)
        err().print(f"{len(problems)} problem{plural[0]} in {files} file{plural[1]}" if problems else "no problems")
    if problems:
        raise typer.Exit(1)


def _validate_problems(
    top: Path | None, *, paths: list[Path] | None, staged: bool, since: str | None, queue: str | None
) -> list[Problem]:
    """What `validate` checks, by its options: the commits, the files on disk, or the queue."""
    from gitqueue import progress
    from gitqueue.localrepo import LocalRepo

    if staged or since:
        with LocalRepo(top or Path.cwd()) as repo:
            problems = validate_rules.check_staged(repo) if staged else validate_rules.check_since(repo, since or "")
        if paths:  # the pre-commit framework names files too: every one of them with --all-files
            problems = sorted(set(problems) | set(validate_rules.check_disk(top, paths)), key=lambda p: p.path)
        return problems
    if paths:
        return validate_rules.check_disk(top, paths)
    if queue is None and top is not None and (top / SETTINGS_FILE).exists():
        with progress.counting(err(), "checking files") as counted:
            return validate_rules.check_disk(top, progress=counted)
    with Queue.open(queue) as q, progress.on_terminal(q, err()):
        _warn_head(q)
        return q.validate()


def _validate_ci(top: Path | None, fmt: str) -> None:
    """``validate --ci``: both reports, then one verdict (see gitqueue.ci)."""
    from gitqueue import ci as forge_ci

    if top is None:
        raise typer.BadParameter("--ci works in a clone of the queue (the CI's checkout)", param_hint="--ci")
    report = forge_ci.check(top)
    if fmt == "json":
        listed = {
            name: [{"path": validate_rules.display(p.path), "problem": p.message} for p in found]
            for name, found in (("files", report.files), ("moves", report.moves))
        }
        summary = {"base": report.base.commit, "why": report.base.why, "head": report.head}
        _print_json({**summary, "commits": report.commits, "by_people": report.by_people, **listed})
    else:
        for problem in [*report.files, *report.moves]:
            typer.echo(problem.message)
        for line in forge_ci.describe(report):
            typer.echo(line, err=True)
    if not report.ok:
        raise typer.Exit(1)


hooks_app = typer.Typer(
    help="Git hooks that refuse changes leaving the queue invalid.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(hooks_app, name="hooks")


@hooks_app.command("install")
def hooks_install(
    server: Annotated[
        Path | None, typer.Option(metavar="BARE_REPO", help="The repository that serves the queue: pre-receive.")
    ] = None,
    client: Annotated[
        Path | None, typer.Option(metavar="CLONE", help="A clone people edit by hand: pre-commit.")
    ] = None,
    branch: Annotated[
        str | None, typer.Option(help="The queue's branch [default: the one the server's HEAD names].")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a hook gitqueue did not write.")] = False,
) -> None:
    """Install git hooks that run `gitqueue validate`'s checks.

    --server writes a pre-receive hook into a self-hosted remote (a bare repository): it
    refuses, with a message naming each file and problem, any push that would leave the
    queue invalid or make a state change no gitqueue command makes, deletes the branch or
    rewrites its history, or creates another branch (a task there would never run).
    --client writes a pre-commit hook into a clone. Forges without server hooks
    (github.com, gitlab.com) run a CI job instead: see `gitqueue hooks ci`.

    \b
    Examples:
      gitqueue hooks install --server /srv/git/sweeps.git
      gitqueue hooks install --client .
    """
    from gitqueue import hooks

    for path in hooks.install(server=server, client=client, branch=branch, force=force):
        typer.echo(f"installed {path}")


class _CommandAfterDashes(TyperCommand):
    """Keeps the words after ``--`` (the workers' command) apart from unknown options, which
    click would otherwise mix together; they are in ``ctx.meta["command"]``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        head, tail = args, []
        if "--" in args:
            head, tail = args[: args.index("--")], args[args.index("--") + 1 :]
        ctx.meta["command"] = tail
        return super().parse_args(ctx, head)


def _work_options(ctx: typer.Context) -> dict[str, bool]:
    """Every option of `gitqueue work`, and whether it takes a value: what passes to workers."""
    work = ctx.find_root().command.get_command(ctx, "work")  # type: ignore[attr-defined]
    names: dict[str, bool] = {}
    for param in work.params if work else []:
        if param.param_type_name == "option":
            for name in (*param.opts, *param.secondary_opts):
                names[name] = not (param.is_flag or param.count)
    return names


slurm_app = typer.Typer(help="Workers as Slurm jobs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(slurm_app, name="slurm")


@slurm_app.command(
    "submit",
    cls=_CommandAfterDashes,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
def slurm_submit(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, help="How many workers: the array's size.")],
    gpus_per_worker: Annotated[int | None, typer.Option(min=1, help="GPUs each worker gets (--gres=gpu:G).")] = None,
    time_limit: Annotated[str | None, typer.Option("--time", help="Each worker's time limit, e.g. 4:00:00.")] = None,
    partition: Annotated[str | None, typer.Option(help="Slurm partition.")] = None,
    job_name: Annotated[str, typer.Option(help="The array job's name.")] = "gitqueue",
    log_dir: Annotated[Path, typer.Option(help="Slurm's output files and the runs' logs.")] = Path("gitqueue-logs"),
    warn: Annotated[int, typer.Option(min=1, help="Seconds before the time limit to stop and return runs.")] = 120,
    program: Annotated[
        str | None, typer.Option("--gitqueue", help="How nodes run gitqueue [default: this Python, -m gitqueue].")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the sbatch script; submit nothing.")] = False,
    queue: QueueOpt = None,
) -> None:
    """Submit N workers as a Slurm array job: each array task runs one `gitqueue work -- CMD`.

    Options of `gitqueue work` (--idle-timeout, --label, --max-failures, --task-timeout, ...)
    pass through to every worker; any other option goes to sbatch as an #SBATCH line
    (--mem=16G, --account=lab, ...). Slurm warns the workers --warn seconds before the
    time limit (and scancel sends SIGTERM): they stop their runs and return the tasks
    without spending an attempt. Each node keeps its git cache on local disk. The script
    is kept beside the logs; --dry-run prints it instead.

    \b
    Examples:
      gitqueue slurm submit --workers 8 --gpus-per-worker 1 --time 4:00:00 --partition gpu \\
          --mem=16G --idle-timeout 300 -- python train.py --lr {lr} --batch-size {bs}
      gitqueue slurm submit --workers 4 --dry-run -- ./run.sh {seed} > workers.sbatch
    """
    from gitqueue import slurm

    sbatch_options, worker_options = slurm.split_options(ctx.args, worker_options=_work_options(ctx))
    job = slurm.ArrayJob(
        queue_url=slurm.queue_url(queue),
        command=ctx.meta["command"],
        workers=workers,
        time=time_limit,
        partition=partition,
        gpus_per_worker=gpus_per_worker,
        job_name=job_name,
        log_dir=str(log_dir.resolve()),
        warn_seconds=warn,
        sbatch_options=sbatch_options,
        worker_options=worker_options,
        program=shlex.split(program) if program else [sys.executable, "-m", "gitqueue"],
        worker_gpus="--gpus" in _work_options(ctx),
    )
    if dry_run:
        typer.echo(slurm.render_script(job), nl=False)
        return
    sbatch = slurm.find_sbatch()
    with Queue.open(job.queue_url):  # a typo in the URL fails here, not on every node
        pass
    script = slurm.script_path(log_dir.resolve())
    job_id = slurm.submit(job, script=script, sbatch=sbatch)
    typer.echo(f"submitted array job {job_id}: {workers} worker(s); script {script}")
    typer.echo(f"logs: {job.log_dir}/slurm-{job_id}_<task>.out; workers name themselves slurm-{job_id}_<task>")


kubernetes_app = typer.Typer(help="Workers as Kubernetes Jobs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(kubernetes_app, name="kubernetes")


@kubernetes_app.command(
    "manifest",
    cls=_CommandAfterDashes,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
def kubernetes_manifest(
    ctx: typer.Context,
    workers: Annotated[int, typer.Option(min=1, help="How many worker pods run at once (parallelism).")],
    image: Annotated[str, typer.Option(help="Container image with gitqueue and your code.")],
    secret: Annotated[str, typer.Option(help="Secret holding ssh-privatekey and known_hosts.")] = "gitqueue-deploy-key",
    name: Annotated[str, typer.Option(help="The Job's name.")] = "gitqueue-workers",
    idle_timeout: Annotated[float, typer.Option(help="A worker exits once the queue is empty this long.")] = 60.0,
    gpus_per_worker: Annotated[int | None, typer.Option(min=1, help="GPUs each pod asks for.")] = None,
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping a run.")] = 10.0,
    queue: QueueOpt = None,
) -> None:
    """Print a Kubernetes Job that runs N workers, each `gitqueue work -- CMD`, on the queue.

    Options of `gitqueue work` (--label, --max-failures, --task-timeout, ...) pass through to
    every worker. The pods reach the queue with the deploy key in --secret, keep their git
    cache in an emptyDir and name themselves after their pod. Apply it with kubectl.

    \b
    Example:
      gitqueue kubernetes manifest --queue git@github.com:me/sweeps.git --workers 8 \\
          --image ghcr.io/me/train:latest --gpus-per-worker 1 -- python train.py --lr {lr} > job.yaml
    """
    from gitqueue import kubernetes, slurm

    unknown, worker_options = slurm.split_options(ctx.args, worker_options=_work_options(ctx))
    if unknown:
        raise typer.BadParameter(f"not an option of gitqueue work: {unknown[0]}")
    job = kubernetes.WorkerJob(
        queue_url=resolve_queue_url(queue),
        image=image,
        command=ctx.meta["command"],
        workers=workers,
        secret=secret,
        name=name,
        idle_timeout=idle_timeout,
        gpus_per_worker=gpus_per_worker,
        grace=grace,
        worker_options=worker_options,
    )
    typer.echo(kubernetes.render_manifest(job), nl=False)


@hooks_app.command("ci")
def hooks_ci(
    forge: Annotated[str, typer.Argument(metavar="FORGE", help="github or gitlab.")],
) -> None:
    """Print the CI workflow that validates the queue on every push, for forges that run no
    server hooks (github.com, gitlab.com). A push that breaks the queue still lands, but the
    job fails at once with one line per problem.

    \b
    Examples:
      gitqueue hooks ci github > .github/workflows/gitqueue.yml
      gitqueue hooks ci gitlab > .gitlab-ci.yml
    """
    from gitqueue import hooks

    if forge not in hooks.CI_WORKFLOWS:
        raise typer.BadParameter(f"{forge!r}: choose {' or '.join(hooks.CI_WORKFLOWS)}", param_hint="FORGE")
    typer.echo(hooks.ci_workflow(forge), nl=False)


def _editor(text: str) -> str | None:
    import click  # typer's own foundation: its editor honours $VISUAL and $EDITOR

    edited = click.edit(text, extension=".yaml", require_save=True)
    return edited if isinstance(edited, str) else None


@app.command()
def edit(
    task_id: IdArg,
    queue: QueueOpt = None,
) -> None:
    """Edit a task's file in $EDITOR, then commit and push it (one commit).

    The file is checked when you save; if it is invalid the editor opens again with the
    reason on top. Change the lines above gitqueue's marker only. A running or done task's
    args and cmd cannot change. If the task was claimed while you edited, your lines go on
    the moved file. Also fixes a file `gitqueue validate` reports.

    \b
    Example:
      EDITOR=nano gitqueue edit 000003-lr0.01-bs32
    """
    with Queue.open(queue) as q:
        try:
            task = q.edit(task_id, _editor)
        except EditConflict as exc:
            kept = Path(tempfile.mkstemp(prefix="gitqueue-edit-", suffix=".yaml")[1])
            kept.write_text(exc.text)
            raise GitqueueError(f"{exc} Your version is kept in {kept}") from None
    typer.echo("nothing changed" if task is None else f"{task.id}: edited ({task.path})")


@app.command("set")
def set_fields(
    task_id: IdArg,
    pairs: Annotated[list[str], typer.Argument(metavar="KEY=VALUE", help="priority=50, args.lr=0.02, tags=[a,b].")],
    queue: QueueOpt = None,
) -> None:
    """Change fields of one task in place, for scripts (one commit).

    Only the changed lines are rewritten: comments and the other lines stay as written.
    Values are YAML: 50 is a number, [a, b] a list, "50" a string.

    \b
    Examples:
      gitqueue set 000003-lr0.01-bs32 priority=50
      gitqueue set 000003-lr0.01-bs32 args.lr=0.02 tags=[sweep-3,rerun]
    """
    changes = parse_pairs(pairs, "KEY=VALUE")
    with Queue.open(queue) as q:
        task = q.set_fields(task_id, changes)
    typer.echo(
        "nothing changed" if task is None else f"{task.id}: " + ", ".join(f"{k}={v}" for k, v in changes.items())
    )


@app.command()
def log(
    task_id: IdArg,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
) -> None:
    """A task's life from the queue's git history: submit, claims, results, people's edits.

    One line per commit, oldest first, with its id, time and author; the task's file is
    followed across folders. Works for deleted tasks too (give the full id).

    \b
    Example:
      gitqueue log 000003-lr0.01-bs32
    """
    _check_format(fmt, ("table", "json"))
    with Queue.open(queue) as q:
        events = q.log(task_id)
    if fmt == "json":
        _print_json([event.to_dict() for event in events])
        return
    rows = []
    for event in events:
        what = event.action + (" (by hand)" if event.by_hand else "") + (f": {event.detail}" if event.detail else "")
        rows.append([event.commit[:10], event.when, event.author, what])
    print_table(["COMMIT", "WHEN", "AUTHOR", "WHAT"], rows)


def main() -> None:
    """Run the command line: ``gitqueue NAME ...`` builds only command NAME. Typer builds
    each command's options from its signature at every start, about 0.1 s of CPU for them all:
    a fleet's workers all starting on one machine's cores pay it many times over."""
    only(sys.argv[1] if len(sys.argv) > 1 else None)()


def only(name: str | None) -> typer.Typer:
    """``app`` with just the command or command group called ``name`` (the whole app if
    none is: options before the command, ``--help``, a misspelt name, shell completion)."""
    commands = [c for c in app.registered_commands if (c.name or _command_name(c)) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    one = copy.copy(app)
    one.registered_commands, one.registered_groups = commands, groups
    return one


def _command_name(command: Any) -> str:
    """The name typer gives a command registered without one: its function's, with dashes."""
    return str(command.callback.__name__).lower().replace("_", "-")
