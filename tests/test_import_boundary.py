"""pmg_core is a pure library: it never imports ComfyUI (``comfy``, ``folder_paths``, ``server``, ``nodes``, ``comfy_api``).

Checked two ways: by importing every submodule in a clean interpreter and looking at
``sys.modules``, and by scanning the source for such imports (which also catches
imports hidden inside functions that the first check never runs).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "pmg_core"
OUTSIDE = "<outside pmg_core>"
FORBIDDEN_ROOTS = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "server", "nodes")


def _forbidden(module_name: str) -> bool:
    root = module_name.split(".")[0]
    return root in FORBIDDEN_ROOTS or root.startswith("comfy")


def _core_modules() -> list[str]:
    names = []
    for path in sorted(CORE.rglob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        parts = list(relative.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts[-1] == "__main__":
            continue  # running it would start the command line
        names.append(".".join(parts))
    return names


_PROBE = r"""
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as error:  # reported, and fails the test below
        failed[name] = f"{type(error).__name__}: {error}"
print(json.dumps({"modules": sorted(sys.modules), "failed": failed}))
"""


def test_importing_every_pmg_core_module_pulls_in_no_comfyui_module():
    modules = _core_modules()
    assert "pmg_core" in modules and len(modules) > 5
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(modules)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
             "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, report["failed"]
    leaked = [name for name in report["modules"] if _forbidden(name)]
    assert leaked == [], f"pmg_core imported ComfyUI modules: {leaked}"


def _imports(tree: ast.AST, package: str = "pmg_core") -> list[tuple[int, str]]:
    """Absolute names of the modules a source imports (relative imports resolved against ``package``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            if node.level > len(parts):
                # a relative import climbing out of pmg_core reaches the pack (and ComfyUI)
                found.append((node.lineno, f"{OUTSIDE}{node.module or ''}"))
                continue
            base = parts[: len(parts) - node.level + 1]
            found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
        elif (isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__", "find_spec")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append((node.lineno, node.args[0].value))
    return found


def test_pmg_core_source_has_no_comfyui_import():
    offenders = []
    files = sorted(CORE.rglob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
        for line, name in _imports(tree, package):
            if _forbidden(name) or name.startswith(OUTSIDE):
                offenders.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert offenders == []


def test_the_scan_recognises_forbidden_imports():
    """The scanner itself: a source with each kind of ComfyUI import is flagged."""
    source = (
        "import comfy.sd\nfrom folder_paths import x\nimport nodes\nimportlib.import_module('server')\n"
        "import numpy\nfrom .errors import PMGError\nfrom .. import nodes\n"
    )
    names = [name for _, name in _imports(ast.parse(source), "pmg_core") if _forbidden(name) or name.startswith(OUTSIDE)]
    assert sorted(names) == sorted(["comfy.sd", "folder_paths", "nodes", "server", OUTSIDE])
    relative = [name for _, name in _imports(ast.parse("from ..errors import X"), "pmg_core.metrics")]
    assert relative == ["pmg_core.errors"]
