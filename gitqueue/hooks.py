"""Git hooks that guard a queue: the same checks as ``gitqueue validate``, run by git.

* ``pre-receive`` (or ``update``) on a self-hosted remote refuses a push to the queue
  branch that would leave the queue invalid: a malformed task, a task in two folders, a
  state change no gitqueue command makes, deleting the branch, rewriting its history.
  Every commit of the push is checked against its parent, reading only what changed, so a
  worker's claim push stays fast. It also refuses to create any other branch: a task
  pushed there would never run. Other refs (the runs' lease refs, tags) pass untouched.
* ``pre-commit`` in a person's clone refuses the same problems before they are committed.

The scripts git runs are a few lines of shell that call :func:`main`; ``gitqueue hooks
install`` writes them with the interpreter gitqueue is installed in.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from gitqueue.branches import init_branch
from gitqueue.errors import GitqueueError
from gitqueue.git import remote_refs
from gitqueue.gitstore import GitStore
from gitqueue.localrepo import LocalRepo
from gitqueue.objects import ZERO_SHA
from gitqueue.validate import check_commits, check_staged

MARK = "installed by gitqueue"
DEFAULT_BRANCH = "main"

SERVER_SCRIPT = """#!/bin/sh
# gitqueue pre-receive hook ({mark}): refuses pushes to refs/heads/{branch}
# that would leave the queue invalid, and new branches beside it. The checks live in
# gitqueue.validate.
input=$(cat)
case "$input" in
  *" refs/heads/"*) ;;
  *) exit 0 ;;  # lease refs and tags hold nothing of the queue's
esac
printf '%s\\n' "$input" | exec {python} -c {code} pre-receive --branch {branch_q}
"""

CLIENT_SCRIPT = """#!/bin/sh
# gitqueue pre-commit hook ({mark}): refuses commits that would leave the queue invalid.
# The checks live in gitqueue.validate; `git commit --no-verify` skips them.
exec {python} -c {code} pre-commit
"""


def check_update(store: GitStore, ref: str, old: str, new: str) -> list[str]:
    """Why the push of ``ref`` from ``old`` to ``new`` must be refused (empty: let it in)."""
    if new == ZERO_SHA:
        return [f"{ref}: deleting the queue's branch is refused: it is the queue"]
    if old == ZERO_SHA:
        problems = check_commits(store, None, new)
    else:
        _, parents = store.commit_info(new)
        if parents != (old,) and not store.is_ancestor(old, new):
            return [
                f"{ref}: not a fast-forward of {old[:10]}: the queue's history is never rewritten "
                "(git pull --rebase, then push again)"
            ]
        problems = check_commits(store, old, new)
    return [p.message for p in problems]


def pre_receive(store: GitStore, updates: Iterable[str], *, branch: str = DEFAULT_BRANCH) -> list[str]:
    """Problems of a push, given the ``old new ref`` lines git feeds a pre-receive hook."""
    problems: list[str] = []
    for line in updates:
        fields = line.split()
        if len(fields) != 3:
            continue
        old, new, ref = fields
        if ref == f"refs/heads/{branch}":
            problems += check_update(store, ref, old, new)
        elif ref.startswith("refs/heads/") and old == ZERO_SHA and new != ZERO_SHA:
            problems.append(
                f"{ref}: this repository is a gitqueue queue on branch {branch}, and other branches are refused: "
                f"workers never look at them, so a task pushed there would never run. Push to {branch} instead "
                f"(git push origin HEAD:{branch})"
            )
    return problems


def pre_commit(store: LocalRepo) -> list[str]:
    """Problems the staged files would bring, compared with the commit they go on top of."""
    return [p.message for p in check_staged(store)]


def _refuse(what: str, problems: list[str], advice: str) -> int:
    lines = [f"gitqueue: {what} refused: it would leave the queue invalid:"]
    lines += [f"  {problem}" for problem in problems]
    lines.append(advice)
    sys.stderr.write("\n".join(lines) + "\n")
    sys.stderr.flush()
    return 1


def main(argv: list[str] | None = None) -> int:
    """``pre-receive [--branch B]`` | ``update REF OLD NEW [--branch B]`` | ``pre-commit``."""
    args = list(sys.argv[1:] if argv is None else argv)
    branch = os.environ.get("GITQUEUE_BRANCH", DEFAULT_BRANCH)
    if "--branch" in args:
        at = args.index("--branch")
        branch = args[at + 1]
        del args[at : at + 2]
    kind = args[0] if args else ""
    with LocalRepo(".") as store:
        try:
            if kind in ("pre-receive", "update") and (kind == "pre-receive" or len(args) == 4):
                lines = sys.stdin.read().splitlines() if kind == "pre-receive" else [" ".join(args[2:4] + args[1:2])]
                problems = pre_receive(store, lines, branch=branch)
                advice = "Fix them and push again; `gitqueue validate` in your clone shows the same problems."
                return _refuse(f"push to {branch}", problems, advice) if problems else 0
            if kind == "pre-commit":
                problems = pre_commit(store)
                advice = "Fix them and commit again (`gitqueue validate` lists them)."
                return _refuse("commit", problems, advice) if problems else 0
        except GitqueueError as exc:
            sys.stderr.write(f"gitqueue {kind} hook: {exc}\n")
            return 1
    sys.stderr.write("usage: python -m gitqueue.hooks pre-receive|update REF OLD NEW|pre-commit [--branch B]\n")
    return 2


# ---------------------------------------------------------------- installing


CI_WORKFLOWS = {"github": "github-actions.yml", "gitlab": "gitlab-ci.yml"}


def ci_workflow(forge: str) -> str:
    """The CI workflow that validates a queue on every push, for a forge without server hooks
    (``github`` or ``gitlab``), as shipped in the package (``gitqueue/ci/``)."""
    from importlib.resources import files

    if forge not in CI_WORKFLOWS:
        raise GitqueueError(f"no CI workflow for {forge!r}: choose {' or '.join(CI_WORKFLOWS)}")
    return files("gitqueue").joinpath("ci", CI_WORKFLOWS[forge]).read_text(encoding="utf-8")


def install(
    *,
    server: Path | None = None,
    client: Path | None = None,
    branch: str | None = None,
    force: bool = False,
    python: str | None = None,
) -> list[Path]:
    """Write the hook scripts: ``pre-receive`` into the repository ``server`` (bare, on the
    machine that serves the queue) and/or ``pre-commit`` into the clone ``client``.

    The queue's branch is ``branch``, else the one the server's HEAD names. Refuses to
    replace a hook gitqueue did not write unless ``force``. Returns what it wrote.
    """
    if server is None and client is None:
        raise GitqueueError("name a repository: --server BARE_REPO and/or --client CLONE")
    if server is not None and branch is None:
        branch = _head_branch(server)
    python = shlex.quote(python or sys.executable)
    # The hook runs this very gitqueue: its folder goes on the path (after site-packages, so
    # an installed copy is found where it is, and a source checkout is found at all).
    home = str(Path(__file__).resolve().parent.parent)
    code = shlex.quote(
        f"import sys; sys.path.append({json.dumps(home)}); from gitqueue.hooks import main; sys.exit(main())"
    )
    written = []
    if server is not None:
        queue_branch = branch or DEFAULT_BRANCH
        text = SERVER_SCRIPT.format(
            mark=MARK, branch=queue_branch, branch_q=shlex.quote(queue_branch), python=python, code=code
        )
        written.append(_write_hook(server, "pre-receive", text, force=force))
    if client is not None:
        text = CLIENT_SCRIPT.format(mark=MARK, python=python, code=code)
        written.append(_write_hook(client, "pre-commit", text, force=force))
    return written


def _head_branch(repo: Path) -> str:
    """The queue's branch in ``repo`` as ``init`` finds it: the one HEAD names, as a rule."""
    if not repo.is_dir():
        raise GitqueueError(f"{repo}: no such repository")
    return init_branch(remote_refs(str(repo)), None)


def _write_hook(repo: Path, name: str, text: str, *, force: bool) -> Path:
    if not repo.is_dir():
        raise GitqueueError(f"{repo}: no such repository")
    with LocalRepo(repo) as store:
        folder = store.hooks_dir()
    target = folder / name
    if target.exists() and MARK not in target.read_text(errors="replace") and not force:
        raise GitqueueError(
            f"{target} exists and gitqueue did not write it: call `python -m gitqueue.hooks {name}` from it, "
            "or pass --force to replace it"
        )
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{name}.gitqueue-tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    sys.exit(main())
