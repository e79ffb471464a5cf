"""GPU slots: which GPUs a worker owns (``--gpus``), how many runs it keeps (``--slots``), which
GPUs each run holds, what its command sees (``CUDA_VISIBLE_DEVICES``), and the task field
``gpus:``."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RemoteRepo

from gitqueue import Queue
from gitqueue.errors import GitqueueError, GpuError, InvalidTask
from gitqueue.gpus import GPU_ENV, GpuPool, env_for, gpus_wanted, misfit, nvidia_smi_gpus, parse_gpus, slot_count
from gitqueue.task import MAX_TASK_GPUS, Task, parse_task

# What `nvidia-smi -L` prints on a machine with two whole GPUs and one split into MIG instances.
LISTING = """\
GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5b3c7e5c-1a2b-4c3d-9e8f-0123456789ab)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-6c4d8f6d-2b3c-5d4e-af90-123456789abc)
  MIG 3g.40gb     Device  0: (UUID: MIG-4b6f0e9a-8c1d-5e2f-b3a4-56789abcdef0)
  MIG 3g.40gb     Device  1: (UUID: MIG-7d8e9f0a-1b2c-5d3e-84f5-6789abcdef01)
GPU 2: NVIDIA GeForce RTX 4090 (UUID: GPU-7e5f9a7e-3c4d-6e5f-b0a1-23456789abcd)
"""


def fake_nvidia_smi(folder: Path, *, stdout: str = "", stderr: str = "", status: int = 0) -> dict[str, str]:
    """An executable ``nvidia-smi`` in ``folder`` that answers ``-L`` as told (and refuses any
    other use, as the real one would print something else); the environment that finds it first."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "listing.out").write_text(stdout)
    (folder / "listing.err").write_text(stderr)
    script = folder / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$#" -eq 1 ] && [ "$1" = -L ] || { echo "unexpected arguments: $*" >&2; exit 64; }\n'
        f'cat "{folder}/listing.out"; cat "{folder}/listing.err" >&2\n'
        f"exit {status}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def gpu_error(value: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(GpuError) as caught:
        parse_gpus(value, environ=environ if environ is not None else {})
    assert isinstance(caught.value, GitqueueError) and caught.value.exit_code == 2
    return str(caught.value)


# ---------------------------------------------------------------- --gpus IDS


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("0,1,2,3", ("0", "1", "2", "3")),
        ("3, 1", ("3", "1")),  # the order given is the order GPUs are handed out
        ("7", ("7",)),
        ("GPU-5b3c7e5c-1a2b-4c3d-9e8f-0123456789ab,2", ("GPU-5b3c7e5c-1a2b-4c3d-9e8f-0123456789ab", "2")),
        ("MIG-4b6f0e9a-8c1d-5e2f-b3a4-56789abcdef0", ("MIG-4b6f0e9a-8c1d-5e2f-b3a4-56789abcdef0",)),
        ("MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0", ("MIG-GPU-e91edf3b-b297-37c1-a2a7-7601c3238fa2/1/0",)),
    ],
)
def test_gpu_ids_are_taken_as_written(value: str, ids: tuple[str, ...]) -> None:
    assert parse_gpus(value, environ={}) == ids


@pytest.mark.parametrize("value", ["", " ", "0,,1", "0,", ",0"])
def test_an_empty_gpu_id_is_refused(value: str) -> None:
    message = gpu_error(value)
    assert "empty GPU id" in message and "--gpus 0,1,2,3" in message


def test_gpu_ids_separated_by_spaces_are_refused() -> None:
    message = gpu_error("0 1")
    assert "GPU id '0 1' holds a space or comma" in message and "--gpus 0,1" in message


def test_a_gpu_named_twice_is_refused() -> None:
    message = gpu_error("0,1, 1")
    assert "GPU 1 is named twice" in message and "'0,1, 1'" in message


# ---------------------------------------------------------------- --gpus all


def test_all_is_every_gpu_nvidia_smi_lists(tmp_path: Path) -> None:
    environ = fake_nvidia_smi(tmp_path / "bin", stdout=LISTING)
    ids = parse_gpus("all", environ=environ)
    # whole GPUs by index; a GPU split into MIG instances counts as its instances (by UUID)
    assert ids == (
        "0",
        "MIG-4b6f0e9a-8c1d-5e2f-b3a4-56789abcdef0",
        "MIG-7d8e9f0a-1b2c-5d3e-84f5-6789abcdef01",
        "2",
    )
    assert parse_gpus(" ALL ", environ=environ) == ids


def test_all_without_nvidia_smi_says_so_and_how_to_name_gpus(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    message = gpu_error("all", {"PATH": str(empty)})
    assert "nvidia-smi is not on PATH" in message and "--gpus 0,1,2,3" in message


def test_all_when_nvidia_smi_fails_quotes_it(tmp_path: Path) -> None:
    said = (
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
        "Make sure that the latest NVIDIA driver is installed and running."
    )
    message = gpu_error("all", fake_nvidia_smi(tmp_path / "bin", stdout=said + "\n", status=9))
    assert "nvidia-smi -L failed (exit status 9)" in message and said in message
    assert "--gpus 0,1,2,3" in message


@pytest.mark.parametrize(("stdout", "status"), [("No devices were found\n", 6), ("", 0), ("Some banner\n", 0)])
def test_all_when_nvidia_smi_lists_no_gpu(tmp_path: Path, stdout: str, status: int) -> None:
    message = gpu_error("all", fake_nvidia_smi(tmp_path / "bin", stdout=stdout, status=status))
    assert ("lists no GPU" in message) if status == 0 else ("exit status 6" in message and stdout.strip() in message)
    assert "--gpus 0,1,2,3" in message


def test_a_hung_nvidia_smi_is_stopped_and_reported(tmp_path: Path) -> None:
    """nvidia-smi hangs on a GPU that fell off the bus: a worker must not hang with it."""
    folder = tmp_path / "bin"
    environ = fake_nvidia_smi(folder, stdout=LISTING)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\nexec sleep 600\n")
    with pytest.raises(GpuError) as caught:
        nvidia_smi_gpus(path=environ["PATH"], timeout=0.5)
    assert "nvidia-smi -L gave no answer in 0.5s" in str(caught.value) and "--gpus 0,1,2,3" in str(caught.value)


def test_all_inside_an_allocation_is_the_allocations_gpus(tmp_path: Path) -> None:
    """Slurm (and anyone else who hands out GPUs) sets CUDA_VISIBLE_DEVICES: a worker there owns
    those, not every GPU of the node that nvidia-smi can see."""
    environ = fake_nvidia_smi(tmp_path / "bin", stdout=LISTING)
    assert parse_gpus("all", environ={**environ, GPU_ENV: "2,0"}) == ("2", "0")
    for nothing in ("", "-1", "NoDevFiles"):
        message = gpu_error("all", {**environ, GPU_ENV: nothing})
        assert "leaves this process no GPU" in message and "--gpus 0,1,2,3" in message
    assert "named twice" in gpu_error("all", {**environ, GPU_ENV: "1,1"})


# ---------------------------------------------------------------- --slots


def test_slots_default_to_one_per_gpu_and_never_exceed_them() -> None:
    assert slot_count(gpus=None, slots=None) == 1
    assert slot_count(gpus=None, slots=6) == 6
    assert slot_count(gpus=("0", "1", "2", "3"), slots=None) == 4
    assert slot_count(gpus=("0", "1", "2", "3"), slots=2) == 2
    with pytest.raises(GpuError, match=r"--slots 5 with 4 GPU\(s\) \(0,1,2,3\).*at most 4 slots"):
        slot_count(gpus=("0", "1", "2", "3"), slots=5)
    with pytest.raises(GpuError, match="at least one slot"):
        slot_count(gpus=None, slots=0)


# ---------------------------------------------------------------- the pool


def test_takes_are_all_or_nothing_lowest_free_first() -> None:
    pool = GpuPool(["0", "1", "2", "3"])
    assert pool.take(1) == ("0",)
    assert pool.take(2) == ("1", "2")
    assert pool.take(2) is None, "only GPU 3 is free: a run never starts on part of what it asked"
    assert pool.free == ("3",)
    pool.give(["1"])
    assert pool.take(2) == ("1", "3")
    assert pool.take(1) is None and pool.free == ()
    pool.give(("0", "2"))
    assert pool.take(0) == () and pool.free == ("0", "2")


def test_giving_back_a_gpu_no_run_holds_is_refused_and_changes_nothing() -> None:
    pool = GpuPool(["0", "1"])
    held = pool.take(1)
    assert held == ("0",)
    for wrong in (["1"], ["7"], ["0", "0"], ["0", "1"]):
        with pytest.raises(ValueError, match="is not held"):
            pool.give(wrong)
        assert pool.free == ("1",)
    pool.give(held)
    assert pool.free == ("0", "1")


def test_fits_says_whether_a_task_could_ever_run_here() -> None:
    pool = GpuPool(["0", "1"])
    assert pool.take(2) is not None
    assert pool.fits(2), "both are busy now, but a run of 2 can start once they are back"
    assert not pool.fits(3)


def test_a_pool_refuses_what_parse_gpus_refuses() -> None:
    with pytest.raises(GpuError, match="named twice"):
        GpuPool(["0", "1", "0"])
    with pytest.raises(GpuError, match="holds a space or comma"):
        GpuPool(["0,1"])
    with pytest.raises(GpuError, match="at least one GPU"):
        GpuPool([])


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads switch as often as Python allows, so that takes and gives interleave."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("busy_switching")
def test_many_threads_never_hold_one_gpu_together() -> None:
    owned = [str(i) for i in range(6)]
    pool = GpuPool(owned)
    holders: dict[str, int] = {}  # GPU -> the thread holding it, kept by the threads themselves
    book = threading.Lock()
    clashes: list[str] = []
    taken = [0] * 12
    start = threading.Barrier(len(taken))

    def runs(me: int) -> None:
        pick = random.Random(me)
        start.wait()
        for _ in range(2000):
            ids = pool.take(pick.randint(1, 3))
            if ids is None:
                continue
            with book:
                clashes.extend(i for i in ids if i in holders)
                holders.update(dict.fromkeys(ids, me))
            taken[me] += 1
            with book:
                for i in ids:
                    del holders[i]
            pool.give(ids)

    threads = [threading.Thread(target=runs, args=(n,)) for n in range(len(taken))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clashes == [], f"GPUs held by two runs at once: {sorted(set(clashes))}"
    assert sum(taken) >= 2000, "the first take of each round always finds GPUs: at least one thread ran"
    assert pool.free == tuple(owned) and holders == {}


# ---------------------------------------------------------------- the command's environment


def child_sees(extra: dict[str, str], *, inherited: str | None) -> str:
    """What CUDA_VISIBLE_DEVICES a real child process sees, given the worker's own value."""
    env = {k: v for k, v in os.environ.items() if k != GPU_ENV}
    if inherited is not None:
        env[GPU_ENV] = inherited
    probe = f"import os; print(repr(os.environ.get({GPU_ENV!r})))"
    child = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    return child.stdout.strip()


def test_a_run_sees_exactly_its_own_gpus() -> None:
    pool = GpuPool(["0", "1", "2", "3"])
    pool.take(1)
    ids = pool.take(2)
    assert ids is not None
    assert env_for(ids) == {GPU_ENV: "1,2"}
    assert child_sees(env_for(ids), inherited="0,1,2,3") == "'1,2'"
    assert child_sees(env_for(()), inherited="0,1,2,3") == "''", "a GPU worker's run holding none sees none"


def test_a_worker_without_gpus_leaves_the_environment_as_it_is() -> None:
    assert env_for(None) == {}
    assert child_sees(env_for(None), inherited="3") == "'3'"
    assert child_sees(env_for(None), inherited=None) == "None"


# ---------------------------------------------------------------- the task field


def test_a_task_asks_for_gpus() -> None:
    task = parse_task(b"args: {lr: 0.01}\ngpus: 2\n", path="pending/big.yaml")
    assert task.gpus == 2 and task.person_fields() == {"args": {"lr": 0.01}, "gpus": 2}
    assert task.to_dict()["gpus"] == 2
    plain = parse_task(b"args: {lr: 0.01}\n", path="pending/small.yaml")
    assert plain.gpus is None and "gpus" not in plain.to_dict()
    pool = GpuPool(["0", "1"])
    assert (gpus_wanted(task, pool=pool), gpus_wanted(plain, pool=pool)) == (2, 1)
    assert (gpus_wanted(task, pool=None), gpus_wanted(plain, pool=None)) == (0, 0), "no --gpus: ignored"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("two", "field 'gpus' must be an integer (how many GPUs a run takes), not str 'two'"),
        ("2.5", "field 'gpus' must be an integer (how many GPUs a run takes), not float 2.5"),
        ("true", "field 'gpus' must be an integer (how many GPUs a run takes), not bool True"),
        ("[0, 1]", "field 'gpus' must be an integer (how many GPUs a run takes), not list [0, 1]"),
        ("0", f"field 'gpus' must be between 1 and {MAX_TASK_GPUS} (GPUs a run takes)"),
        ("-1", f"field 'gpus' must be between 1 and {MAX_TASK_GPUS} (GPUs a run takes)"),
        (str(MAX_TASK_GPUS + 1), f"field 'gpus' must be between 1 and {MAX_TASK_GPUS} (GPUs a run takes)"),
        ("99999999999999999999999", "field 'gpus' is too large"),
    ],
)
def test_a_wrong_gpus_makes_the_file_invalid(value: str, problem: str) -> None:
    with pytest.raises(InvalidTask) as caught:
        parse_task(f"args: {{lr: 0.01}}\ngpus: {value}\n".encode(), path="pending/bad.yaml")
    assert caught.value.path == "pending/bad.yaml" and caught.value.line == 2
    assert caught.value.problem.startswith(problem)
    assert str(caught.value).startswith("pending/bad.yaml:2:")


def test_a_worker_claims_only_what_its_gpus_can_run(queue: Queue, remote_repo: RemoteRepo) -> None:
    """The pool plugged into today's claim: a task asking more GPUs than the worker owns stays
    pending (and is named once, by the caller), a bad ``gpus:`` is skipped and reported, and
    the task that fits is claimed with its GPUs."""
    remote_repo.person_commit(
        {
            "pending/a-huge.yaml": "args: {lr: 0.1}\ngpus: 4\npriority: 9\n",
            "pending/b-broken.yaml": "args: {lr: 0.2}\ngpus: many\npriority: 9\n",
            "pending/c-pair.yaml": "args: {lr: 0.3}\ngpus: 2\n",
        }
    )
    pool = GpuPool(["0", "1"])
    told: list[str] = []

    def eligible(task: Task) -> bool:
        if (why := misfit(task, pool=pool)) is not None:
            told.append(why)
            return False
        return True

    run = queue.claim(eligible=eligible)
    assert run is not None and run.id == "c-pair"
    assert pool.take(gpus_wanted(run.task, pool=pool)) == ("0", "1")
    assert remote_repo.states() == {"a-huge": "pending", "b-broken": "pending", "c-pair": "running"}
    assert told and all(w == "pending/a-huge.yaml asks for gpus: 4, but this worker has 2 (0,1): not claiming it here"
                        for w in told)  # fmt: skip
    problems = [(p.path, p.message) for p in queue.validate()]
    assert len(problems) == 1 and problems[0][0] == "pending/b-broken.yaml" and "field 'gpus'" in problems[0][1]


def test_gpus_goes_through_submit_and_edit(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"lr": 0.1}, "gpus": 2}])
    path = f"pending/{task_id}.yaml"
    assert "gpus: 2" in remote_repo.read(path).splitlines()
    with pytest.raises(InvalidTask, match=r"task #1: field 'gpus' must be between 1 and"):
        queue.submit([{"args": {"lr": 0.2}, "gpus": 0}])
    edited = queue.edit(task_id, lambda text: text.replace("gpus: 2", "gpus: 4"))
    assert edited is not None and edited.gpus == 4
    assert "gpus 2 -> 4" in remote_repo.log()[-1]
    assert parse_task(remote_repo.read(path).encode(), path=path).gpus == 4
    assert list(remote_repo.states()) == [task_id], "the refused submit wrote nothing"
