"""The test suite's own test: patterns that make a test pass when what it names is broken, found
mechanically in every file of tests/ (a reviewer still reads the rest):

- a skip outside `helpers.unavailable` (under CI a missing component must fail, not skip);
- a wall-clock difference (`time.monotonic()`, `time.time()`, `time.perf_counter()`) compared
  with a number: speed is measured in benchmarks/, a test waits for events with deadlines that
  only end a hung test (`helpers.within`);
- an assertion on a literal (`assert True`, `assert "text"`), which holds whatever happens;
- a test function that asserts nothing: no `assert`, no `pytest.raises`, no `assert_*` helper.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {"monotonic", "time", "perf_counter"}


def sources() -> list[Path]:
    return sorted(TESTS.glob("*.py"))


def _is_clock(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in CLOCKS
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "time"
    )


def _is_elapsed(node: ast.AST, elapsed: set[str]) -> bool:
    """A clock's difference: `time.monotonic() - start`, or a name assigned one."""
    if isinstance(node, ast.Name):
        return node.id in elapsed
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _is_clock(node.left)


def _number(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, int | float)


def findings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
        elapsed = {
            target.id
            for node in ast.walk(func)
            if isinstance(node, ast.Assign) and _is_elapsed(node.value, set())
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(func):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_is_elapsed(s, elapsed) for s in sides) and any(map(_number, sides)):
                    found.append(f"{path.name}:{node.lineno}: a wall-clock time compared")
        if func.name.startswith("test_") and not _asserts(func):
            found.append(f"{path.name}:{func.lineno}: {func.name} asserts nothing")
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant):
            found.append(f"{path.name}:{node.lineno}: an assertion on a literal")
        allowed = path.name == "helpers.py" and _inside(tree, node, "unavailable")
        if _is_skip(node) and not allowed:
            found.append(f"{path.name}:{node.lineno}: a skip outside helpers.unavailable")
    return found


def _asserts(func: ast.FunctionDef) -> bool:
    for node in ast.walk(func):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            name = node.func.id if isinstance(node.func, ast.Name) else name
            if name and (name.startswith("assert") or name in ("raises", "fail")):
                return True
    return False


def _is_skip(node: ast.AST) -> bool:
    """`pytest.skip(...)`, `pytest.importorskip(...)` or a `pytest.mark.skip`/`skipif` whose
    reason is not the platform (sys.platform)."""
    if not isinstance(node, ast.Attribute):
        return False
    if node.attr in ("skip", "importorskip") and isinstance(node.value, ast.Name):
        return node.value.id == "pytest"
    if node.attr in ("skip", "skipif") and isinstance(node.value, ast.Attribute):
        return node.value.attr == "mark"
    return False


def _inside(tree: ast.Module, target: ast.AST, name: str) -> bool:
    return any(
        isinstance(func, ast.FunctionDef)
        and func.name == name
        and any(node is target for node in ast.walk(func))
        for func in ast.walk(tree)
    )


def _platform_skipif(tree: ast.Module, node: ast.AST) -> bool:
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and call.func is node and call.args:
            return "sys.platform" in ast.unparse(call.args[0])
    return False


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.name)
def test_no_test_can_pass_with_its_feature_broken_by_a_known_pattern(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = [
        f
        for f in findings(path)
        if not (
            "a skip outside" in f
            and any(
                _is_skip(n) and n.lineno == int(f.split(":")[1]) and _platform_skipif(tree, n)
                for n in ast.walk(tree)
            )
        )
    ]
    assert not found, "\n".join(found)


def test_the_checker_finds_each_pattern(tmp_path: Path) -> None:
    bad = tmp_path / "test_bad.py"
    bad.write_text(
        "import time, pytest\n"
        "def test_fast():\n"
        "    start = time.monotonic()\n"
        "    took = time.monotonic() - start\n"
        "    assert took < 3\n"
        "    assert time.perf_counter() - start <= 1.5\n"
        "def test_nothing():\n"
        "    print('hi')\n"
        "def test_literal():\n"
        "    assert True\n"
        "def test_skips():\n"
        "    pytest.skip('no browser')\n"
        "    assert 1 == 1\n"
    )
    found = "\n".join(findings(bad))
    assert found.count("a wall-clock time compared") == 2, found
    assert "test_nothing asserts nothing" in found
    assert "test_bad.py:10: an assertion on a literal" in found
    assert "test_bad.py:12: a skip outside helpers.unavailable" in found
