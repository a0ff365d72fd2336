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


# ------------------------------------------------------------------------------------------------
# Every task has an owner; every thread goes through the one helper (boride.aio)

CONCURRENCY_HELPERS = Path("boride/aio.py")
TASK_MAKERS = {"ensure_future", "create_task"}


def _in_order(found: list[str]) -> list[str]:
    """``path:line what`` lines by path, then line."""
    def where(line: str) -> tuple[str, int]:
        path, _, rest = line.partition(":")
        return path, int(rest.split(" ", 1)[0])
    return sorted(found, key=where)


def _scoped_groups(tree: ast.Module) -> set[int]:
    """The ``create_task`` calls (their node ids) made on an ``asyncio.TaskGroup`` inside the
    ``async with asyncio.TaskGroup() as group`` block that owns them: structured already."""
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.AsyncWith):
            continue
        for item in node.items:
            made = item.context_expr
            if not (isinstance(made, ast.Call) and isinstance(made.func, ast.Attribute)
                    and made.func.attr == "TaskGroup" and _names(made.func.value) == {"asyncio"}
                    and isinstance(item.optional_vars, ast.Name)):
                continue
            group = item.optional_vars.id
            allowed |= {id(n) for stmt in node.body for n in ast.walk(stmt)
                        if isinstance(n, ast.Attribute) and n.attr == "create_task"
                        and _names(n.value) == {group}}
    return allowed


def test_tasks_are_made_only_by_the_concurrency_helpers() -> None:
    """``ensure_future``/``create_task`` only in boride/aio.py: background work goes to an
    ``aio.TaskGroup`` owned by whoever lives as long as it (a short race: ``aio.race``,
    ``aio.spawn``). Allowed elsewhere: ``group.create_task`` inside the ``async with
    asyncio.TaskGroup() as group`` block itself."""
    found = []
    for path, tree in modules():
        if path == CONCURRENCY_HELPERS:
            continue
        allowed = _scoped_groups(tree)
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else \
                node.id if isinstance(node, ast.Name) else None
            if name in TASK_MAKERS and id(node) not in allowed:
                found.append(f"{path}:{node.lineno} {name}")
            if isinstance(node, ast.ImportFrom):
                found += [f"{path}:{node.lineno} import of {a.name}" for a in node.names
                          if a.name in TASK_MAKERS]
    assert not found, "tasks made outside boride/aio.py:\n" + "\n".join(_in_order(found))


def test_threads_go_through_the_concurrency_helpers() -> None:
    """No ``asyncio.to_thread`` nor ``run_in_executor`` outside boride/aio.py: threads go
    through ``aio.to_thread`` (a limit; a cancelled caller waits for its thread) or
    ``aio.in_thread`` (a pool of one's own)."""
    found = []
    for path, tree in modules():
        if path == CONCURRENCY_HELPERS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and (
                    node.attr == "run_in_executor"
                    or (node.attr == "to_thread" and _names(node.value) == {"asyncio"})):
                found.append(f"{path}:{node.lineno} {node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "asyncio" and {
                    "to_thread"} & {a.name for a in node.names}:
                found.append(f"{path}:{node.lineno} from asyncio import to_thread")
    assert not found, "threads started outside boride/aio.py:\n" + "\n".join(
        _in_order(found))
