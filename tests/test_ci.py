"""The CI workflows in ``gitqueue/ci/`` (``gitqueue hooks ci`` prints them) and ``validate --ci``, as forges run them.

Each file's shell steps are taken from its YAML and run in a checkout made as the forge makes
it, with the variables the forge sets; gitqueue is installed by the file's own install step,
from this repository at its HEAD commit instead of the URL a user sets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from clones import Clone

from gitqueue import Queue
from gitqueue import ci as forge_ci

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / "gitqueue" / "ci" / "github-actions.yml"
GITLAB = ROOT / "gitqueue" / "ci" / "gitlab-ci.yml"
ZERO = "0" * 40
BROKEN = "args: {lr: [0.1\n"  # YAML that does not parse
HAND_MOVE = "no gitqueue command moves a task from pending/ to done/"


def github_job() -> dict:
    return yaml.safe_load(GITHUB.read_text())["jobs"]["validate"]


def gitlab_job() -> dict:
    return yaml.safe_load(GITLAB.read_text())["gitqueue-validate"]


def github_scripts() -> list[str]:
    return [step["run"] for step in github_job()["steps"] if "run" in step]


def gitlab_script() -> str:
    job = gitlab_job()
    return "\n".join([*job["before_script"], *job["script"]])


# ---------------------------------------------------------------- gitqueue installed by the files' own step


def _install(venv: Path, script: str) -> Path:
    """A fresh virtualenv, as the runner's Python, into which a file's own install ``script``
    installs gitqueue from this repository's HEAD commit (``git+file://...@<sha>``).

    Its dependencies come from the test environment (a .pth file); only the build backend
    comes from the package index."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    env = {
        **_base_env(venv / "bin"),
        "GITQUEUE_PIP": f"git+file://{ROOT}@{head.stdout.strip()}",
        "PIP_NO_DEPS": "1",  # only the build backend comes from the index
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    proc = _bash(script, env=env, cwd=venv.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (venv / "bin" / "gitqueue").exists()
    return venv / "bin"


@pytest.fixture(scope="module")
def runner_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gitqueue as the GitHub workflow's install step installs it."""
    install = next(script for script in github_scripts() if "pip install" in script)
    return _install(tmp_path_factory.mktemp("github") / "venv", install)


@pytest.fixture(scope="module")
def gitlab_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gitqueue as the GitLab job's before_script installs it."""
    return _install(tmp_path_factory.mktemp("gitlab") / "venv", "\n".join(gitlab_job()["before_script"]))


def _base_env(bin_dir: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "GITQUEUE_CACHE", "GIT_CONFIG_NOSYSTEM")}
    return {**keep, "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "CI": "true"}


def _bash(script: str, *, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A step as both forges run it: bash, stopping at the first failing command."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_the_install_steps_refuse_an_unpinned_source(tmp_path: Path) -> None:
    github = next(script for script in github_scripts() if "pip install" in script)
    for install in (github, "\n".join(gitlab_job()["before_script"])):
        for unpinned in ("", "gitqueue", "git+https://github.com/someone/gitqueue@main"):
            env = {**_base_env(Path(sys.executable).parent), "GITQUEUE_PIP": unpinned}
            proc = _bash(install, env=env, cwd=tmp_path)
            assert proc.returncode == 1 and "GITQUEUE_PIP" in proc.stdout
    assert "pip install gitqueue" not in GITHUB.read_text() + GITLAB.read_text()


def test_the_github_workflow_fits_githubs_schema() -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.github-workflows", str(GITHUB)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for script in github_scripts():
        assert "${{" not in script  # expressions go through env:, never into the shell's text


# ---------------------------------------------------------------- a queue, a person's pushes, the forge's checkout


class Forge:
    """A queue remote, gitqueue's own pushes, a person's pushes, and CI checkouts of them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.remote = tmp_path / "srv" / "queue.git"
        with Queue.init(str(self.remote), worker="box/0", hooks=False) as q:  # a forge runs no hooks of ours
            q.submit([{"id": f"t{n}", "args": {"n": n}} for n in range(3)])
        self.person = Clone(str(self.remote), tmp_path / "alice")
        self.cache: Path | None = None  # the forge's CI cache: .gitqueue-ci of the last passing run
        self.runs = 0

    def tip(self) -> str:
        proc = subprocess.run(["git", "rev-parse", "main"], cwd=self.remote, capture_output=True, text=True)
        return proc.stdout.strip()

    def person_pushes(self, files: dict[str, str | None], message: str) -> tuple[str, str]:
        """Commit and push as a person; (before, after)."""
        self.person.pull()
        before = self.person.head()
        for path, text in files.items():
            if text is None:
                self.person.run("rm", "-q", path)
            else:
                self.person.write(path, text)
        assert self.person.commit(message).returncode == 0
        assert self.person.push().returncode == 0
        return before, self.person.head()

    def hand_move(self) -> tuple[str, str]:
        """A person moves t0 from pending/ to done/ (no command does) and breaks t1's file."""
        self.person.pull()
        self.person.run("mv", "pending/t0.yaml", "done/t0.yaml")
        return self.person_pushes({"pending/t1.yaml": BROKEN}, "finish t0 by hand, edit t1")

    def checkout(self, sha: str, *, merge_into: str | None = None) -> Path:
        """A full clone at ``sha`` (detached), as actions/checkout with fetch-depth 0 and GitLab's
        GIT_DEPTH 0 make it; with ``merge_into``, GitHub's test merge of a pull request. The CI
        cache's folder is restored into it."""
        self.runs += 1
        work = self.tmp / f"ci-{self.runs}"
        subprocess.run(["git", "clone", "-q", str(self.remote), str(work)], check=True)
        git = ["git", "-c", "user.name=GitHub", "-c", "user.email=noreply@github.com"]
        if merge_into:
            subprocess.run([*git, "checkout", "-q", "--detach", merge_into], cwd=work, check=True)
            subprocess.run([*git, "merge", "-q", "--no-ff", "-m", "Merge pull request #1", sha], cwd=work, check=True)
        else:
            subprocess.run(["git", "checkout", "-q", "--detach", sha], cwd=work, check=True)
        if self.cache is not None:
            shutil.copytree(self.cache, work / ".gitqueue-ci")
        return work

    def keep_cache(self, work: Path, passed: bool) -> None:
        """What the forge's cache keeps after a run: the state folder of a passing push run."""
        if passed and (work / ".gitqueue-ci").exists():
            self.cache = self.tmp / f"cache-{self.runs}"
            shutil.copytree(work / ".gitqueue-ci", self.cache)

    def github_push(self, bin_dir: Path, before: str, after: str) -> subprocess.CompletedProcess[str]:
        work = self.checkout(after)
        message = subprocess.run(["git", "log", "-1", "--format=%B", after], cwd=work, capture_output=True, text=True)
        event = {
            "before": before,
            "after": after,
            "forced": False,
            "head_commit": {"id": after, "message": message.stdout},
        }
        env = self._github_env(bin_dir, work, "push", event, after)
        proc = self._run_github(env, work)
        self.keep_cache(work, proc.returncode == 0)
        return proc

    def github_pull_request(self, bin_dir: Path, base: str, head: str) -> subprocess.CompletedProcess[str]:
        work = self.checkout(head, merge_into=base)
        event = {"number": 1, "pull_request": {"base": {"sha": base, "ref": "main"}, "head": {"sha": head}}}
        merge = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
        return self._run_github(self._github_env(bin_dir, work, "pull_request", event, merge), work)

    def _github_env(self, bin_dir: Path, work: Path, name: str, event: dict, sha: str) -> dict[str, str]:
        path = work.parent / f"event-{self.runs}.json"
        path.write_text(json.dumps(event))
        job_env = {k: str(v) for k, v in github_job()["env"].items() if "${{" not in str(v)}
        return {
            **_base_env(bin_dir),
            **job_env,
            "GITHUB_ACTIONS": "true",
            "GITHUB_EVENT_NAME": name,
            "GITHUB_EVENT_PATH": str(path),
            "GITHUB_SHA": sha,
            "GITHUB_REF": "refs/heads/main" if name == "push" else "refs/pull/1/merge",
            "GITHUB_WORKSPACE": str(work),
        }

    def _run_github(self, env: dict[str, str], work: Path) -> subprocess.CompletedProcess[str]:
        """The steps after the install (the fixture ran that one), in order, until one fails."""
        out = err = ""
        proc = None
        for script in github_scripts():
            if "pip install" in script:
                continue
            proc = _bash(script, env=env, cwd=work)
            out, err = out + proc.stdout, err + proc.stderr
            if proc.returncode:
                break
        assert proc is not None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def gitlab(self, bin_dir: Path, sha: str, **variables: str) -> subprocess.CompletedProcess[str]:
        work = self.checkout(sha)
        job_vars = {k: str(v) for k, v in gitlab_job()["variables"].items()}
        env = {
            **_base_env(bin_dir),
            **job_vars,
            "GITLAB_CI": "true",
            "CI_COMMIT_SHA": sha,
            "CI_PROJECT_DIR": str(work),
            **variables,
        }
        script = "\n".join(gitlab_job()["script"])  # before_script installs: gitlab_bin ran it
        proc = _bash(script, env=env, cwd=work)
        self.keep_cache(work, proc.returncode == 0)
        return proc


@pytest.fixture
def forge(tmp_path: Path) -> Forge:
    return Forge(tmp_path)


def test_github_push_reports_a_broken_file_and_a_hand_move_together(forge: Forge, runner_bin: Path) -> None:
    before, after = forge.hand_move()
    proc = forge.github_push(runner_bin, before, after)
    assert proc.returncode == 1
    assert "pending/t1.yaml" in proc.stdout  # the file that does not parse
    assert f"pending/t0.yaml -> done/t0.yaml: {HAND_MOVE}" in proc.stdout
    assert "commits since" in proc.stderr and "1 (1 by people): 1 problem" in proc.stderr


def test_a_fix_pushed_after_a_failed_run_does_not_hide_the_move(forge: Forge, runner_bin: Path) -> None:
    clean = forge.github_push(runner_bin, ZERO, forge.tip())  # a first, passing run: recorded as valid
    assert clean.returncode == 0 and "recorded" in clean.stderr
    before, after = forge.hand_move()
    assert forge.github_push(runner_bin, before, after).returncode == 1
    before, after = forge.person_pushes({"pending/t1.yaml": "args: {n: 1}\n"}, "fix t1")
    proc = forge.github_push(runner_bin, before, after)
    assert proc.returncode == 1 and HAND_MOVE in proc.stdout and "pending/t1.yaml" not in proc.stdout
    assert "older than the commit before the push" in proc.stderr


def test_github_pull_request_checks_its_commits(forge: Forge, runner_bin: Path) -> None:
    base = forge.tip()
    forge.person.run("checkout", "-q", "-b", "topic")
    forge.person.run("mv", "pending/t2.yaml", "done/t2.yaml")
    assert forge.person.commit("t2 is done, trust me").returncode == 0
    forge.person.run("push", "-q", "origin", "topic")
    proc = forge.github_pull_request(runner_bin, base, forge.person.head())
    assert proc.returncode == 1 and HAND_MOVE in proc.stdout
    assert "the pull request's base" in proc.stderr and not (forge.tmp / f"ci-{forge.runs}" / ".gitqueue-ci").exists()


def test_gitlab_merge_request_with_an_all_zero_before_sha(forge: Forge, gitlab_bin: Path) -> None:
    base = forge.tip()
    forge.person.run("checkout", "-q", "-b", "topic")
    forge.person.run("mv", "pending/t2.yaml", "done/t2.yaml")
    assert forge.person.commit("t2 is done, trust me").returncode == 0
    forge.person.run("push", "-q", "origin", "topic")
    proc = forge.gitlab(
        gitlab_bin,
        forge.person.head(),
        CI_PIPELINE_SOURCE="merge_request_event",
        CI_COMMIT_BEFORE_SHA=ZERO,
        CI_MERGE_REQUEST_IID="1",
        CI_MERGE_REQUEST_DIFF_BASE_SHA=base,
    )
    assert proc.returncode == 1 and HAND_MOVE in proc.stdout and "the merge request's base" in proc.stderr


def test_gitlab_push_after_a_force_push_uses_the_last_valid_commit(forge: Forge, gitlab_bin: Path) -> None:
    first = forge.gitlab(gitlab_bin, forge.tip(), CI_PIPELINE_SOURCE="push", CI_COMMIT_BEFORE_SHA=ZERO)
    assert first.returncode == 0
    valid = forge.tip()
    # A person rewrites history: a commit nobody has any more was the branch's tip.
    before, _ = forge.person_pushes({"notes.txt": "draft\n"}, "a draft")
    forge.person.run("reset", "-q", "--hard", before)
    forge.person.run("mv", "pending/t0.yaml", "done/t0.yaml")
    assert forge.person.commit("t0 by hand").returncode == 0
    gone = subprocess.run(["git", "rev-parse", "main"], cwd=forge.remote, capture_output=True, text=True).stdout
    assert forge.person.push("--force").returncode == 0
    subprocess.run(["git", "reflog", "expire", "--expire=now", "--all"], cwd=forge.remote, check=True)
    subprocess.run(["git", "gc", "-q", "--prune=now"], cwd=forge.remote, check=True)
    proc = forge.gitlab(gitlab_bin, forge.tip(), CI_PIPELINE_SOURCE="push", CI_COMMIT_BEFORE_SHA=gone.strip())
    assert proc.returncode == 1 and HAND_MOVE in proc.stdout
    assert "is not in this clone" in proc.stderr and f"commits since {valid[:10]}" in proc.stderr


def test_with_no_base_at_all_every_commit_is_checked(forge: Forge) -> None:
    forge.hand_move()
    forge.person_pushes({"pending/t1.yaml": "args: {n: 1}\n"}, "fix t1")
    report = forge_ci.check(forge.checkout(forge.tip()), {})
    assert report.base.why == "the queue's first commit" and [HAND_MOVE in p.message for p in report.moves] == [True]
    assert report.files == [] and report.commits == 3 and report.by_people == 2  # submit, and two by hand


# ---------------------------------------------------------------- gitqueue's own pushes start no run


def _messages(forge: Forge) -> tuple[list[str], list[str]]:
    """Every commit message on the branch, split into gitqueue's and people's by the author."""
    log = subprocess.run(
        ["git", "log", "--format=%an%x00%B%x1e", "main"], cwd=forge.remote, capture_output=True, text=True
    ).stdout
    entries = [e.strip("\n").split("\0", 1) for e in log.split("\x1e") if e.strip()]
    people = [m for a, m in entries if a == "Alice Person"]
    return [m for a, m in entries if a != "Alice Person"], people


def test_the_workflows_skip_pushes_of_gitqueues_own_commits(forge: Forge) -> None:
    with Queue.open(str(forge.remote), worker="box/1") as q, q.claim() as run:
        assert run.id == "t0"
    with Queue.open(str(forge.remote), worker="box/1") as q:
        q.cancel(["t2"])
    forge.person_pushes({"pending/t9.yaml": "args: {n: 9}\n"}, "add t9 by hand")
    own, people = _messages(forge)
    assert len(own) >= 4 and len(people) == 1  # init, submit, claim, done, cancel
    quoted = re.search(r"head_commit\.message, '([^']+)'\)", github_job()["if"])
    assert quoted is not None and github_job()["if"].startswith("github.event_name != 'push' || !contains(")
    assert all(quoted.group(1) in m for m in own) and not any(quoted.group(1) in m for m in people)
    rule = gitlab_job()["rules"][0]
    assert rule["when"] == "never"
    pattern = re.search(r"=~ /(.+)/$", rule["if"])
    assert pattern is not None
    gitlab_sees = [f"{m}\n" for m in own]  # CI_COMMIT_MESSAGE is the whole message
    assert all(re.search(pattern.group(1), m) for m in gitlab_sees)
    assert not any(re.search(pattern.group(1), m) for m in people)
    assert all(forge_ci.is_own(m) for m in own) and not any(forge_ci.is_own(m) for m in people)
