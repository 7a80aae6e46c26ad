"""pmg_tools.comfy_source: tools that import ComfyUI get its source first on the module path without editing sys.path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pmg_core.errors import ModelLoadError
from pmg_tools.comfy_source import DEFAULT_COMFY_DIR, REPO_ROOT, comfy_source_env, require_comfy_source

# Where `nodes` would be imported from (found, not imported: ComfyUI's nodes.py would start CUDA).
PROBE = ("import importlib.util, json; from pmg_tools.comfy_source import comfy_source_first; "
         "print(json.dumps({'first': comfy_source_first(), 'nodes': importlib.util.find_spec('nodes').origin}))")


def _python(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_environment_puts_comfyui_first_then_the_repository_then_the_callers_entries():
    env = comfy_source_env(DEFAULT_COMFY_DIR, base={"PYTHONPATH": os.pathsep.join(["/somewhere", str(REPO_ROOT)])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(DEFAULT_COMFY_DIR.resolve()), str(REPO_ROOT), "/somewhere"]
    assert env["PYTHONSAFEPATH"] == "1"


def test_a_process_started_so_imports_comfyuis_nodes_not_the_packs(comfy_source):
    done = _python(["-c", PROBE], comfy_source_env(comfy_source))
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["first"] is True
    assert Path(found["nodes"]).resolve() == (Path(comfy_source) / "nodes.py").resolve()


def test_a_plain_process_in_the_repository_would_import_the_packs_nodes(comfy_source):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    done = _python(["-c", PROBE], env)
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    assert found["first"] is False and Path(found["nodes"]).resolve() == REPO_ROOT / "nodes" / "__init__.py"


def test_a_tool_called_from_another_program_refuses_instead_of_replacing_its_process(comfy_source):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    code = ("from pmg_tools.comfy_source import ensure_comfy_source_first\n"
            "ensure_comfy_source_first('scripts.make_tiny_checkpoint', [])\n"
            "print('went on')")
    done = _python(["-c", code], env)
    assert done.returncode != 0 and "went on" not in done.stdout
    assert "ModelLoadError" in done.stderr and "python -m scripts.make_tiny_checkpoint" in done.stderr


def test_a_folder_without_comfyui_is_refused_naming_the_fetch_script(tmp_path):
    with pytest.raises(ModelLoadError, match="fetch_comfyui.sh"):
        require_comfy_source(tmp_path)
