"""What a worker tells about the files in pending/ it will never run, fanned-out folders included.

A person who misnames a task file in a big queue's ``pending/<xx>/`` folder must hear of it
from the workers (and the task files beside it must not be told of), however the folder is
read.
"""

from __future__ import annotations

from gitqueue import Queue
from gitqueue.task import fan
from gitqueue.validate import Problem
from tests.conftest import RemoteRepo


def test_the_worker_tells_of_strays_in_fanned_folders_and_of_no_task_file(
    queue: Queue, remote_repo: RemoteRepo
) -> None:
    told: list[Problem] = []
    queue.checks.tell = told.append
    folder = f"pending/{fan('ok')}"
    remote_repo.person_commit(
        {
            f"{folder}/ok.yaml": "args: {n: 1}\n",
            f"{folder}/short.yml": "args: {n: 2}\n",
            f"{folder}/notes.txt": "to do\n",
            f"{folder}/deeper/x.yaml": "args: {n: 3}\n",
            "pending/flat.yaml": "args: {n: 4}\n",
            "pending/README": "read me\n",
        }
    )
    run = queue.claim()
    assert run is not None and run.id in {"ok", "flat"}
    paths = sorted(problem.path for problem in told)
    assert paths == sorted([f"{folder}/short.yml", f"{folder}/notes.txt", f"{folder}/deeper", "pending/README"])
    assert "end in .yaml" in next(p.message for p in told if p.path.endswith("short.yml"))
    assert "nested too deep" in next(p.message for p in told if p.path.endswith("deeper"))
