"""Workers as a Kubernetes Job: the "work queue" pattern, with the queue in git.

:func:`render_manifest` writes a Job of ``parallelism`` pods and no ``completions``: each pod
runs one ``gitqueue work``, which exits 0 once the queue has stayed empty for
``--idle-timeout`` seconds, and the Job is complete when its pods have. The pods reach the
queue with a deploy key from a Secret (``ssh-privatekey`` and ``known_hosts``, as
``kubectl create secret generic NAME --from-file=...`` makes them), keep their git cache in
an ``emptyDir``, and name themselves after their pod. A deleted or evicted pod gets SIGTERM:
its worker returns its run to the queue without spending an attempt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from gitqueue.errors import GitqueueError

KEY_DIR = "/etc/gitqueue/ssh"
CACHE_DIR = "/var/cache/gitqueue"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a DNS-1123 label: what a Job's name must be


@dataclass(frozen=True)
class WorkerJob:
    """``workers`` pods of ``image``, each ``gitqueue work -- command`` on ``queue_url``."""

    queue_url: str
    image: str
    command: Sequence[str]
    workers: int
    secret: str = "gitqueue-deploy-key"
    name: str = "gitqueue-workers"
    idle_timeout: float = 60.0
    gpus_per_worker: int | None = None
    grace: float = 10.0  # the worker's --grace: the pod gets that long and 20 s more to return its run
    worker_options: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise GitqueueError(f"--workers must be at least 1, not {self.workers}")
        if not _NAME.match(self.name):
            raise GitqueueError(f"--name {self.name!r} is not a Kubernetes name (lower-case letters, digits, '-')")
        if not self.command and "--allow-task-cmd" not in self.worker_options:
            raise GitqueueError("no command for the workers: give one after --, or --allow-task-cmd")


def manifest(job: WorkerJob) -> dict[str, Any]:
    """The Job as a mapping, ready for YAML or JSON."""
    labels = {"app.kubernetes.io/name": "gitqueue", "app.kubernetes.io/instance": job.name}
    container: dict[str, Any] = {
        "name": "worker",
        "image": job.image,
        "command": _work_argv(job),
        "env": [
            {"name": "GITQUEUE_QUEUE", "value": job.queue_url},
            {"name": "GITQUEUE_WORKER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GITQUEUE_CACHE", "value": CACHE_DIR},
            {"name": "GIT_SSH_COMMAND", "value": _ssh_command()},
        ],
        "volumeMounts": [
            {"name": "deploy-key", "mountPath": KEY_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
        ],
    }
    if job.gpus_per_worker is not None:
        container["resources"] = {"limits": {"nvidia.com/gpu": job.gpus_per_worker}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job.name, "labels": labels},
        "spec": {
            "parallelism": job.workers,  # no completions: a work queue, done when its pods are
            "backoffLimit": max(6, job.workers),
            "template": {
                "metadata": {"labels": dict(labels)},  # a copy: YAML would write an alias for the same one
                "spec": {
                    "restartPolicy": "OnFailure",
                    "terminationGracePeriodSeconds": int(job.grace) + 20,
                    "containers": [container],
                    "volumes": [
                        {"name": "deploy-key", "secret": {"secretName": job.secret, "defaultMode": 0o400}},
                        {"name": "cache", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _work_argv(job: WorkerJob) -> list[str]:
    argv = ["gitqueue", "work", "--idle-timeout", f"{job.idle_timeout:g}", "--grace", f"{job.grace:g}"]
    return [*argv, *job.worker_options, "--", *job.command]


def _ssh_command() -> str:
    return (
        f"ssh -i {KEY_DIR}/ssh-privatekey -o IdentitiesOnly=yes -o UserKnownHostsFile={KEY_DIR}/known_hosts"
        " -o StrictHostKeyChecking=yes"
    )


def render_manifest(job: WorkerJob) -> str:
    """The Job as YAML, with a header that says how to create its Secret and apply it."""
    head = [
        f"# {job.workers} gitqueue worker(s) as a Kubernetes Job (written by `gitqueue kubernetes manifest`).",
        f"# The deploy key (read/write on the queue's repository) lives in the Secret {job.secret}:",
        f"#   kubectl create secret generic {job.secret} \\",
        "#     --from-file=ssh-privatekey=./deploy_key --from-file=known_hosts=./known_hosts",
        "# then: kubectl apply -f THIS_FILE. Each pod runs one `gitqueue work`; it exits once the queue",
        f"# has been empty for {job.idle_timeout:g}s, and a deleted pod returns its run to the queue.",
    ]
    body = yaml.safe_dump(manifest(job), sort_keys=False, default_flow_style=False, width=200)
    return "\n".join(head) + "\n" + body


__all__ = ["WorkerJob", "manifest", "render_manifest"]
