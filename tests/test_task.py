"""The task file format: what a valid task is, how bad files are reported, and what gitqueue
writes back into a file (a person's lines, comments and key order always survive)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RemoteRepo

from gitqueue import Queue, State
from gitqueue.errors import InvalidId, InvalidTask
from gitqueue.task import MARKER, Task, check_id, fan, parse_task, render, split_task_path


def invalid(text: str | bytes, path: str = "pending/t1.yaml") -> InvalidTask:
    raw = text.encode() if isinstance(text, str) else text
    with pytest.raises(InvalidTask) as caught:
        parse_task(raw, path=path)
    assert path in str(caught.value), "the message must name the file"
    return caught.value


# ---------------------------------------------------------------- valid files


def test_smallest_valid_task_takes_every_default() -> None:
    task = parse_task(b"args: {lr: 0.01}", path="pending/lr.yaml")
    assert (task.id, task.state, task.args) == ("lr", State.PENDING, {"lr": 0.01})
    assert task.priority == 0 and task.tags == [] and task.requires == {}
    assert task.max_attempts is None and task.lease is None and task.cmd is None
    assert task.attempts == [] and task.run is None and task.result is None
    assert task.token is None and task.next_attempt == 1 and task.attempts_spent == 0


def test_every_person_field() -> None:
    text = """\
args:
  lr: 0.01
  layers: [64, 64]
  opt: {name: adam, beta: 0.9}
  tag: null
priority: -3
tags: [sweep-1, 7]
requires: {gpu: [a100, h100], host: box}
max_attempts: 5
lease: 120
cmd: [python, train.py, --lr, '{lr}']
"""
    task = parse_task(text.encode(), path="pending/full.yaml")
    assert task.args == {"lr": 0.01, "layers": [64, 64], "opt": {"name": "adam", "beta": 0.9}, "tag": None}
    assert task.priority == -3
    assert task.tags == ["sweep-1", "7"]
    assert task.requires == {"gpu": ["a100", "h100"], "host": "box"}
    assert (task.max_attempts, task.lease) == (5, 120)
    assert task.cmd == ["python", "train.py", "--lr", "{lr}"]
    assert task.text == text


def test_dates_and_times_stay_strings() -> None:
    # args round-trip through JSON and argv unchanged, so YAML timestamps are not decoded
    task = parse_task(b"args: {day: 2024-01-31, at: 2024-01-31T10:00:00Z}\n", path="pending/d.yaml")
    assert task.args == {"day": "2024-01-31", "at": "2024-01-31T10:00:00Z"}


def test_hex_tokens_that_look_like_exponents_stay_strings() -> None:
    """Run tokens are hex: one like 12e45 is written unquoted (YAML 1.1 sees no number there)
    and must read back as the same string, or the run could never report."""
    raw = f"args: {{}}\n{MARKER}\nrun: {{worker: w, token: 12e45, claimed_at: '2026-01-01T00:00:00Z'}}\n"
    assert parse_task(raw.encode(), path="running/t.yaml").token == "12e45"


def test_task_in_a_fanned_out_folder() -> None:
    task = parse_task(b"args: {a: 1}\n", path=f"done/{fan('t-1')}/t-1.yaml")
    assert (task.id, task.state) == ("t-1", State.DONE)
    assert len(fan("t-1")) == 2 and int(fan("t-1"), 16) >= 0


# ---------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("args: [0.01]\n", "args", "mapping"),
        ("args: 0.01\n", "args", "mapping"),
        ("args: {a: 1}\npriority: high\n", "priority", "integer"),
        ("args: {a: 1}\npriority: 1.5\n", "priority", "integer"),
        ("args: {a: 1}\npriority: true\n", "priority", "integer"),
        ("args: {a: 1}\ntags: sweep\n", "tags", "list"),
        ("args: {a: 1}\ntags: [{a: 1}]\n", "tags", "plain words"),
        ("args: {a: 1}\nrequires: [gpu]\n", "requires", "mapping"),
        ("args: {a: 1}\nmax_attempts: '3'\n", "max_attempts", "integer"),
        ("args: {a: 1}\nmax_attempts: 0\n", "max_attempts", "at least 1"),
        ("args: {a: 1}\nlease: -5\n", "lease", "at least 1"),
        ("args: {a: 1}\nlease: 1h\n", "lease", "integer"),
        ("args: {a: 1}\ncmd: python train.py\n", "cmd", "list"),
        ("args: {a: 1}\ncmd: [python, 3]\n", "cmd", "list of strings"),
        ("args: {a: 1}\ncmd: []\n", "cmd", "non-empty"),
    ],
)
def test_wrong_types_name_the_field(text: str, field: str, words: str) -> None:
    message = str(invalid(text))
    assert f"'{field}'" in message and words in message


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("args: {a: 1}\npriority: high\n", 2, 11),
        ("# a comment\nargs: {a: 1}\ntags:\n  sweep: 1\n", 4, 3),
        ("args: [1, 2]\n", 1, 7),
        ("args: {a: 1}\nlease: -5\n", 2, 8),
        ("args: {a: 1}\npriorty: 3\n", 2, 1),
        (f"args: {{a: 1}}\n{MARKER}\nattempts:\n- {{attempt: 1}}\n- {{attempt: two}}\n", 5, 13),
    ],
)
def test_wrongly_typed_fields_name_their_line_and_column(text: str, line: int, column: int) -> None:
    error = invalid(text)
    assert (error.line, error.column) == (line, column)
    assert str(error).startswith(f"pending/t1.yaml:{line}:{column}: ")


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ("attempts: [1, 2]", "'attempts' must be a list of mappings"),
        ("attempts: [{attempt: x, outcome: failed}]", "'attempts[0].attempt' must be an integer"),
        ("requeued: {after_attempt: x}", "'requeued.after_attempt' must be an integer"),
        ("submitted: {at: 5}", "'submitted.at' must be a time"),
        ("submitted: {at: yesterday}", "'submitted.at' must be a time like"),
        ("attempts: [{attempt: -1}]", "between 0 and"),
        ("attempts: [{attempt: 1, duration: fast}]", "'attempts[0].duration' must be a number"),
        ("attempts: [{attempt: 1, exit_code: [1]}]", "'attempts[0].exit_code' must be an integer"),
    ],
)
def test_a_forged_or_damaged_record_below_the_marker_makes_the_file_invalid(record: str, words: str) -> None:
    assert words in invalid(f"args: {{a: 1}}\n{MARKER}\n{record}\n").problem


def test_a_marker_line_inside_a_value_makes_the_file_invalid_before_gitqueue_writes_below_it() -> None:
    # the whole file parses, but the person's part alone does not: a claim would write an unreadable file
    text = f'args: {{note: "see\n{MARKER}\nbelow"}}\n'
    error = invalid(text)
    assert "marker line sits inside a value" in error.problem and error.line == 2
    assert "duplicate key 'args'" in invalid(f"args: {{a: 1}}\n{MARKER}\nargs: {{a: 2}}\n").problem
    below = invalid(f"args: {{a: 1}}\n# more\n{MARKER}\nattempts: [1\n")
    assert below.line == 5, "a problem below the marker is counted in lines of the whole file"


def test_a_running_tasks_claim_must_be_readable() -> None:
    bad = f"args: {{a: 1}}\n{MARKER}\nrun: {{token: abc, claimed_at: soon, lease: {10**400}}}\n"
    assert "'run.lease' must be between 0 and" in invalid(bad, path="running/t1.yaml").problem
    assert "'run.claimed_at' must be a time" in invalid(bad.replace(str(10**400), "60"), path="running/t1.yaml").problem


@pytest.mark.parametrize("name", ["priority", "lease", "max_attempts"])
def test_integer_fields_fit_in_64_bits(name: str) -> None:
    assert f"field '{name}' is too large" in invalid(f"args: {{a: 1}}\n{name}: {10**400}\n").problem


def test_argument_names_must_be_strings() -> None:
    assert "argument names" in str(invalid("args: {1: a}\n"))


def test_missing_args() -> None:
    assert "missing field 'args'" in str(invalid("priority: 3\n"))


@pytest.mark.parametrize("name", ["arg", "Args", "prio", "id", "state"])
def test_unknown_field(name: str) -> None:
    message = str(invalid(f"args: {{a: 1}}\n{name}: 1\n"))
    assert f"unknown field '{name}'" in message
    assert "args, priority, tags, requires, max_attempts, lease, timeout, cmd" in message


@pytest.mark.parametrize(
    ("text", "line", "column", "key"),
    [
        ("args: {lr: 1}\nargs: {lr: 2}\n", 2, 1, "args"),
        ("args:\n  lr: 1\n  bs: 2\n  lr: 3\n", 4, 3, "lr"),
        ("args: {lr: 1, lr: 1}\n", 1, 15, "lr"),
        ("args: {a: 1}\nrequires: {gpu: a, gpu: b}\n", 2, 20, "gpu"),
    ],
)
def test_duplicate_keys_are_refused_where_they_are(text: str, line: int, column: int, key: str) -> None:
    error = invalid(text)
    assert (error.line, error.column) == (line, column)
    assert str(error) == f"pending/t1.yaml:{line}:{column}: duplicate key '{key}'"


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("- a\n- b\n", "a list"),
        ("just words\n", "a str"),
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("3\n", "int"),
    ],
)
def test_a_task_file_must_be_a_mapping(text: str, found: str) -> None:
    message = str(invalid(text))
    assert "must be a mapping" in message and found in message


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("args:\n\tlr: 1\n", 2, 1, "'\\t'"),
        ("args: {lr: 0.01\npriority: 1\n", 2, 9, "expected ',' or '}'"),
        ("args: {a: 1}\npriority: [1\n", 3, 1, "expected ',' or ']'"),
        ("args: {lr: 1}\n  bad: indent\n", 2, 3, "expected <block end>"),
        ("args: {s: 'open\n", 2, 1, "quoted scalar"),
    ],
)
def test_invalid_yaml_names_line_and_column(text: str, line: int, column: int, words: str) -> None:
    error = invalid(text)
    assert (error.line, error.column) == (line, column)
    assert str(error).startswith(f"pending/t1.yaml:{line}:{column}: ")
    assert words in str(error)


def test_unsafe_yaml_is_refused_not_run(tmp_path: Path) -> None:
    witness = tmp_path / "pwned"
    error = invalid(f"args: {{x: !!python/object/apply:os.system ['touch {witness}']}}\n")
    assert "constructor" in str(error) and error.line == 1
    assert not witness.exists()


def test_alias_bombs_deep_nesting_binary_and_huge_files_are_refused() -> None:
    aliases = "".join(f"  k{i}: *a\n" for i in range(70))
    assert "aliases" in str(invalid(f"x: &a [1]\nargs:\n{aliases}"))
    assert "nested deeper" in str(invalid("args: " + "[" * 40 + "]" * 40 + "\n"))
    assert "NUL" in str(invalid(b"args: {a: 1}\n\0"))
    assert "UTF-8" in str(invalid(b"args: {a: '\xff'}\n"))
    assert "at most" in str(invalid(b"args: {a: '" + b"x" * (1024 * 1024) + b"'}\n"))


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("args: {a: !!timestamp hello}\n", 1, 11, "cannot read 'hello' as !!timestamp"),
        ("args: {a: !!timestamp 2026-13-45}\n", 1, 11, "month must be in 1..12"),
        ("args: {a: !!int abc}\n", 1, 11, "cannot read 'abc' as !!int"),
        ("args: {a: !!int 0x}\n", 1, 11, "as !!int"),
        ("args: {a: !!float abc}\n", 1, 11, "cannot read 'abc' as !!float"),
        ("args: {a: !!bool maybe}\n", 1, 11, "cannot read 'maybe' as !!bool"),
        ("args: {a: !!set [1]}\n", 1, 11, "expected a mapping node"),
        ("args: {a: 1}\npriority: " + "9" * 5000 + "\n", 2, 11, "5,000 characters: gitqueue reads up to about 4,000"),
        ("args: {a: 1}\npriority: 0x" + "f" * 5000 + "\n", 2, 11, "5,002 characters"),
        ("args: {big: " + "7" * 4400 + "}\n", 1, 13, "4,400 characters"),  # past Python's own limit to print it
    ],
)
def test_values_no_constructor_can_build_make_the_file_invalid(text: str, line: int, column: int, words: str) -> None:
    error = invalid(text)
    assert words in error.problem
    assert (error.line, error.column) == (line, column)


def test_a_long_integer_that_can_be_printed_is_read() -> None:
    task = parse_task(b"args: {seed: " + b"9" * 4000 + b"}\n", path="pending/t1.yaml")
    assert str(task.args["seed"]) == "9" * 4000


def bomb(levels: int) -> str:
    """The issue's alias bomb: each level a list of two aliases to the level before."""
    lines = ["args:", "  l0: &l0 [lol, lol]"]
    lines += [f"  l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_under_the_alias_count_is_refused_by_what_it_expands_to() -> None:
    text = bomb(25)
    assert len(text) < 600 and text.count("*") == 48  # well under MAX_ALIASES
    error = invalid(text)
    assert "aliases repeat more than 100,000 values" in error.problem
    assert error.line is not None and error.line < 25, "refused where the expansion passes the bound"


def test_aliases_that_repeat_a_little_are_fine() -> None:
    task = parse_task(bomb(10).encode(), path="pending/t1.yaml")
    assert len(task.args["l9"]) == 2 and task.args["l9"][0] == task.args["l8"]


def test_merge_keys_work_and_what_is_written_beside_them_wins() -> None:
    text = "args:\n  base: &base {lr: 0.1, bs: 32}\n  run: {<<: *base, bs: 64}\n"
    assert parse_task(text.encode(), path="pending/t1.yaml").args["run"] == {"lr": 0.1, "bs": 64}
    assert "duplicate key 'bs'" in invalid("args: {<<: {lr: 1}, bs: 1, bs: 2}\n").problem


def test_a_recursive_alias_is_refused() -> None:
    error = invalid("args: &a {x: *a}\n")
    assert "recursive" in error.problem and (error.line, error.column) == (1, 14)


def test_aliases_cannot_nest_deeper_than_the_file_may() -> None:
    lines = ["l0: &l0 [1]"] + [f"l{i}: &l{i} [*l{i - 1}]" for i in range(1, 40)]
    assert "nested deeper than 32 levels" in str(invalid("\n".join(lines) + "\nargs: {}\n"))


def test_fields_gitqueue_writes_are_refused_above_the_marker() -> None:
    message = str(invalid("args: {a: 1}\nrun: {token: abc}\n", path="running/t1.yaml"))
    assert "'run' is written by gitqueue" in message
    text = f"args: {{a: 1}}\n{MARKER}\nrun: {{token: abc, worker: w}}\n"
    assert parse_task(text.encode(), path="running/t1.yaml").token == "abc"


def test_a_running_task_needs_its_run_token() -> None:
    assert "'token'" in str(invalid("args: {a: 1}\n", path="running/t1.yaml"))


# ---------------------------------------------------------------- ids and paths


@pytest.mark.parametrize("good", ["a", "lr0.01-bs32", "000001-x_y.z", "A" * 128, "..a", "-"])
def test_valid_ids(good: str) -> None:
    assert check_id(good) == good
    assert split_task_path(f"pending/{good}.yaml") == (State.PENDING, good)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "a b", "A" * 129, "café", "a\nb", "x:y", "a\\b"])
def test_bad_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidId, match="invalid task id"):
        check_id(bad)


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("pending/a b.yaml", "invalid task id"),
        ("pending/x.yml", "not a task path"),
        ("pending/a/b/c.yaml", "not a task path"),
        ("queued/x.yaml", "not a state folder"),
        ("pending/zz/x.yaml", f"belongs in pending/{fan('x')}/"),
    ],
)
def test_paths_that_are_not_tasks(path: str, words: str) -> None:
    with pytest.raises(InvalidTask, match=words):
        split_task_path(path)


# ---------------------------------------------------------------- the model


def test_matches_requires_against_worker_labels() -> None:
    task = parse_task(b"args: {a: 1}\nrequires: {gpu: [a100, h100], mem: 80}\n", path="pending/t.yaml")
    assert task.matches({"gpu": "a100", "mem": "80", "extra": "ok"})
    assert task.matches({"gpu": "h100", "mem": "80"})
    assert not task.matches({"gpu": "v100", "mem": "80"})
    assert not task.matches({"gpu": "a100"})
    assert not task.matches({})
    assert parse_task(b"args: {a: 1}\n", path="pending/t.yaml").matches({})


def test_attempts_spent_count_only_failures_since_the_last_requeue() -> None:
    task = Task(
        id="t",
        state=State.PENDING,
        args={},
        attempts=[
            {"attempt": 1, "outcome": "failed"},
            {"attempt": 2, "outcome": "reaped"},
            {"attempt": 3, "outcome": "requeued"},
            {"attempt": 4, "outcome": "failed"},
        ],
    )
    assert task.attempts_spent == 3 and task.next_attempt == 5
    assert task.evolve(requeued={"after_attempt": 3}).attempts_spent == 1
    assert task.attempts_spent == 3, "evolve must not change the original"


# ---------------------------------------------------------------- writing


HAND_WRITTEN = """\
# Sweep 7: does warm-up help at this batch size?
priority: 5          # run it before the rest
args:
  bs: 32   # the largest that fits
  lr: 0.01
  # warmup in steps
  warmup: 500
tags: [sweep-7]
"""


def test_render_keeps_the_person_part_byte_for_byte() -> None:
    task = parse_task(HAND_WRITTEN.encode(), path="pending/warm.yaml")
    run = {"token": "f00d", "worker": "gpu-box/0", "claimed_at": "2024-01-01T00:00:00.000Z", "lease": 60, "attempt": 1}
    claimed = task.evolve(state=State.RUNNING, run=run)
    text = render(claimed).decode()
    assert text.startswith(HAND_WRITTEN + MARKER + "\n")
    again = parse_task(text.encode(), path="running/warm.yaml")
    assert again.run == run and again.args == task.args and again.priority == 5
    # and a second rewrite replaces gitqueue's part instead of appending another one
    finished = again.evolve(state=State.DONE, run=None, attempts=[{"attempt": 1, "outcome": "done"}], result={"acc": 1})
    text = render(finished).decode()
    assert text.count(MARKER) == 1 and text.startswith(HAND_WRITTEN + MARKER)
    done = parse_task(text.encode(), path="done/warm.yaml")
    assert done.run is None and done.result == {"acc": 1} and done.attempts == [{"attempt": 1, "outcome": "done"}]


def test_render_of_a_new_task_reads_back_the_same() -> None:
    task = Task(id="n", state=State.PENDING, args={"lr": 0.01, "name": "a: b", "on": "yes"}, priority=2, tags=["x"])
    text = render(task)
    assert MARKER.encode() not in text
    back = parse_task(text, path="pending/n.yaml")
    assert back.person_fields() == task.person_fields()
    assert back.args == {"lr": 0.01, "name": "a: b", "on": "yes"}


def test_comments_and_key_order_survive_claim_and_done(queue: Queue, remote_repo: RemoteRepo) -> None:
    remote_repo.person_commit({"pending/warm.yaml": HAND_WRITTEN}, "add warm-up task")
    run = queue.claim()
    assert run is not None and run.id == "warm" and run.args == {"bs": 32, "lr": 0.01, "warmup": 500}
    running = remote_repo.read("running/warm.yaml")
    assert running.startswith(HAND_WRITTEN + MARKER + "\n")
    run.done({"loss": 0.25})
    assert remote_repo.states() == {"warm": "done"}
    final = remote_repo.read("done/warm.yaml")
    assert final.startswith(HAND_WRITTEN + MARKER + "\n") and final.count(MARKER) == 1
    task = parse_task(final.encode(), path="done/warm.yaml")
    assert task.result == {"loss": 0.25} and [a["outcome"] for a in task.attempts] == ["done"]
    assert task.attempts[0]["token"] == run.token


def test_a_persons_edit_to_a_running_task_survives_its_finish(queue: Queue, remote_repo: RemoteRepo) -> None:
    remote_repo.person_commit({"pending/warm.yaml": HAND_WRITTEN})
    run = queue.claim()
    assert run is not None
    running = remote_repo.read("running/warm.yaml")
    edited = running.replace("tags: [sweep-7]\n", "tags: [sweep-7, promising]  # looks good so far\n")
    assert edited != running
    remote_repo.person_commit({"running/warm.yaml": edited}, "tag a promising run")
    run.done({"loss": 0.1})
    final = remote_repo.read("done/warm.yaml")
    assert final.startswith(edited.partition(MARKER)[0] + MARKER)
    assert parse_task(final.encode(), path="done/warm.yaml").tags == ["sweep-7", "promising"]


def test_comments_survive_fail_requeue_and_cancel(queue: Queue, remote_repo: RemoteRepo) -> None:
    remote_repo.person_commit({"pending/warm.yaml": HAND_WRITTEN})
    run = queue.claim()
    assert run is not None
    run.fail("CUDA out of memory")
    assert remote_repo.read("pending/warm.yaml").startswith(HAND_WRITTEN + MARKER)
    queue.cancel(["warm"])
    assert remote_repo.read("cancelled/warm.yaml").startswith(HAND_WRITTEN + MARKER)
    queue.requeue(["warm"])
    text = remote_repo.read("pending/warm.yaml")
    assert text.startswith(HAND_WRITTEN + MARKER) and text.count(MARKER) == 1
    assert remote_repo.states() == {"warm": "pending"}
