"""Rules of the house, checked on every run (see README, Development): small units, no
swallowed errors, and the server as a thin adapter over the pipeline."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "boride"
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_PIPELINE_MODULE_LINES = 500
BROAD = {"Exception", "BaseException"}


def modules() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE.parent), ast.parse(path.read_text(), str(path))


def _size(node: ast.AST) -> int:
    return int(getattr(node, "end_lineno", 0)) - int(getattr(node, "lineno", 0)) + 1


def test_no_class_over_300_and_no_function_over_60_lines() -> None:
    too_long = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and _size(node) > MAX_CLASS_LINES:
                too_long.append(f"{path}:{node.lineno} class {node.name}: {_size(node)} lines")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) \
                    and _size(node) > MAX_FUNCTION_LINES:
                too_long.append(f"{path}:{node.lineno} {node.name}(): {_size(node)} lines")
    assert not too_long, "\n".join(too_long)


def test_no_module_of_the_pipeline_over_500_lines() -> None:
    """The pipeline is a package of one concept a module (it was one 1,174-line module)."""
    too_long = [f"{path}: {n} lines" for path, _ in modules() if path.parts[1] == "pipeline"
                and (n := len((PACKAGE.parent / path).read_text().splitlines()))
                > MAX_PIPELINE_MODULE_LINES]
    assert not too_long, "\n".join(too_long)


def _names(node: ast.expr | None) -> set[str]:
    if node is None:
        return set()
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    return {node.id} if isinstance(node, ast.Name) else set()


def test_no_error_is_swallowed() -> None:
    """No ``suppress(Exception)``, no ``except Exception: pass`` (a broad handler must do
    something with the error: report it, log it, turn it into a result)."""
    found = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                    node.func, "id", "")) == "suppress" and BROAD & set().union(
                    *(_names(a) for a in node.args)):
                found.append(f"{path}:{node.lineno} suppress(Exception)")
            if isinstance(node, ast.ExceptHandler) and (node.type is None or BROAD & _names(
                    node.type)) and all(isinstance(s, ast.Pass) for s in node.body):
                found.append(f"{path}:{node.lineno} except ...: pass")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("low_level", ["merge", "protocol", "health", "archive"])
def test_the_server_goes_through_the_pipeline(low_level: str) -> None:
    users = []
    for path, tree in modules():
        if path.parts[1] != "server":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                    node.module == f"boride.{low_level}"
                    or (node.module == "boride" and any(a.name == low_level for a in node.names))):
                users.append(f"{path}:{node.lineno}")
    assert not users, f"the server imports boride.{low_level}: " + ", ".join(users)
