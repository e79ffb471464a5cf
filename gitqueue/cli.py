"""The ``gitqueue`` command: a thin face over :class:`gitqueue.Queue`.

Each command opens the queue, calls one method and prints. Domain errors become one line
on stderr and the exit code their class names (see ``gitqueue --help``).
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table
from typer.core import TyperGroup

from gitqueue import __version__, hooks, progress
from gitqueue import validate as validate_rules
from gitqueue.config import SETTINGS_FILE
from gitqueue.errors import EditConflict, GitqueueError, InvalidTask, NothingToClaim
from gitqueue.gitstore import LocalRepo
from gitqueue.queue import Queue, default_worker
from gitqueue.task import State, Task, load_yaml

EXIT_CODES = """Exit codes: 0 ok; 1 error; 2 bad usage; 3 nothing to claim; 4 the run no longer holds
the task (nothing changed); 5 the queue's remote is unreachable."""


class _Group(TyperGroup):
    """Turns gitqueue's own errors into one line on stderr and their exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except GitqueueError as exc:
            typer.echo(f"gitqueue: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_Group,
    help="A task queue for experiments in which the queue is a git repository.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
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
err = Console(stderr=True)
# In a terminal tables fit its width; piped into a file or a pager, rows stay whole.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 250)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gitqueue {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """A task queue for experiments in which the queue is a git repository."""


# ---------------------------------------------------------------- parsing helpers


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar: ``0.01`` is a float, ``true`` a bool, ``a`` a str."""
    try:
        value = load_yaml(text, path="<command line>")
    except InvalidTask:
        return text
    return text if value is None and text != "null" else value


def parse_pairs(items: list[str] | None, what: str) -> dict[str, Any]:
    """``["lr=0.01", "bs=32"]`` -> ``{"lr": 0.01, "bs": 32}``."""
    pairs: dict[str, Any] = {}
    for item in items or []:
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
) -> None:
    """Create or attach a queue and remember it in ./.gitqueue.

    With no URL, makes an embedded bare repository ./.gitqueue.git. With a URL (a path,
    file://, git://, ssh:// or https://) it initialises an empty remote, or attaches to an
    existing queue without changing it.

    \b
    Examples:
      gitqueue init
      gitqueue init git@github.com:me/sweeps.git
    """
    with Queue.init(url) as queue:
        typer.echo(f"queue ready: {queue.url} (remembered in {Path.cwd() / '.gitqueue'})")


@app.command()
def submit(
    pairs: Annotated[list[str] | None, typer.Argument(metavar="[KEY=VALUE]...", help="Arguments of one task.")] = None,
    grid: Annotated[list[str] | None, typer.Option("--grid", "-g", help="KEY=V1,V2,...: sweep over values.")] = None,
    source: Annotated[str | None, typer.Option("--from", help="YAML or JSONL file of tasks, - for stdin.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first [default: 0].")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", "-t", help="A tag (repeatable).")] = None,
    require: Annotated[list[str] | None, typer.Option(help="KEY=VALUE a worker's labels must match.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Runs before the task fails for good.")] = None,
    lease: Annotated[int | None, typer.Option(help="Seconds a run holds the task without a heartbeat.")] = None,
    task_id: Annotated[str | None, typer.Option("--id", help="Id of the task (one task only).")] = None,
    queue: QueueOpt = None,
    fmt: FormatOpt = "ids",
) -> None:
    """Add tasks: one, a grid (cartesian product) or a file of them, in one commit.

    \b
    Examples:
      gitqueue submit lr=0.01 bs=32
      gitqueue submit --grid lr=0.1,0.01,0.001 --grid bs=32,64 --tag sweep-1
      gitqueue submit --from tasks.yaml      # a list of {args: ..., priority: ...}
      seq 5 | jq -c '{args: {seed: .}}' | gitqueue submit --from -
    """
    _check_format(fmt, ("ids", "json"))
    fixed = parse_pairs(pairs, "KEY=VALUE")
    axes = {k: v.split(",") for k, v in ((g.partition("=")[0], g.partition("=")[2]) for g in grid or [])}
    if any(not k for k in axes):
        raise typer.BadParameter("expected KEY=V1,V2,...", param_hint="--grid")
    common: dict[str, Any] = {}
    for key, value in (("priority", priority), ("max_attempts", max_attempts), ("lease", lease)):
        if value is not None:
            common[key] = value
    if tag:
        common["tags"] = list(tag)
    if require:
        common["requires"] = parse_pairs(require, "--require")
    specs: list[dict[str, Any]] = []
    if source:
        specs = [{**common, **spec} if isinstance(spec, dict) else spec for spec in read_specs(source)]
    if axes:
        for values in itertools.product(*axes.values()):
            args = {**fixed, **{k: parse_value(v) for k, v in zip(axes, values, strict=True)}}
            specs.append({**common, "args": args})
    elif pairs or task_id is not None:
        specs.append({**common, "args": fixed})
    elif not source:
        raise typer.BadParameter("nothing to submit: give KEY=VALUE pairs, --grid or --from (or --id for a task "
                                 "without args)")
    if task_id is not None:
        if len(specs) != 1:
            raise typer.BadParameter("--id names one task; a grid or file makes several", param_hint="--id")
        specs[0]["id"] = task_id
    subject = f"submit {len(specs)} tasks: grid {' x '.join(axes)}" if axes and len(specs) > 1 else None
    with Queue.open(queue) as q, progress.on_terminal(q, err):
        ids = q.submit(specs, subject=subject)
    if fmt == "json":
        _print_json(ids)
    else:
        for task_id_ in ids:
            typer.echo(task_id_)
        err.print(f"submitted {len(ids)} task{'s' if len(ids) != 1 else ''}")


@app.command()
def claim(
    worker: WorkerOpt = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", "--require", "-l", help="KEY=VALUE label of this worker.")
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
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    result: Annotated[list[str] | None, typer.Option("--result", "-r", help="KEY=VALUE of the result.")] = None,
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
    task_id: Annotated[str, typer.Argument(metavar="ID")],
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
    task_ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...")] = None,
    where: WhereOpt = None,
    queue: QueueOpt = None,
) -> None:
    """Send tasks back to pending: to rerun done ones, retry failed ones, revive cancelled ones.

    A running task's run is cut off: its later report changes nothing. With --where, every
    task the filter matches that is not pending, in the same one commit.

    \b
    Examples:
      gitqueue requeue 000007-lr0.1-bs64 000008-lr0.1-bs128
      gitqueue requeue --where 'state == "failed" and args.lr < 0.1'
    """
    if not task_ids and where is None:
        raise typer.BadParameter("name tasks, or select them with --where", param_hint="ID")
    with Queue.open(queue) as q:
        ids = q.requeue(task_ids or [], where=where)
    typer.echo(f"requeued {len(ids)}: {' '.join(ids)}")


@app.command()
def cancel(
    task_ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...")] = None,
    where: WhereOpt = None,
    queue: QueueOpt = None,
) -> None:
    """Withdraw pending or running tasks (a running task's worker stops it).

    With --where, every pending or running task the filter matches, in one commit.

    \b
    Examples:
      gitqueue cancel 000012-lr0.001-bs32
      gitqueue cancel --where 'args.lr >= 0.1 and "sweep-3" in tags'
    """
    if not task_ids and where is None:
        raise typer.BadParameter("name tasks, or select them with --where", param_hint="ID")
    with Queue.open(queue) as q:
        ids = q.cancel(task_ids or [], where=where)
    typer.echo(f"cancelled {len(ids)}: {' '.join(ids)}")


@app.command("ls")
def ls(
    state: Annotated[
        str | None, typer.Option("--state", "-s", help="pending, running, done, failed, cancelled.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only tasks with this tag.")] = None,
    where: WhereOpt = None,
    queue: QueueOpt = None,
    fmt: FormatOpt = "table",
) -> None:
    """List tasks, highest priority first, then by id.

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
    with Queue.open(queue) as q:
        tasks = [t for t in q.tasks(state, where=where) if tag is None or tag in t.tags]
    if fmt == "json":
        _print_json([t.to_dict() for t in tasks])
    elif fmt == "ids":
        for task in tasks:
            typer.echo(task.id)
    else:
        rows = []
        for task in tasks:
            worker = (task.run or {}).get("worker") or (task.attempts[-1].get("worker") if task.attempts else "")
            tries = len(task.attempts) + (task.state is State.RUNNING)  # the run under way counts
            rows.append([task.id, task.state.value, task.priority, _compact(task.args), tries, worker])
        print_table(["ID", "STATE", "PRI", "ARGS", "TRIES", "WORKER"], rows)


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    """Columns aligned with plain text: fast for 100,000 rows, and clean when piped."""
    cells = [headers, *(["" if v is None else str(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)
    sys.stdout.write("\n".join(lines) + "\n")


@app.command()
def show(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
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
    if fmt == "json":
        _print_json(task.to_dict())
    else:
        typer.echo(f"# {task.path} ({task.state.value})")
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
    _check_format(fmt, ("table", "json"))
    with Queue.open(queue) as q:
        if fmt == "json":
            _print_json(progress.queue_status(q))
            return
        if not watch:
            out.print(_status_view(progress.queue_status(q)))
            return
        if not out.is_terminal:  # a log or a pipe: a line each time something changed
            try:
                progress.watch_lines(q, interval=interval, emit=typer.echo)
            except KeyboardInterrupt:
                pass
            return
        from rich.live import Live

        with Live(_status_view(progress.queue_status(q)), console=out, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(_status_view(progress.queue_status(q)), refresh=True)
            except KeyboardInterrupt:
                pass


def _status_view(info: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    counts = info["counts"]
    grid.add_row(f"[bold]{info['queue']}[/]")
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
        grid.add_row(f"oldest pending: {oldest['id']} (submitted {oldest['submitted']})")
    if info["running"]:
        running = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("RUNNING", "WORKER", "ATTEMPT", "FOR"):
            running.add_column(column)
        for row in info["running"]:
            age = "" if row["age"] is None else progress.format_duration(row["age"])
            running.add_row(row["id"], str(row["worker"]), str(row["attempt"]), age)
        grid.add_row(running)
    for problem in info["invalid"]:
        grid.add_row(f"[red]invalid[/] {problem['problem']}")
    return grid


@app.command(context_settings={"allow_interspersed_args": False})
def work(
    command: Annotated[
        list[str] | None, typer.Argument(metavar="-- CMD [ARG]...", help="Command run per task.")
    ] = None,
    worker: WorkerOpt = None,
    label: Annotated[list[str] | None, typer.Option("--label", "-l", help="KEY=VALUE label of this worker.")] = None,
    max_tasks: Annotated[int | None, typer.Option(help="Stop after this many tasks.")] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Poll an empty queue this many seconds.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Poll an empty queue for ever (with backoff).")] = False,
    max_failures: Annotated[int | None, typer.Option(help="Stop after this many failures in a row.")] = None,
    allow_task_cmd: Annotated[
        bool, typer.Option("--allow-task-cmd", help="Run a task's own cmd: anyone who can push gains code execution.")
    ] = False,
    log_dir: Annotated[Path, typer.Option(help="Where each run's output is logged.")] = Path("gitqueue-logs"),
    grace: Annotated[float, typer.Option(help="Seconds between SIGTERM and SIGKILL when stopping a run.")] = 10.0,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Short tasks: hold up to N claims and report them in one push (1: one by one).")
    ] = 64,
    batch_seconds: Annotated[float, typer.Option(hidden=True, help="Size batches to about this much work.")] = 1.0,
    reap_every: Annotated[
        float, typer.Option(hidden=True, help="Seconds between looks for runs whose lease ran out.")
    ] = 30.0,
    queue: QueueOpt = None,
) -> None:
    """Work through the queue: claim a task, run CMD with its args, report, repeat.

    {name} and {a.b} in CMD's arguments become the task's args (no shell is involved).
    The command also gets GITQUEUE_TASK_ID, GITQUEUE_ARGS (JSON), GITQUEUE_ATTEMPT and
    GITQUEUE_RESULT_FILE: a JSON or YAML mapping written there becomes the task's result.
    Exit 0 marks the task done; anything else fails the attempt. Ctrl-C stops the run and
    returns its task without spending an attempt.

    \b
    Examples:
      gitqueue work -- python train.py --lr {lr} --batch-size {bs}
      CUDA_VISIBLE_DEVICES=1 gitqueue work --worker gpu1 --label gpu=a100 --wait -- ./run.sh {model.name}
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
    )
    with Queue.open(queue, worker=worker or default_worker()) as q:
        code = Worker(q, options).run()
    raise typer.Exit(code)


@app.command()
def reap(
    max_skew: Annotated[float, typer.Option(help="Seconds of clock difference to allow between machines.")] = 30.0,
    queue: QueueOpt = None,
) -> None:
    """Return tasks whose lease ran out (their worker died) to pending, or to failed.

    Workers reap as they go; this is for when none is running. A lease has run out when
    its last heartbeat is older than the lease plus --max-skew by this machine's clock.

    \b
    Example:
      gitqueue reap --max-skew 5
    """
    with Queue.open(queue, max_skew=max_skew) as q:
        ids = q.reap()
    typer.echo(f"reaped {len(ids)}" + (f": {' '.join(ids)}" if ids else ""))


@app.command()
def results(
    state: Annotated[str, typer.Option("--state", "-s", help="State of the tasks to show.")] = "done",
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only tasks with this tag.")] = None,
    where: WhereOpt = None,
    queue: QueueOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv or json.")] = "table",
) -> None:
    """Args and results as one row per task: the table to paste into an analysis.

    \b
    Examples:
      gitqueue results
      gitqueue results --format csv > sweep.csv
      gitqueue results --state failed --format json
      gitqueue results --where 'result.acc >= 0.9 and args.lr < 0.01'
    """
    _check_format(fmt, ("table", "csv", "json"))
    if state not in {s.value for s in State}:
        raise typer.BadParameter(f"{state!r}: one of {', '.join(s.value for s in State)}", param_hint="--state")
    with Queue.open(queue) as q:
        rows = [_result_row(t) for t in q.tasks(state, where=where) if tag is None or tag in t.tags]
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


def _result_row(task: Task) -> dict[str, Any]:
    """id, args.*, result.*, then duration, worker and attempts of the last attempt."""
    last = task.attempts[-1] if task.attempts else {}
    row: dict[str, Any] = {"id": task.id}
    row.update({f"args.{k}": v for k, v in task.args.items()})
    result = task.result if isinstance(task.result, dict) else ({"value": task.result} if task.result else {})
    row.update({f"result.{k}": v for k, v in result.items()})
    row.update({"duration": last.get("duration"), "worker": last.get("worker"), "attempts": len(task.attempts)})
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
        err.print(f"wrote {output}: {prog.finished} of {prog.total} tasks finished, {prog.describe()}")

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
    paths: Annotated[
        list[Path] | None, typer.Argument(metavar="[PATH]...", help="Task files or folders on disk.")
    ] = None,
    all_files: Annotated[bool, typer.Option("--all", help="Every file of the queue (the default).")] = False,
    staged: Annotated[bool, typer.Option("--staged", help="What `git commit` would add in this clone.")] = False,
    since: Annotated[
        str | None, typer.Option(metavar="REV", help="Each commit after REV up to HEAD, as the server hook checks.")
    ] = None,
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
      gitqueue validate --since origin/main   # new commits, as the server hook checks them
    """
    _check_format(fmt, ("text", "json"))
    top = validate_rules.queue_top()
    if (staged or since) and top is None:
        raise typer.BadParameter("--staged and --since work in a clone of the queue", param_hint="--staged/--since")
    if staged or since:
        with LocalRepo(top or Path.cwd()) as repo:
            problems = validate_rules.check_staged(repo) if staged else validate_rules.check_since(repo, since or "")
    elif paths:
        problems = validate_rules.check_disk(top, paths)
    elif queue is None and top is not None and (top / SETTINGS_FILE).exists():
        with progress.counting(err, "checking files") as counted:
            problems = validate_rules.check_disk(top, progress=counted)
    else:
        with Queue.open(queue) as q, progress.on_terminal(q, err):
            problems = q.validate()
    if fmt == "json":
        _print_json([{"path": validate_rules.display(p.path), "problem": p.message} for p in problems])
    else:
        for problem in problems:
            typer.echo(problem.message)
        files = len({p.path for p in problems})
        plural = "s" * (len(problems) != 1), "s" * (files != 1)
        err.print(f"{len(problems)} problem{plural[0]} in {files} file{plural[1]}" if problems else "no problems")
    if problems:
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
    branch: Annotated[str, typer.Option(help="The queue's branch.")] = "main",
    force: Annotated[bool, typer.Option("--force", help="Replace a hook gitqueue did not write.")] = False,
) -> None:
    """Install git hooks that run `gitqueue validate`'s checks.

    --server writes a pre-receive hook into a self-hosted remote (a bare repository): it
    refuses, with a message naming each file and problem, any push that would leave the
    queue invalid or make a state change no gitqueue command makes, deletes the branch or
    rewrites its history. --client writes a pre-commit hook into a clone. Forges without
    server hooks (github.com, gitlab.com): see examples/ci/.

    \b
    Examples:
      gitqueue hooks install --server /srv/git/sweeps.git
      gitqueue hooks install --client .
    """
    for path in hooks.install(server=server, client=client, branch=branch, force=force):
        typer.echo(f"installed {path}")


def _editor(text: str) -> str | None:
    import click  # typer's own foundation: its editor honours $VISUAL and $EDITOR

    edited = click.edit(text, extension=".yaml", require_save=True)
    return edited if isinstance(edited, str) else None


@app.command()
def edit(
    task_id: Annotated[str, typer.Argument(metavar="ID")],
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
    task_id: Annotated[str, typer.Argument(metavar="ID")],
    pairs: Annotated[list[str], typer.Argument(metavar="KEY=VALUE...", help="priority=50, args.lr=0.02, tags=[a,b].")],
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
    task_id: Annotated[str, typer.Argument(metavar="ID")],
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
    app()
