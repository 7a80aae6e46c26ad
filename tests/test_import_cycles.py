"""No import cycle inside pmg_core: each module imports only what sits below it.

Every ``import`` in a module counts, at its top level or inside a function (a lazy
import hides a cycle at start-up, it does not remove it). ``from package import name``
counts as an edge to the submodule ``package.name`` when that is a module, else to
``package``; importing a submodule does not count as importing its parent package
(``pmg_core/__init__`` and ``pmg_core/training/__init__`` export lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "pmg_core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path = CORE) -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(root.rglob("*.py")) if path.name != "__main__.py"}


def import_graph(modules: dict[str, Path], sources: dict[str, str] | None = None) -> dict[str, set[str]]:
    """module -> the modules of ``modules`` it imports."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        source = sources[name] if sources else path.read_text(encoding="utf-8")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                for alias in node.names:
                    submodule = f"{origin}.{alias.name}"
                    targets.add(submodule if submodule in modules else origin)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_pmg_core_has_no_import_cycle():
    graph = import_graph(_modules())
    assert "pmg_core.cli_common" in graph and graph["pmg_core.cli"], "the scan found no modules or no imports"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_shared_cli_module_imports_no_subcommand():
    imported = import_graph(_modules())["pmg_core.cli_common"]
    assert not {m for m in imported if m.endswith("cli") or m.endswith("commands")}, imported


def test_the_scan_finds_a_lazy_cycle():
    modules = {"pkg.a": Path("a.py"), "pkg.b": Path("b.py"), "pkg.c": Path("c.py")}
    sources = {
        "pkg.a": "from .b import thing\n",
        "pkg.b": "from . import c\n",
        "pkg.c": "def later():\n    from pkg.a import x\n",
    }
    graph = import_graph(modules, sources)
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    assert find_cycle({"pkg.a": {"pkg.b"}, "pkg.b": set()}) is None
