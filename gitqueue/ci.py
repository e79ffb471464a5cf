"""``gitqueue validate --ci``: one CI step that checks a queue the way its server hook would.

Forges without server hooks (github.com, gitlab.com) cannot refuse a bad push, so CI reports
it. One step checks both the files as the checkout leaves them and every commit since a base,
and reports both, so a broken file cannot hide a hand-made ``pending -> done`` move (a failed
step skips the next ones). The base is read from the forge's own variables:

1. a pull or merge request's base (GitHub's event ``pull_request.base.sha``; GitLab's
   ``CI_MERGE_REQUEST_DIFF_BASE_SHA``),
2. else the commit the branch was at before the push (GitHub's event ``before``; GitLab's
   ``CI_COMMIT_BEFORE_SHA``), unless it is all zeros (a new branch, a merge request) or no
   longer in the history (a force-push),
3. else the last commit a clean run of this check recorded (``GITQUEUE_CI_STATE``, a file the
   workflow keeps in the forge's CI cache),
4. else the queue's first commit: everything is checked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gitqueue.errors import GitqueueError
from gitqueue.localrepo import LocalRepo
from gitqueue.snapshot import Problem
from gitqueue.validate import check_commits, check_disk

STATE_FILE = ".gitqueue-ci/valid"  # relative to the clone's top, unless GITQUEUE_CI_STATE says otherwise
# Every commit gitqueue itself makes carries this trailer (with a random value): the workflows
# skip runs whose head commit has it, and this check counts what people pushed by it.
OWN_TRAILER = "Gitqueue-Nonce"


@dataclass(frozen=True)
class Base:
    """The commit after which CI checks every commit, why it was chosen, and which better
    candidates were passed over (and why)."""

    commit: str
    why: str
    passed_over: tuple[str, ...] = ()


@dataclass
class Report:
    """What one ``validate --ci`` run found: problems in the files and in the commits."""

    base: Base
    head: str
    commits: int
    by_people: int
    files: list[Problem] = field(default_factory=list)
    moves: list[Problem] = field(default_factory=list)
    recorded: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.files and not self.moves


def _event(env: Mapping[str, str]) -> dict[str, object]:
    path = env.get("GITHUB_EVENT_PATH")
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_pull_request(env: Mapping[str, str]) -> bool:
    """A run for a pull or merge request: its checkout is not the branch's tip."""
    return env.get("GITHUB_EVENT_NAME", "").startswith("pull_request") or bool(env.get("CI_MERGE_REQUEST_IID"))


def candidates(env: Mapping[str, str], state: Path) -> dict[str, tuple[str, str]]:
    """Possible bases by kind (``request``, ``before``, ``valid``) as (commit, what it is)."""
    found: dict[str, tuple[str, str]] = {}
    event = _event(env)
    pull = event.get("pull_request")
    if isinstance(pull, dict) and isinstance(pull.get("base"), dict) and pull["base"].get("sha"):
        found["request"] = (str(pull["base"]["sha"]), "the pull request's base")
    elif env.get("CI_MERGE_REQUEST_DIFF_BASE_SHA"):
        found["request"] = (env["CI_MERGE_REQUEST_DIFF_BASE_SHA"], "the merge request's base")
    before = event.get("before") if isinstance(event.get("before"), str) else env.get("CI_COMMIT_BEFORE_SHA")
    if before:
        found["before"] = (str(before), "the commit before the push")
    try:
        last = state.read_text().strip()
    except OSError:
        last = ""
    if last:
        found["valid"] = (last, f"the last commit CI saw as valid ({state})")
    return found


def find_base(repo: LocalRepo, head: str, env: Mapping[str, str], state: Path) -> Base:
    """The best base that is really in ``head``'s history (see the module's docstring).

    A last valid commit older than the commit before the push wins over it: the runs in
    between failed (or were skipped), so their commits were never seen valid.
    """
    passed: list[str] = []
    found = candidates(env, state)
    usable: dict[str, str] = {}
    for kind, (commit, why) in found.items():
        if set(commit) == {"0"}:
            passed.append(f"{why} is all zeros (a new branch or a merge request)")
        elif repo.rev_parse(commit) is None:
            passed.append(f"{why}, {commit[:10]}, is not in this clone (a force-push, or a shallow clone?)")
        elif not repo.is_ancestor(commit, head):
            passed.append(f"{why}, {commit[:10]}, is not in the history of {head[:10]} (a force-push?)")
        else:
            usable[kind] = repo.rev_parse(commit) or commit
    if "request" in usable:
        return Base(usable["request"], found["request"][1], tuple(passed))
    older = "before" in usable and "valid" in usable and usable["valid"] != usable["before"]
    if older and repo.is_ancestor(usable["valid"], usable["before"]):
        why = found["valid"][1] + ", older than the commit before the push"
        return Base(usable["valid"], why, tuple(passed))
    for kind in ("before", "valid"):
        if kind in usable:
            return Base(usable[kind], found[kind][1], tuple(passed))
    return Base(repo.first_commit(head), "the queue's first commit", tuple(passed))


def state_path(top: Path, env: Mapping[str, str]) -> Path:
    path = Path(env.get("GITQUEUE_CI_STATE") or STATE_FILE)
    return path if path.is_absolute() else top / path


def check(top: Path, env: Mapping[str, str] | None = None) -> Report:
    """Check the clone at ``top`` as CI: its files, and every commit since the base.

    A clean run that is not for a pull or merge request records its commit in the state
    file, the base of the next run when the forge gives none (after a force-push).
    """
    env = os.environ if env is None else env
    state = state_path(top, env)
    with LocalRepo(top) as repo:
        head = repo.rev_parse("HEAD")
        if head is None:
            raise GitqueueError(f"{top} has no commit checked out: nothing for CI to check")
        base = find_base(repo, head, env, state)
        commits = repo.new_commits(base.commit, head) if base.commit != head else []
        people = sum(1 for commit in commits if not is_own(_message(repo, commit)))
        report = Report(base, head, len(commits), people)
        report.files = check_disk(top)
        if commits:
            report.moves = check_commits(repo, base.commit, head, files=False)
    if report.ok and not is_pull_request(env):
        state.parent.mkdir(parents=True, exist_ok=True)
        state.write_text(head + "\n")
        report.recorded = state
    return report


def _message(repo: LocalRepo, commit: str) -> str:
    return repo.read(commit).partition(b"\n\n")[2].decode("utf-8", "replace")


def is_own(message: str) -> bool:
    """A commit that gitqueue made (it carries gitqueue's trailer), not a person's."""
    return any(line.startswith(f"{OWN_TRAILER}: ") for line in message.splitlines())


def describe(report: Report) -> list[str]:
    """The lines ``validate --ci`` prints after the problems: what was checked, and the verdict."""
    lines = [f"note: {why}; used {report.base.why} instead" for why in report.base.passed_over]
    files = f"{len(report.files)} problem{'s' * (len(report.files) != 1)}" if report.files else "no problems"
    moves = f"{len(report.moves)} problem{'s' * (len(report.moves) != 1)}" if report.moves else "no problems"
    lines.append(f"files at {report.head[:10]}: {files}")
    lines.append(
        f"commits since {report.base.commit[:10]} ({report.base.why}): {report.commits} "
        f"({report.by_people} by people): {moves}"
    )
    if report.recorded is not None:
        lines.append(f"recorded {report.head[:10]} as valid in {report.recorded}")
    return lines
