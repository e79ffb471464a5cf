"""A worker's start costs little: what `gitqueue work` loads and spawns before its first claim.

Issue 12: a fleet launched at once spends its first seconds starting Python and reaching the
forge. These tests run the real command in a fresh process against a real bare remote and look
at what it did: which modules it imported (nothing a worker does not use) and which git
processes it started (GIT_TRACE2_EVENT, written by git itself), before and after its first claim.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from gitqueue import Queue

# Loaded only by the commands that need them: never by a worker.
NOT_FOR_WORK = (
    "rich",
    "plotly",
    "optuna",
    "gitqueue.hooks",
    "gitqueue.progress",
    "gitqueue.report",
    "gitqueue.report_cache",
    "gitqueue.report_data",
    "gitqueue.report_page",
    "gitqueue.tune",
    "gitqueue.sweep",
    "gitqueue.localrepo",
    "gitqueue.slurm",
    "gitqueue.kubernetes",
    "gitqueue.ci",
)

# Runs `gitqueue work` in this process, then prints the modules it ended with.
RUN_WORK = """
import json, sys
from gitqueue.cli import main
sys.argv = ["gitqueue", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _seed(url: str, count: int) -> list[str]:
    with Queue.init(url, worker="seed") as q:
        return q.submit([{"args": {"i": i}} for i in range(count)])


def test_work_loads_nothing_it_does_not_use(bare_remote: Path, tmp_path: Path) -> None:
    ids = _seed(str(bare_remote), 1)
    argv = ["work", "--queue", str(bare_remote), "--worker", "w1", "--log-dir", str(tmp_path / "logs"), "--", "true"]
    proc = subprocess.run([sys.executable, "-c", RUN_WORK, *argv], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout.decode().splitlines()[-1])
    assert result["code"] == 0
    with Queue.open(str(bare_remote)) as q:  # it did its work: the task is done
        assert [t.id for t in q.tasks("done")] == ids
    loaded = [m for m in result["modules"] if m.split(".")[0] in ("rich", "plotly", "optuna") or m in NOT_FOR_WORK]
    assert loaded == []


def test_help_and_version_still_work() -> None:
    """The commands that do use rich or the hooks still get them (lazily)."""
    gq = [sys.executable, "-m", "gitqueue"]
    version = subprocess.run([*gq, "--version"], capture_output=True, timeout=60, check=True)
    assert version.stdout.decode().startswith("gitqueue ")
    helped = subprocess.run([*gq, "hooks", "ci", "github"], capture_output=True, timeout=60, check=True)
    assert b"gitqueue" in helped.stdout


def _git_starts(trace: Path) -> list[list[str]]:
    """The argv of every git process started, in order, from a GIT_TRACE2_EVENT file."""
    starts = []
    for line in trace.read_text().splitlines():
        event = json.loads(line)
        if event.get("event") == "start":
            starts.append(event["argv"])
    return starts


def _run_work(url: str, tmp_path: Path, *extra: str) -> tuple[list[list[str]], dict[str, object]]:
    trace, stats = tmp_path / "trace2.json", tmp_path / "stats.json"
    env = {**os.environ, "GIT_TRACE2_EVENT": str(trace), "GITQUEUE_STATS_FILE": str(stats)}
    env["GITQUEUE_CACHE"] = str(tmp_path / "worker-cache")  # fresh: not the seed's
    argv = [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", "w1", *extra]
    argv += ["--log-dir", str(tmp_path / "logs"), "--", "true"]
    proc = subprocess.run(argv, capture_output=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return _git_starts(trace), json.loads(stats.read_text())


def _before_first_push(starts: list[list[str]]) -> list[list[str]]:
    first = next(i for i, argv in enumerate(starts) if argv[1:2] == ["push"])
    return starts[:first]


def test_a_fresh_cache_is_made_without_copying_templates(bare_remote: Path, tmp_path: Path) -> None:
    """The cache is a bare repository that nobody runs hooks in: no sample hooks to copy."""
    _seed(str(bare_remote), 1)
    starts, stats = _run_work(str(bare_remote), tmp_path, "--max-tasks", "1")
    assert stats["done"] == 1
    inits = [argv for argv in starts if "init" in argv]
    assert len(inits) == 1 and "--template=" in inits[0]
    caches = [p for p in (tmp_path / "worker-cache").iterdir() if (p / "HEAD").exists()]
    assert len(caches) == 1 and not (caches[0] / "hooks").exists()
