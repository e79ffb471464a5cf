"""Workers as a Kubernetes Job: the manifest ``gitqueue kubernetes manifest`` prints, read as YAML.

No cluster runs here: the tests load the manifest and check the fields a Job needs to run
gitqueue workers as a work queue (kind, parallelism without completions, a restart policy, the
container's command, the queue's URL, the deploy key mounted from its Secret and used by ssh).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gitqueue.cli import app
from gitqueue.kubernetes import WorkerJob, render_manifest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kubernetes" / "gitqueue-workers.yaml"
URL = "git@github.com:me/sweeps.git"


def render(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["kubernetes", "manifest", "--queue", URL, *args])
    assert result.exit_code == 0, result.output
    loaded = yaml.safe_load(result.output)
    assert isinstance(loaded, dict)
    return loaded


def test_the_manifest_is_a_work_queue_job_of_n_workers_with_the_deploy_key_from_a_secret() -> None:
    job = render(
        *("--workers", "6", "--image", "ghcr.io/me/train:1", "--secret", "sweeps-key", "--idle-timeout", "120"),
        *("--label", "gpu=a100", "--max-failures", "3", "--", "python", "train.py", "--lr", "{lr}"),
    )
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["metadata"]["name"] == "gitqueue-workers"
    spec = job["spec"]
    assert spec["parallelism"] == 6 and "completions" not in spec  # a work queue: done when its pods are
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in {"OnFailure", "Never"}  # what a Job's pods must have
    [container] = pod["containers"]
    assert container["image"] == "ghcr.io/me/train:1"
    assert container["command"] == [
        *("gitqueue", "work", "--idle-timeout", "120", "--grace", "10", "--label", "gpu=a100", "--max-failures", "3"),
        *("--", "python", "train.py", "--lr", "{lr}"),
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["GITQUEUE_QUEUE"]["value"] == URL
    assert env["GITQUEUE_WORKER"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # named after its pod
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["deploy-key"]["secret"]["secretName"] == "sweeps-key"
    assert volumes["deploy-key"]["secret"]["defaultMode"] == 0o400  # ssh refuses a key others can read
    key_dir = mounts["deploy-key"]["mountPath"]
    ssh = shlex.split(env["GIT_SSH_COMMAND"]["value"])
    assert ssh[:3] == ["ssh", "-i", f"{key_dir}/ssh-privatekey"] and f"UserKnownHostsFile={key_dir}/known_hosts" in ssh
    assert mounts["cache"]["mountPath"] == env["GITQUEUE_CACHE"]["value"] and volumes["cache"] == {
        "name": "cache",
        "emptyDir": {},
    }
    assert pod["terminationGracePeriodSeconds"] > 10  # longer than --grace: the pod returns its run first
    assert "resources" not in container


def test_gpus_per_worker_asks_for_gpus() -> None:
    job = render("--workers", "2", "--image", "img", "--gpus-per-worker", "2", "--", "x")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mem=4G", "--", "x"], "not an option of gitqueue work: --mem=4G"),
        (["--name", "My_Job", "--", "x"], "is not a Kubernetes name"),
        (["--"], "no command for the workers"),
    ],
)
def test_the_manifest_refuses_what_would_not_run(args: list[str], message: str) -> None:
    result = CliRunner().invoke(
        app, ["kubernetes", "manifest", "--queue", URL, "--workers", "2", "--image", "i", *args]
    )
    assert result.exit_code != 0 and message in result.output


def test_the_example_is_what_the_command_prints() -> None:
    job = WorkerJob(
        queue_url=URL,
        image="ghcr.io/me/train:latest",
        command=["python", "train.py", "--lr", "{lr}", "--batch-size", "{bs}"],
        workers=8,
        idle_timeout=300,
        gpus_per_worker=1,
        worker_options=["--max-failures", "3"],
    )
    assert EXAMPLE.read_text() == render_manifest(job)
    assert yaml.safe_load(EXAMPLE.read_text())["spec"]["parallelism"] == 8
