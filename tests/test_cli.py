"""The ``gitqueue`` command through typer's CliRunner; what it did is checked in the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
from conftest import RemoteRepo
from typer.main import get_command
from typer.testing import CliRunner, Result

import gitqueue.cli
from gitqueue import Queue, State, __version__
from gitqueue.cli import app
from gitqueue.testing import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
runner = CliRunner()


def gq(*args: str | Path, code: int = 0, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    """Run ``gitqueue ARGS`` in-process and insist on its exit code."""
    result = runner.invoke(app, [str(a) for a in args], input=input, env=env)
    if result.exit_code != code:
        trace = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        pytest.fail(f"gitqueue {args}: exit {result.exit_code}, wanted {code}\n{result.output}\n{trace}")
    return result


@pytest.fixture
def cli_queue(bare_remote: Path) -> str:
    """A queue made by `gitqueue init URL`: later commands find it through ./.gitqueue."""
    gq("init", bare_remote)
    return str(bare_remote.resolve())


def open_queue(url: str) -> Queue:
    return Queue.open(url, worker="checker/0")


# ---------------------------------------------------------------- init and finding the queue


def test_version() -> None:
    assert gq("--version").stdout.strip() == f"gitqueue {__version__}"


@pytest.mark.parametrize("argv", [["work", "--help"], ["ls", "--help"], ["hooks", "--help"], ["slurm", "--help"]])
def test_main_builds_only_the_command_named_and_it_reads_the_same(argv: list[str]) -> None:
    one = gitqueue.cli.only(argv[0])
    built = get_command(one)
    assert list(built.commands) == [argv[0]]  # type: ignore[attr-defined]
    assert gq(*argv).stdout == runner.invoke(one, argv).stdout


@pytest.mark.parametrize("first", [None, "--patience", "--help", "wrok"])
def test_main_builds_every_command_when_the_first_word_is_none(first: str | None) -> None:
    assert gitqueue.cli.only(first) is app
    wrong = runner.invoke(gitqueue.cli.only("wrok"), ["wrok"])
    assert wrong.exit_code == 2 and "No such command 'wrok'" in wrong.output


def test_main_runs_the_command_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["gitqueue", "--version"])
    with pytest.raises(SystemExit) as whole:
        gitqueue.cli.main()
    monkeypatch.setattr(sys, "argv", ["gitqueue", "validate", "--help"])
    with pytest.raises(SystemExit) as one:
        gitqueue.cli.main()
    assert (whole.value.code, one.value.code) == (0, 0)
    out = capsys.readouterr().out
    assert out.startswith(f"gitqueue {__version__}\n") and "gitqueue validate [OPTIONS] [PATH]" in out


def test_init_embedded(tmp_path: Path) -> None:
    result = gq("init")
    assert "queue ready" in result.stdout
    embedded = RemoteRepo(Path.cwd() / ".gitqueue.git")
    assert "gitqueue.yaml" in embedded.files() and embedded.log() == ["initialise gitqueue queue"]
    assert "queue: .gitqueue.git" in (Path.cwd() / ".gitqueue").read_text()
    gq("submit", "lr=0.01")
    assert embedded.count() == 2
    # git does not see the embedded queue as part of a project's work tree
    assert (Path.cwd() / ".gitqueue.git" / ".gitignore").read_text() == "*\n"


def test_init_url_then_attach_changes_nothing(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    gq("init", bare_remote)
    gq("submit", "a=1")
    tip = remote_repo.tip()
    gq("init", bare_remote)
    assert remote_repo.tip() == tip
    assert str(bare_remote.resolve()) in (Path.cwd() / ".gitqueue").read_text()


def test_queue_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remotes = {}
    for name in ("flag", "env", "file"):
        remotes[name] = tmp_path / "srv" / f"{name}.git"
        (tmp_path / name).mkdir()
        Queue.init(str(remotes[name]), folder=tmp_path / name).close()
    project = tmp_path / "file"  # holds the .gitqueue naming file.git
    (project / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(project / "deep" / "er")
    gq("submit", "--id", "from-file", "x=1")
    monkeypatch.setenv("GITQUEUE_QUEUE", str(remotes["env"]))
    gq("submit", "--id", "from-env", "x=1")
    gq("submit", "--id", "from-flag", "x=1", "--queue", remotes["flag"])
    gq("submit", "--id", "short-flag", "x=1", "-q", remotes["flag"])
    held = {name: sorted(RemoteRepo(path).states()) for name, path in remotes.items()}
    assert held == {"flag": ["from-flag", "short-flag"], "env": ["from-env"], "file": ["from-file"]}


def test_no_queue_anywhere_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path / "home")
    result = gq("ls", code=1)
    assert "no queue given" in result.stderr and "gitqueue init" in result.stderr


def test_a_relative_queue_path(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    Queue.init(str(bare_remote)).close()
    relative = os.path.relpath(bare_remote, Path.cwd())
    gq("submit", "--id", "rel", "a=1", "--queue", relative)
    assert remote_repo.states() == {"rel": "pending"}


def test_unreachable_remote_exits_5(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(Queue.__init__.__kwdefaults__, "patience", 0.3)
    result = gq("status", "--queue", f"git://127.0.0.1:{free_port()}/queue.git", code=5)
    assert "cannot fetch" in result.stderr


def test_not_a_queue_exits_1(bare_remote: Path, tmp_path: Path) -> None:
    assert "not a gitqueue queue yet" in gq("ls", "--queue", bare_remote, code=1).stderr
    assert "not a git repository" in gq("ls", "--queue", tmp_path / "missing.git", code=1).stderr


# ---------------------------------------------------------------- submit


def test_submit_pairs_as_yaml_scalars(cli_queue: str) -> None:
    result = gq("submit", "lr=0.01", "bs=32", "model=resnet", "aug=true", "note=a=b", "none=")
    assert result.stdout.splitlines() == ["000001-lr0.01-bs32-modelresnet-augTrue-notea_b-none"]
    with open_queue(cli_queue) as q:
        [task] = q.tasks()
    assert task.args == {"lr": 0.01, "bs": 32, "model": "resnet", "aug": True, "note": "a=b", "none": ""}


def test_submit_grid_is_one_commit(cli_queue: str, remote_repo: RemoteRepo) -> None:
    before = remote_repo.count()
    result = gq("submit", "--grid", "lr=0.1,0.01", "--grid", "bs=32,64", "epochs=3", "--tag", "sweep-1", "-t", "x")
    ids = result.stdout.split()
    assert len(ids) == 4 and ids == sorted(ids)
    assert remote_repo.count() == before + 1
    assert remote_repo.log()[-1] == "submit 4 tasks: grid lr x bs"
    with open_queue(cli_queue) as q:
        tasks = q.tasks(State.PENDING)
    assert [t.args for t in tasks] == [{"epochs": 3, "lr": lr, "bs": bs} for lr in (0.1, 0.01) for bs in (32, 64)]
    assert all(t.tags == ["sweep-1", "x"] for t in tasks)


def test_submit_every_option(cli_queue: str) -> None:
    gq(
        "submit", "a=1", "--id", "exp-7", "--priority", "4", "--require", "gpu=a100", "--require", "mem=80",
        "--max-attempts", "2", "--lease", "90",
    )  # fmt: skip
    with open_queue(cli_queue) as q:
        task = q.get("exp-7")
    assert (task.args, task.priority, task.requires) == ({"a": 1}, 4, {"gpu": "a100", "mem": 80})
    assert (task.max_attempts, task.lease) == (2, 90)


def test_submit_from_files_and_stdin(cli_queue: str, tmp_path: Path) -> None:
    listing = tmp_path / "tasks.yaml"
    listing.write_text("- args: {lr: 0.1}\n  priority: 2\n- {id: named, args: {lr: 0.2}}\n")
    wrapped = tmp_path / "wrapped.yaml"
    wrapped.write_text("tasks:\n  - args: {lr: 0.3}\n")
    lines = tmp_path / "tasks.jsonl"
    lines.write_text('{"args": {"lr": 0.4}}\n\n{"args": {"lr": 0.5}, "tags": ["j"]}\n')
    gq("submit", "--from", listing, "--tag", "file")
    gq("submit", "--from", wrapped)
    gq("submit", "--from", lines)
    gq("submit", "--from", "-", input="- args: {lr: 0.6}\n")
    gq("submit", "--from", "-", input='{"args": {"lr": 0.7}}\n{"args": {"lr": 0.8}}\n')
    with open_queue(cli_queue) as q:
        tasks = {t.args["lr"]: t for t in q.tasks()}
    assert sorted(tasks) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert tasks[0.1].priority == 2 and tasks[0.1].tags == ["file"]
    assert tasks[0.2].id == "named" and tasks[0.5].tags == ["j"]


def test_submit_format_json_and_idempotence(cli_queue: str, remote_repo: RemoteRepo) -> None:
    ids = json.loads(gq("submit", "--id", "same", "a=1", "--format", "json").stdout)
    assert ids == ["same"]
    tip = remote_repo.tip()
    assert json.loads(gq("submit", "--id", "same", "a=1", "-f", "json").stdout) == ["same"]
    assert remote_repo.tip() == tip
    result = gq("submit", "--id", "same", "a=2", code=1)
    assert "already exists" in result.stderr
    assert remote_repo.tip() == tip


def test_submit_refuses_bad_input(cli_queue: str, tmp_path: Path, remote_repo: RemoteRepo) -> None:
    tip = remote_repo.tip()
    bad = tmp_path / "bad.yaml"
    bad.write_text("- args: {lr: 0.1}\n- args: {lr: 0.2\n")
    assert f"{bad}:3:1" in gq("submit", "--from", bad, code=1).stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"args": {"lr": 1}}\n{"args": \n')
    assert f"{broken}:2:" in gq("submit", "--from", broken, code=1).stderr
    gq("submit", "--grid", "lr=1,2", "--id", "one", code=2)
    gq("submit", "novalue", code=2)
    gq("submit", "a=1", "--format", "xml", code=2)
    assert "invalid task id" in gq("submit", "a=1", "--id", "../up", code=1).stderr
    assert "unknown field 'colour'" in gq("submit", "--from", "-", input="- {args: {}, colour: red}\n", code=1).stderr
    assert "nothing to submit" in gq("submit", "--tag", "t", code=2).output  # a forgotten grid, not an empty task
    assert remote_repo.tip() == tip
    gq("submit", "--id", "no-args")  # a task without args is asked for by name
    with open_queue(cli_queue) as q:
        assert q.get("no-args").args == {}


# ---------------------------------------------------------------- claim, done, fail


def test_claim_json_and_done_with_token(cli_queue: str, remote_repo: RemoteRepo) -> None:
    [task_id] = gq("submit", "lr=0.01").stdout.split()
    claimed = json.loads(gq("claim", "--worker", "gpu-box/3", "--format", "json").stdout)
    assert claimed["id"] == task_id and claimed["args"] == {"lr": 0.01}
    assert (
        claimed["attempt"] == 1 and claimed["worker"] == "gpu-box/3" and re.fullmatch(r"[0-9a-f]{16}", claimed["token"])
    )
    assert remote_repo.log()[-1] == f"claim {task_id} by gpu-box/3 (attempt 1)"
    with open_queue(cli_queue) as q:
        assert q.get(task_id).token == claimed["token"]
    gq("done", task_id, "--token", claimed["token"], "--result", "acc=0.93", "-r", "loss=0.2", "-r", "note=ok")
    with open_queue(cli_queue) as q:
        task = q.get(task_id)
    assert task.state is State.DONE and task.result == {"acc": 0.93, "loss": 0.2, "note": "ok"}
    assert remote_repo.states() == {task_id: "done"}


def test_claim_table_output_and_labels(cli_queue: str, remote_repo: RemoteRepo) -> None:
    gq("submit", "--id", "gpu-only", "a=1", "--require", "gpu=a100")
    gq("claim", code=3)
    gq("claim", "--label", "gpu=v100", code=3)
    result = gq("claim", "--require", "gpu=a100", "-w", "box/1")
    assert result.stdout.startswith("claimed gpu-only (attempt 1, token ")
    assert "args: a=1" in result.stdout
    assert remote_repo.states() == {"gpu-only": "running"}


def test_claim_exits_3_when_nothing_is_pending(cli_queue: str, remote_repo: RemoteRepo) -> None:
    tip = remote_repo.tip()
    result = gq("claim", "--format", "json", code=3)
    assert result.stdout == "" and "nothing to claim" in result.stderr
    assert remote_repo.tip() == tip


def test_done_result_file_and_token_from_env(cli_queue: str, tmp_path: Path) -> None:
    gq("submit", "--id", "t1", "a=1")
    gq("submit", "--id", "t2", "a=2")
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"acc": 0.5, "curve": [1, 2, 3]}))
    metrics_yaml = tmp_path / "metrics.yaml"
    metrics_yaml.write_text("acc: 0.7\n")
    first = json.loads(gq("claim", "-f", "json").stdout)
    gq("done", "t1", "--token", first["token"], "--result-file", metrics, "--result", "acc=0.6")
    second = json.loads(gq("claim", "-f", "json").stdout)
    gq("done", "t2", "--result-file", metrics_yaml, env={"GITQUEUE_TOKEN": second["token"]})
    with open_queue(cli_queue) as q:
        assert q.get("t1").result == {"acc": 0.6, "curve": [1, 2, 3]}
        assert q.get("t2").result == {"acc": 0.7}
    notmap = tmp_path / "list.json"
    notmap.write_text("[1, 2]")
    gq("submit", "--id", "t3", "a=3")
    gq("claim")
    assert "must hold a mapping" in gq("done", "t3", "--result-file", notmap, code=1).stderr
    with open_queue(cli_queue) as q:
        assert q.get("t3").state is State.RUNNING


def test_stale_token_exits_4_and_changes_nothing(cli_queue: str, remote_repo: RemoteRepo) -> None:
    gq("submit", "--id", "t", "a=1")
    old = json.loads(gq("claim", "-f", "json").stdout)["token"]
    gq("requeue", "t")
    new = json.loads(gq("claim", "-f", "json").stdout)["token"]
    tip = remote_repo.tip()
    result = gq("done", "t", "--token", old, "--result", "late=1", code=4)
    assert "no longer holds" in result.stderr
    gq("fail", "t", "--token", old, "--error", "late", code=4)
    assert remote_repo.tip() == tip
    gq("done", "t", "--token", new)
    assert remote_repo.states() == {"t": "done"}
    gq("done", "t", "--token", new, code=4)


def test_fail_until_failed(cli_queue: str, remote_repo: RemoteRepo) -> None:
    gq("submit", "--id", "t", "a=1", "--max-attempts", "2")
    token = json.loads(gq("claim", "-f", "json").stdout)["token"]
    result = gq("fail", "t", "--token", token, "--error", "CUDA out of memory", "--exit-code", "137")
    assert result.stdout.strip() == "t: pending (attempts spent 1)"
    assert remote_repo.states() == {"t": "pending"}
    gq("claim")
    assert gq("fail", "t", "-e", "again").stdout.strip() == "t: failed (attempts spent 2)"
    assert remote_repo.states() == {"t": "failed"}
    with open_queue(cli_queue) as q:
        first = q.get("t").attempts[0]
    assert (first["error"], first["exit_code"], first["outcome"]) == ("CUDA out of memory", 137, "failed")
    assert "not running" in gq("fail", "t", code=1).stderr


# ---------------------------------------------------------------- requeue and cancel


def test_requeue_and_cancel(cli_queue: str, remote_repo: RemoteRepo) -> None:
    gq("submit", "--id", "a", "n=1")
    gq("submit", "--id", "b", "n=2")
    gq("submit", "--id", "c", "n=3")
    gq("claim")
    gq("done", "a")
    before = remote_repo.count()
    assert gq("cancel", "b", "c").stdout.strip() == "cancelled 2: b c"
    assert remote_repo.count() == before + 1
    assert remote_repo.states() == {"a": "done", "b": "cancelled", "c": "cancelled"}
    tip = remote_repo.tip()
    assert "already finished as done" in gq("cancel", "a", code=1).stderr
    assert "already cancelled" in gq("cancel", "b", code=1).stderr
    assert "no task" in gq("requeue", "zzz", code=1).stderr
    assert remote_repo.tip() == tip
    assert gq("requeue", "a", "b").stdout.strip() == "requeued 2: a b"
    assert remote_repo.states() == {"a": "pending", "b": "pending", "c": "cancelled"}
    assert "already pending" in gq("requeue", "a", code=1).stderr
    # `gitqueue requeue $(gitqueue ls --state failed --format ids)` with no failures: nothing to do
    tip = remote_repo.tip()
    assert gq("ls", "--state", "failed", "--format", "ids").stdout == ""
    assert gq("requeue").stdout == "requeued 0\n" and gq("cancel").stdout == "cancelled 0\n"
    assert remote_repo.tip() == tip
    assert json.loads(gq("cancel", "a", "--format", "json").stdout) == ["a"]
    assert json.loads(gq("requeue", "a", "c", "--format", "json").stdout) == ["a", "c"]
    assert json.loads(gq("requeue", "--where", "state == 'failed'", "-f", "json").stdout) == []
    assert remote_repo.states() == {"a": "pending", "b": "pending", "c": "pending"}


# ---------------------------------------------------------------- reading


def test_ls_formats_and_filters(cli_queue: str) -> None:
    gq("submit", "--id", "low", "n=1", "--tag", "keep")
    gq("submit", "--id", "high", "n=2", "--priority", "5")
    gq("submit", "--id", "mid", "n=3", "--priority", "1", "--tag", "keep")
    gq("claim", "-w", "box/9")
    assert gq("ls", "--format", "ids").stdout.split() == ["mid", "low", "high"]
    assert gq("ls", "--state", "pending", "-f", "ids").stdout.split() == ["mid", "low"]
    assert gq("ls", "--tag", "keep", "-f", "ids").stdout.split() == ["mid", "low"]
    listed = json.loads(gq("ls", "--format", "json").stdout)
    assert [(t["id"], t["state"], t["priority"]) for t in listed] == [
        ("mid", "pending", 1),
        ("low", "pending", 0),
        ("high", "running", 5),
    ]
    assert listed[2]["run"]["worker"] == "box/9" and listed[1]["tags"] == ["keep"]
    table = gq("ls").stdout
    assert re.search(r"^ID\s+STATE\s+PRI\s+ARGS", table, re.MULTILINE)
    assert re.search(r"^high\s+running\s+5\s+n=2\s+\d+\s+box/9", table, re.MULTILINE)
    assert gq("ls", "--state", "done", "-f", "json").stdout.strip() == "[]"
    gq("ls", "--state", "finished", code=2)


def test_show_yaml_and_json(cli_queue: str, remote_repo: RemoteRepo) -> None:
    gq("submit", "--id", "exp-1", "lr=0.01")
    shown = gq("show", "exp-1").stdout
    assert shown.splitlines()[0] == "# pending/exp-1.yaml (pending)"
    assert shown.split("\n", 1)[1] == remote_repo.read("pending/exp-1.yaml")
    data = json.loads(gq("show", "exp", "--format", "json").stdout)  # a unique prefix is enough
    assert data["id"] == "exp-1" and data["state"] == "pending" and data["args"] == {"lr": 0.01}
    assert "no task 'nope'" in gq("show", "nope", code=1).stderr


def test_status_table_json_and_watch(cli_queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    gq("submit", "--grid", "n=1,2,3")
    gq("claim", "-w", "box/2")
    info = json.loads(gq("status", "--format", "json").stdout)
    assert info["counts"] == {"pending": 2, "running": 1, "done": 0, "failed": 0, "cancelled": 0}
    assert info["queue"] == cli_queue and info["running"][0]["worker"] == "box/2"
    assert info["oldest_pending"]["id"] == "000002-n2"
    table = gq("status").stdout
    assert "pending 2  running 1  done 0  failed 0  cancelled 0" in table
    assert re.search(r"000001-n1\s+claimed\s+box/2\s+1\s+\d+s\s+-\s+\S+Z", table)  # no heartbeat yet
    assert "runs: 0 running, 0 held in a batch (not started), 1 claimed with no heartbeat yet" in table

    # --watch sleeps `--interval` between refreshes: stop it at the second one. (time.sleep is
    # the time module's, shared with subprocess's own short waits, which keep really sleeping.)
    refreshes = []
    real_sleep = time.sleep

    def interrupt_at_the_second_refresh(seconds: float) -> None:
        if seconds != 0.75:
            return real_sleep(seconds)
        refreshes.append(seconds)
        if len(refreshes) == 2:
            raise KeyboardInterrupt
        return None

    monkeypatch.setattr(gitqueue.cli.time, "sleep", interrupt_at_the_second_refresh)
    watched = gq("status", "--watch", "--interval", "0.75")
    assert refreshes == [0.75, 0.75] and "pending 2" in watched.stdout


# ---------------------------------------------------------------- the installed command


def test_installed_entry_point(bare_remote: Path, remote_repo: RemoteRepo, tmp_path: Path) -> None:
    exe = shutil.which("gitqueue")
    assert exe is not None, "the gitqueue entry point is not installed (pip install -e .)"

    def run(*args: str | Path, code: int = 0) -> str:
        proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == code, f"gitqueue {args}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    assert run("--version").strip() == f"gitqueue {__version__}"
    run("init", bare_remote)
    ids = run("submit", "--grid", "seed=1,2").split()
    claimed = json.loads(run("claim", "--format", "json", "--worker", "proc/1"))
    run("done", claimed["id"], "--token", claimed["token"], "--result", "ok=true")
    run("fail", ids[1], code=1)  # pending: nothing to fail
    assert remote_repo.states() == {ids[0]: "done", ids[1]: "pending"}
    assert remote_repo.log()[-2:] == [f"claim {ids[0]} by proc/1 (attempt 1)", f"done {ids[0]} by proc/1 (attempt 1)"]
    module = subprocess.run([sys.executable, "-m", "gitqueue", "claim"], capture_output=True, text=True, check=False)
    assert module.returncode == 0 and module.stdout.startswith(f"claimed {ids[1]}")


# ---------------------------------------------------------------- help and docs


def all_commands() -> dict[str, Any]:
    """Every command and subcommand, by its full name (``hooks install``)."""
    found: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, command in group.commands.items():
            found[prefix + name] = command
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")

    walk(get_command(app), "")
    return found


def test_the_core_commands_exist() -> None:
    core = {"init", "submit", "claim", "done", "fail", "requeue", "cancel", "ls", "show", "status"}
    assert core <= set(all_commands())


@pytest.mark.parametrize("name", sorted(all_commands()))
def test_every_command_has_help(name: str) -> None:
    command = all_commands()[name]
    assert command.help and len(command.help.strip()) > 20, f"`gitqueue {name}` needs a docstring"
    result = gq(*name.split(), "--help")
    assert result.stdout.startswith("Usage: ")
    summary = " ".join(command.help.strip().split("\n\n")[0].split())
    assert summary in " ".join(result.stdout.split())
    if not hasattr(command, "commands"):
        assert "Example" in command.help, f"`gitqueue {name}` help should show a real example"


@pytest.mark.parametrize("name", sorted(all_commands()))
def test_every_command_is_in_the_readme(name: str) -> None:
    text = README.read_text()
    *parent, last = name.split()
    pattern = rf"`(gitqueue )?{re.escape(' '.join([*parent, last]))}\b"
    assert re.search(pattern, text), f"README.md does not mention `gitqueue {name}`"


def test_ci_runs_the_readme_test_command_in_a_fresh_venv() -> None:
    """CI must run what a new user runs: the README's second command, in a venv it creates."""
    blocks = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    test_command = blocks[1].strip()
    assert "python3 -m venv" in test_command and "pytest" in test_command
    ci = (README.parent / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


# ---------------------------------------------------------------- what ls and status show of a damaged queue


def test_ls_shows_invalid_task_files_with_their_reason(cli_queue: str) -> None:
    gq("submit", "--grid", "lr=0.1,0.2")
    RemoteRepo(Path(cli_queue)).person_commit(
        {
            "pending/bad-yaml.yaml": "args: {lr: 0.3\n",
            "pending/bad-type.yaml": "args: {lr: 0.4}\npriority: high\n",
            "done/bad-stamp.yaml": "args: {when: !!timestamp hello}\n",
        }
    )
    lines = gq("ls").stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["000001-lr0.1", "000002-lr0.2"]
    assert lines[3:] == [  # in state order, as the tasks are
        "invalid  pending/bad-type.yaml:2:11: field 'priority' must be an integer, not str 'high'",
        "invalid  pending/bad-yaml.yaml:2:1: while parsing a flow mapping expected ',' or '}', but got '<stream end>'",
        "invalid  done/bad-stamp.yaml:1:14: cannot read 'hello' as !!timestamp (not a valid !!timestamp value)",
    ]
    pending = gq("ls", "--state", "pending").stdout
    assert "pending/bad-type.yaml" in pending and "bad-stamp" not in pending
    listed = json.loads(gq("ls", "--format", "json").stdout)
    assert [t.get("id") or t["path"] for t in listed] == [
        "000001-lr0.1", "000002-lr0.2", "pending/bad-type.yaml", "pending/bad-yaml.yaml", "done/bad-stamp.yaml"
    ]  # fmt: skip
    assert listed[2]["invalid"].startswith("pending/bad-type.yaml:2:11: field 'priority'")
    ids = gq("ls", "--format", "ids")
    assert ids.stdout.split() == ["000001-lr0.1", "000002-lr0.2"] and "3 invalid task file(s) left out" in ids.stderr
    filtered = gq("ls", "--where", "args.lr > 0.15")
    assert filtered.stdout.splitlines()[1:] == [filtered.stdout.splitlines()[1]] and "000002" in filtered.stdout
    assert "3 invalid task file(s) not shown" in filtered.stderr


def test_status_counts_a_task_in_two_folders_once_and_reports_it(cli_queue: str) -> None:
    gq("submit", "--grid", "n=1,2")
    # a person restores an old copy of a pending task into done/, and writes a task by hand
    remote = RemoteRepo(Path(cli_queue))
    remote.person_commit({"done/000001-n1.yaml": "args: {n: 1}\n", "pending/by-hand.yaml": "args: {n: 9}\n"})
    info = json.loads(gq("status", "--format", "json").stdout)
    assert info["counts"] == {"pending": 2, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
    assert info["total"] == 2
    assert sorted(p["path"] for p in info["invalid"]) == ["done/000001-n1.yaml", "pending/000001-n1.yaml"]
    why = "a task lives in one folder (not counted)"
    assert [p["problem"] for p in info["invalid"]] == [  # in state order
        f"pending/000001-n1.yaml: task '000001-n1' is also in done/000001-n1.yaml: {why}",
        f"done/000001-n1.yaml: task '000001-n1' is also in pending/000001-n1.yaml: {why}",
    ]
    assert info["oldest_pending"]["id"] == "000002-n2", "a task with a submit time is known to be old"
    table = gq("status").stdout
    assert "pending 2  running 0" in table and "(total 2)" in table
    assert "submitted None" not in table and re.search(r"oldest pending: 000002-n2 \(submitted 20\d\d-", table)

    remote.person_commit({"pending/000002-n2.yaml": None, "pending/000001-n1.yaml": None})
    table = gq("status").stdout
    assert "oldest pending: by-hand (written by hand: no submit time)" in table, table


def test_terminal_escapes_in_a_tasks_args_are_shown_not_sent(cli_queue: str) -> None:
    """Whoever can push a task must not drive the terminals of people who list it."""
    hostile = "\x1b]0;owned\x07\x1b[2J"  # set the window title, clear the screen
    gq("submit", f"note={hostile}", "--id", "odd")
    listed = gq("ls").stdout
    assert "\x1b" not in listed and "\x07" not in listed
    assert "\\x1b]0;owned\\x07\\x1b[2J" in listed  # shown, escaped, as validate shows file names
    said = gq("work", "--", "true").stderr
    assert "▶ odd (attempt 1) note=\\x1b]0;owned\\x07\\x1b[2J" in said and "\x1b" not in said
    results = gq("results").stdout  # done now: its row has the args
    assert "\x1b" not in results and "\\x1b[2J" in results
