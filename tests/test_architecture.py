"""The layout ARCHITECTURE.md promises: imports that go one way, and rooms that stay small."""

from __future__ import annotations

import ast
from pathlib import Path

import gitqueue

PACKAGE = Path(gitqueue.__file__).parent
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("gitqueue", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), filename=str(path))
    return found


def runtime_imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The gitqueue modules ``name`` imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("gitqueue"):
                if child.module == "gitqueue":
                    found.update(f"gitqueue.{alias.name}" for alias in child.names)
                else:
                    found.add(child.module)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names if alias.name.startswith("gitqueue."))
            visit(child)

    visit(tree)
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            connect(node)
    return found


def test_imports_go_one_way() -> None:
    trees = modules()
    graph = {name: runtime_imports(name, tree, set(trees)) for name, tree in trees.items()}
    graph.pop("gitqueue")  # the package's face re-exports from below it; nothing below imports it
    graph = {name: deps - {"gitqueue"} for name, deps in graph.items()}
    assert cycles(graph) == []
    below_the_queue = ["gitqueue.lifecycle", "gitqueue.protocol", "gitqueue.gitstore", "gitqueue.git"]
    for name in below_the_queue:
        reach, todo = set(), [name]
        while todo:
            for dep in graph[todo.pop()]:
                if dep not in reach:
                    reach.add(dep)
                    todo.append(dep)
        assert "gitqueue.queue" not in reach and "gitqueue.cli" not in reach, name


def test_every_module_says_what_it_owns() -> None:
    missing = [name for name, tree in modules().items() if name != "gitqueue.__main__" and not ast.get_docstring(tree)]
    assert missing == []


def test_no_class_or_function_is_too_long() -> None:
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and lines > MAX_CLASS_LINES:
                long.append(f"{name}.{node.name}: class of {lines} lines")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and lines > MAX_FUNCTION_LINES:
                long.append(f"{name}.{node.name}: function of {lines} lines")
    assert long == []


def test_a_cycle_is_found() -> None:
    """The check itself can fail."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
