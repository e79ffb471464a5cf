"""The README's commands are true: every option it names exists on the command it is named
with, the ids it names are ids its own sweep makes, and the usage lines read as usage."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from gitqueue import Queue
from gitqueue.cli import app

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
ROOT: Any = typer.main.get_command(app)  # a group: commands by name in .commands
GROUPS = "|".join(name for name, cmd in ROOT.commands.items() if hasattr(cmd, "commands"))
COMMAND = re.compile(rf"\bgitqueue\s+((?:{GROUPS})\s+[a-z]+|[a-z]+)")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
OTHER_TOOL = re.compile(r"^\s*(#SBATCH|git|python3?|pip|bash|jq|seq|pre-commit|sbatch|scancel|srun|kubectl|sh)\b")


def command(path: str) -> Any:
    found = ROOT
    for word in path.split():
        assert word in getattr(found, "commands", {}), f"no command `gitqueue {path}`"
        found = found.commands[word]
    return found


def options(cmd: Any) -> set[str]:
    """The options ``--help`` shows (a hidden one does not count as existing for a reader)."""
    shown = [param for param in cmd.params if not getattr(param, "hidden", False)]
    return {opt for param in shown for opt in (*param.opts, *param.secondary_opts)} | {"--help"}


def every_command(group: Any = ROOT, prefix: str = "") -> dict[str, Any]:
    found = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            found.update(every_command(cmd, f"{prefix}{name} "))
        else:
            found[prefix + name] = cmd
    return found


def mentions() -> list[tuple[str | None, str, str]]:
    """(command or None for "some command", option, where) for each option the README names.

    In a code block, options belong to the `gitqueue CMD` before them on their line (not
    those after a lone `--`: the user's command's). In prose, to the `gitqueue CMD` of their
    own code span, else to the last one named in their paragraph (or table row).
    """
    found: list[tuple[str | None, str, str]] = []
    blocks = README.split("```")
    for number, block in enumerate(blocks):
        if number % 2:  # a fenced code block
            for line in block.splitlines():
                found += _in_text(line.split(" -- ")[0].split("#")[0], None, line)
            continue
        for paragraph in re.split(r"\n\s*\n|\n(?=\|)", block):
            current: str | None = None
            for span in re.findall(r"`([^`]+)`", paragraph):
                found += _in_text(span, current, span)
                commands = COMMAND.findall(span)
                if commands:
                    current = " ".join(commands[-1].split())
                elif OTHER_TOOL.match(span):
                    current = "other tool"
    return found


def _in_text(text: str, current: str | None, where: str) -> list[tuple[str | None, str, str]]:
    found: list[tuple[str | None, str, str]] = []
    if OTHER_TOOL.match(text) and not COMMAND.search(text):
        return found
    last = current
    at = 0
    for match in COMMAND.finditer(text):
        found += [(last, opt, where) for opt in OPTION.findall(text[at : match.start()])]
        last, at = " ".join(match.group(1).split()), match.end()
    found += [(last, opt, where) for opt in OPTION.findall(text[at:])]
    return [(cmd, opt, where) for cmd, opt, where in found if cmd != "other tool"]


def test_the_readme_names_many_options() -> None:
    named = {(cmd, option) for cmd, option, _ in mentions()}
    assert len(named) > 25 and {("work", "--worker"), ("reap", "--format"), ("hooks install", "--server")} <= named


@pytest.mark.parametrize(("cmd", "option", "where"), sorted(set(mentions()), key=str))
def test_every_option_the_readme_names_exists_on_its_command(cmd: str | None, option: str, where: str) -> None:
    if cmd is None:
        having = [name for name, c in [("", ROOT), *every_command().items()] if option in options(c)]
        assert having, f"the README names {option} ({where!r}), which no gitqueue command has"
    else:
        found = command(cmd)
        passes_on = found.context_settings.get("ignore_unknown_options")  # slurm submit: sbatch's too
        assert option in options(found) or passes_on, f"`gitqueue {cmd}` has no {option} (README: {where!r})"


def test_the_readme_cancels_an_id_its_own_sweep_makes(bare_remote: Path) -> None:
    submit = next(line for line in README.splitlines() if line.startswith("gitqueue submit --grid"))  # the first sweep
    result = CliRunner().invoke(app, [*shlex.split(submit)[1:], "--queue", str(bare_remote)])
    assert result.exit_code != 0, "not initialised yet"
    Queue.init(str(bare_remote)).close()
    result = CliRunner().invoke(app, [*shlex.split(submit)[1:], "--queue", str(bare_remote)])
    assert result.exit_code == 0, result.output
    made = set(result.stdout.split())
    assert len(made) == 64
    named = set(re.findall(r"\b\d{6}-lr[\d.]+-bs\d+-depth\d+", README))  # the sweep's ids
    assert named and named <= made, f"the README names ids its sweep does not make: {named - made}"


def test_the_worker_options_the_readme_describes_are_in_work_help() -> None:
    """The README tells how a worker reaps (every --reap-every) and judges clocks (--max-skew)."""
    text = CliRunner().invoke(app, ["work", "--help"]).stdout
    for option in ("--reap-every", "--max-skew", "--max-failures", "--grace", "--max-batch"):
        assert option in text and option in README


@pytest.mark.parametrize("name", sorted(every_command()))
def test_usage_lines_read_as_usage(name: str) -> None:
    text = CliRunner().invoke(app, [*name.split(), "--help"]).stdout
    assert "<list[" not in text, text
    assert not re.search(r"\]\.\.\.\]|\.\.\.\]\.\.\.", text), text
