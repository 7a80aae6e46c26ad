"""The code's shape, checked on every run: ruff with the repository's configuration finds nothing; no class over
300 lines and at most 3 functions over 60 lines outside tests, each saying why in its docstring; no ``sys.path``
edit outside tests (tools run as modules, ComfyUI's source goes first through ``pmg_tools.comfy_source``)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Tests, and what is not the project's code (caches, environments, dependencies, the extracted ComfyUI, run outputs).
SKIPPED_PARTS = {"tests", ".cache", ".venv", ".git", "node_modules", "__pycache__", "comfy_base", "results", "runs", "build",
                 "dist"}
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_LONG_FUNCTIONS = 3


def _ruff() -> str:
    """The ruff beside this interpreter (the venv's, pinned in requirements/test.in), else the one on PATH."""
    beside = Path(sys.executable).parent / "ruff"
    found = str(beside) if beside.is_file() else shutil.which("ruff")
    if found is None:
        pytest.fail(f"ruff is not installed beside {sys.executable} nor on PATH; run scripts/bootstrap_env.sh "
                    "(requirements/test.in pins it).")
    return found


def _source_files() -> list[Path]:
    """Every .py file of the project outside tests: what git tracks or would add (as ruff, it skips ignored files)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    paths = [REPO / line for line in listed.stdout.splitlines()] if listed.returncode == 0 else REPO.rglob("*.py")
    files = [path for path in paths
             if path.is_file() and not SKIPPED_PARTS.intersection(path.relative_to(REPO).parts)]
    assert len(files) > 20, f"only {len(files)} source files found under {REPO}: the walk is wrong"
    return sorted(files)


def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _lines(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def test_ruff_finds_nothing_with_the_repository_configuration():
    done = subprocess.run([_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"ruff findings (fix them, or waive one with `# noqa: RULE - why`):\n{done.stdout}{done.stderr}"


def test_no_class_is_over_300_lines():
    long_classes = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({_lines(node)} lines)"
                    for path in _source_files() for node in ast.walk(_parsed(path))
                    if isinstance(node, ast.ClassDef) and _lines(node) > MAX_CLASS_LINES]
    assert not long_classes, f"classes over {MAX_CLASS_LINES} lines: split them by responsibility: {long_classes}"


def test_at_most_three_functions_over_60_lines_each_saying_why():
    long_functions = {}
    for path in _source_files():
        for node in ast.walk(_parsed(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _lines(node) > MAX_FUNCTION_LINES:
                long_functions[f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({_lines(node)} lines)"] = node
    assert len(long_functions) <= MAX_LONG_FUNCTIONS, (
        f"{len(long_functions)} functions over {MAX_FUNCTION_LINES} lines (at most {MAX_LONG_FUNCTIONS}): split them by "
        f"meaning: {sorted(long_functions)}")
    unexplained = [name for name, node in long_functions.items() if not ast.get_docstring(node)]
    assert not unexplained, f"a function over {MAX_FUNCTION_LINES} lines needs a docstring that says why: {unexplained}"


def _edits_sys_path(node: ast.AST) -> bool:
    """``sys.path.insert/append/extend(...)``, or an assignment to ``sys.path`` or an item or slice of it."""
    def is_sys_path(target: ast.AST) -> bool:
        while isinstance(target, ast.Subscript):
            target = target.value
        return (isinstance(target, ast.Attribute) and target.attr == "path"
                and isinstance(target.value, ast.Name) and target.value.id == "sys")

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("insert", "append", "extend") and is_sys_path(node.func.value)
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(is_sys_path(target) for target in targets)
    return False


def test_no_sys_path_edit_outside_tests():
    edits = [f"{path.relative_to(REPO)}:{node.lineno}" for path in _source_files()
             for node in ast.walk(_parsed(path)) if _edits_sys_path(node)]
    assert not edits, ("sys.path edited outside tests: run tools as modules from the repository root "
                       f"(python -m benchmarks.bench_x), and ComfyUI's source through pmg_tools.comfy_source: {edits}")


@pytest.mark.parametrize(("code", "edits"), [
    ("import sys\nsys.path.insert(0, 'x')", True),
    ("import sys\nsys.path.append('x')", True),
    ("import sys\nsys.path += ['x']", True),
    ("import sys\nsys.path[:0] = ['x']", True),
    ("import sys\nsys.path = ['x']", True),
    ("import sys\nprint(sys.path)", False),
    ("import os\nos.path.join('a', 'b')", False),
    ("paths = []\npaths.append('x')", False),
])
def test_the_sys_path_check_tells_edits_from_reads(code, edits):
    assert any(_edits_sys_path(node) for node in ast.walk(ast.parse(code))) is edits
