"""Grids, samples and repeats: one parser for both faces, bad specs refused with the spec quoted."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import test_cli
from conftest import RemoteRepo
from test_cli import gq, open_queue

from gitqueue import InvalidSweep, Queue, State, Sweep
from gitqueue.sweep import parse_value

cli_queue = test_cli.cli_queue  # the fixture: a queue made by `gitqueue init`

# ---------------------------------------------------------------- values, the same in both faces


def test_values_are_read_the_same_way_everywhere() -> None:
    assert parse_value("1e-3") == 1e-3 and isinstance(parse_value("1e-3"), float)
    assert [parse_value(v) for v in ("3e-4", "-2.5E2", ".5", "32", "-7", "true", "a", "[1, 2]", "")] == [
        3e-4, -250.0, 0.5, 32, -7, True, "a", [1, 2], "",
    ]  # fmt: skip


def test_grid_of_exponent_numbers_stores_floats_like_the_python_api(cli_queue: str) -> None:
    gq("submit", "--grid", "lr=1e-3,3e-4", "--tag", "cli")
    with open_queue(cli_queue) as q:
        q.submit([{"args": {"lr": 1e-3}, "tags": ["api"]}, {"args": {"lr": 3e-4}, "tags": ["api"]}])
        small = q.tasks(where="args.lr < 0.01")
    assert sorted((t.tags[0], t.args["lr"]) for t in small) == [
        ("api", 3e-4),
        ("api", 1e-3),
        ("cli", 3e-4),
        ("cli", 1e-3),
    ]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("lr", "expected KEY=V1,V2"),
        ("lr=", "empty value"),
        ("lr=0.1,,0.01", "empty value"),
        ("=0.1,0.2", "expected KEY=V1,V2"),
    ],
)
def test_bad_grid_specs_are_refused_quoting_the_spec(
    cli_queue: str, remote_repo: RemoteRepo, spec: str, problem: str
) -> None:
    tip = remote_repo.tip()
    result = gq("submit", "--grid", spec, code=2)
    assert repr(spec) in result.stderr and problem in result.stderr
    assert remote_repo.tip() == tip


def test_a_key_given_twice_is_refused(cli_queue: str, remote_repo: RemoteRepo) -> None:
    tip = remote_repo.tip()
    result = gq("submit", "--grid", "lr=0.1,0.01", "--grid", "lr=0.3", code=2)
    assert "'lr=0.3'" in result.stderr and "given twice" in result.stderr
    assert "given twice" in gq("submit", "lr=0.1", "--grid", "lr=0.3,0.4", code=2).stderr
    assert "given twice" in gq("submit", "--grid", "lr=0.3,0.4", "--sample", "lr=uniform:0:1", code=2).stderr
    assert "given twice" in gq("submit", "--grid", "seed=1,2", "--repeat", "2", code=2).stderr
    assert (
        "do not apply to --from" in gq("submit", "--from", "-", "--repeat", "2", input="- {args: {}}\n", code=2).output
    )
    assert remote_repo.tip() == tip


# ---------------------------------------------------------------- sampling


SAMPLED = [
    "--sample", "lr=loguniform:1e-5:1e-1", "--sample", "bs=choice:16,32,64", "--sample", "drop=uniform:0:0.5",
    "--sample", "layers=int:1:8", "--samples", "50", "--seed", "0",
]  # fmt: skip


def _args(url: str) -> list[dict[str, object]]:
    with open_queue(url) as q:
        return [t.args for t in q.tasks()]


def test_sampling_is_seeded_one_commit_and_says_what_it_sampled(
    cli_queue: str, remote_repo: RemoteRepo, tmp_path: Path
) -> None:
    before = remote_repo.count()
    ids = gq("submit", *SAMPLED).stdout.split()
    assert len(ids) == 50 and remote_repo.count() == before + 1
    subject = remote_repo.log()[-1]
    assert subject == (
        "submit 50 tasks: 50 samples of lr~loguniform:1e-05:0.1, bs~choice:16,32,64, drop~uniform:0:0.5, "
        "layers~int:1:8 (seed 0)"
    )
    tasks = _args(cli_queue)
    assert all(1e-5 <= t["lr"] <= 1e-1 and 0 <= t["drop"] <= 0.5 for t in tasks)  # type: ignore[operator]
    assert {t["bs"] for t in tasks} == {16, 32, 64} and {t["layers"] for t in tasks} <= set(range(1, 9))
    assert all(isinstance(t["layers"], int) and isinstance(t["lr"], float) for t in tasks)
    logs = [math.log10(t["lr"]) for t in tasks]  # type: ignore[arg-type]
    assert min(logs) < -4 and max(logs) > -2  # spread over the decades, not bunched at the top

    other = tmp_path / "other.git"  # the same seed on another queue: the same tasks
    Queue.init(str(other), folder=tmp_path / "elsewhere").close()
    gq("submit", *SAMPLED, "--queue", other)
    assert _args(str(other)) == tasks
    gq("submit", *SAMPLED[:-1], "1", "--queue", other)  # another seed: other values
    assert _args(str(other))[50:] != tasks


def test_sampling_mixes_with_grid_and_repeat(cli_queue: str, remote_repo: RemoteRepo) -> None:
    gq("submit", "--grid", "model=a,b", "--sample", "lr=loguniform:1e-4:1e-2", "--samples", "3", "--seed", "7",
       "--repeat", "2", "epochs=5")  # fmt: skip
    tasks = _args(cli_queue)
    assert len(tasks) == 2 * 3 * 2
    assert [(t["model"], t["seed"]) for t in tasks[:6]] == [("a", 0), ("a", 1)] * 3
    draws = [t["lr"] for t in tasks if t["model"] == "a" and t["seed"] == 0]
    assert draws == [t["lr"] for t in tasks if t["model"] == "b" and t["seed"] == 1]  # each grid point gets them all
    assert len(set(draws)) == 3 and all(t["epochs"] == 5 for t in tasks)
    assert remote_repo.log()[-1] == (
        "submit 12 tasks: grid model; 3 samples of lr~loguniform:0.0001:0.01 (seed 7); repeat 2 (seed)"
    )
    gq("submit", "--grid", "x=1,2", "--repeat", "3", "--repeat-key", "run")
    assert [t["run"] for t in _args(cli_queue)[12:]] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("lr=normal:0:1", "unknown distribution 'normal'"),
        ("lr=uniform:1:0", "low 1 is above high 0"),
        ("lr=loguniform:0:1", "bounds above 0"),
        ("lr=loguniform:-1:1", "bounds above 0"),
        ("lr=uniform:0", "expected uniform:LOW:HIGH"),
        ("lr=uniform:a:1", "low 'a' is not a number"),
        ("n=int:1:2.5", "whole-number bounds"),
        ("bs=choice:", "empty value"),
        ("bs=choice:1,,2", "empty value"),
        ("loguniform:1e-5:1e-1", "expected KEY=DISTRIBUTION"),
    ],
)
def test_bad_sample_specs_are_refused_quoting_the_spec(
    cli_queue: str, remote_repo: RemoteRepo, spec: str, problem: str
) -> None:
    tip = remote_repo.tip()
    result = gq("submit", "--sample", spec, "--samples", "3", code=2)
    assert repr(spec) in result.stderr and problem in result.stderr
    assert remote_repo.tip() == tip


def test_sampling_without_a_seed_names_the_seed_it_chose(cli_queue: str, remote_repo: RemoteRepo) -> None:
    gq("submit", "--sample", "x=uniform:0:1", "--samples", "4")
    seed = int(remote_repo.log()[-1].rsplit("(seed ", 1)[1].rstrip(")"))
    first = _args(cli_queue)
    assert [t["x"] for t in first] == [a["x"] for a in Sweep(sample={"x": "uniform:0:1"}, samples=4, seed=seed).args()]


def test_the_python_api_takes_the_same_sweep(queue: Queue, remote_repo: RemoteRepo) -> None:
    plan = Sweep(grid={"bs": [16, 32]}, sample={"lr": "loguniform:1e-5:1e-1"}, samples=5, seed=0, repeat=2)
    ids = queue.submit_sweep(plan, tags=["api"], priority=3)
    assert len(ids) == 20 and remote_repo.log()[-1].startswith("submit 20 tasks: grid bs; 5 samples of lr~")
    tasks = queue.tasks(State.PENDING)
    assert (
        [t.args for t in tasks]
        == plan.args()
        == Sweep.from_specs(grid=["bs=16,32"], sample=["lr=loguniform:1e-5:1e-1"], samples=5, seed=0, repeat=2).args()
    )
    assert all(t.tags == ["api"] and t.priority == 3 for t in tasks)
    with pytest.raises(InvalidSweep, match="'lr=uniform:2:1'"):
        Sweep(sample={"lr": "uniform:2:1"})
    with pytest.raises(InvalidSweep, match="samples needs"):
        Sweep(samples=3)
