"""The hooks of ``.pre-commit-hooks.yaml`` under the real pre-commit framework, in a queue clone.

``pre-commit try-repo`` installs gitqueue from this repository (uncommitted changes included)
into a virtualenv of its own, as a user's ``rev:`` would, and runs the hook there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from clones import Clone

from gitqueue import Queue, __version__

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ROOT / ".pre-commit-hooks.yaml"
HAND_MOVE = "no gitqueue command moves a task from pending/ to done/"


def test_the_example_names_this_versions_tag_and_a_hook_that_exists() -> None:
    text = HOOKS.read_text()
    rev = re.search(r"^#\s+rev: (\S+)$", text, re.MULTILINE)
    assert rev is not None and rev.group(1) == f"v{__version__}"
    example = re.search(r"^#\s+- id: (\S+)$", text, re.MULTILINE)
    assert example is not None and example.group(1) in [hook["id"] for hook in yaml.safe_load(text)]


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pre-commit's own store, shared by this module's tests: gitqueue is installed once."""
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture
def clone(queue: Queue, bare_remote: Path, tmp_path: Path) -> Clone:
    queue.submit([{"id": f"t{n}", "args": {"n": n}} for n in range(3)])
    return Clone(str(bare_remote), tmp_path / "alice")


def pre_commit(clone: Clone, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PIP_CACHE_DIR": str(home / "pip"), "PRE_COMMIT_COLOR": "never"}
    exe = Path(sys.executable).parent / "pre-commit"
    return subprocess.run(
        [str(exe), "try-repo", str(ROOT), "gitqueue-validate", *args],
        cwd=clone.path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def test_all_files_fails_on_a_broken_queue_and_passes_once_it_is_fixed(clone: Clone, pre_commit_home: Path) -> None:
    clone.write("pending/t1.yaml", "args: {n: [1\n")
    assert clone.commit("break t1", verify=False).returncode == 0
    broken = pre_commit(clone, pre_commit_home, "--all-files")
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "pending/t1.yaml:2:1" in broken.stdout
    clone.write("pending/t1.yaml", "args: {n: 1}\n")
    assert clone.commit("fix t1", verify=False).returncode == 0
    fixed = pre_commit(clone, pre_commit_home, "--all-files")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr


def test_a_staged_hand_move_is_refused(clone: Clone, pre_commit_home: Path) -> None:
    clone.run("mv", "pending/t0.yaml", "done/t0.yaml")
    proc = pre_commit(clone, pre_commit_home)
    assert proc.returncode == 1 and HAND_MOVE in proc.stdout, proc.stdout + proc.stderr
