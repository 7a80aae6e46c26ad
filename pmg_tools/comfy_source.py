"""Tooling that imports ComfyUI's source in its own process: the module search order it needs.

ComfyUI's modules import each other by top-level name (``comfy``, ``folder_paths``, ``nodes``), so its
source folder must be on the module search path, and ahead of this repository, whose own ``nodes``
package would otherwise shadow ComfyUI's ``nodes`` module. That order is set when the interpreter
starts (``PYTHONPATH`` in safe-path mode, which keeps the working directory off the path), never by
editing ``sys.path`` at run time: a tool's ``main`` calls :func:`ensure_comfy_source_first`, which
starts the module again in that order when it is not, and a parent process passes
:func:`comfy_source_env` to the child it starts.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

from pmg_core.errors import ModelLoadError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMFY_DIR = REPO_ROOT / ".cache" / "comfyui"
# Set in a restarted process: the caller's own PYTHONPATH/PYTHONSAFEPATH, put back for its children.
_RESTARTED = "PMG_COMFY_SOURCE_RESTART"
_PATH_VARIABLES = ("PYTHONPATH", "PYTHONSAFEPATH")


def require_comfy_source(comfy_dir: Path) -> Path:
    """``comfy_dir`` resolved, once it holds ComfyUI's source (its ``comfy`` package)."""
    comfy_dir = Path(comfy_dir).resolve()
    if not (comfy_dir / "comfy").is_dir():
        raise ModelLoadError(f"No ComfyUI source at {comfy_dir}; run scripts/fetch_comfyui.sh first.")
    return comfy_dir


def comfy_source_env(comfy_dir: Path = DEFAULT_COMFY_DIR, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment whose Python finds ComfyUI's source first, this repository second, then the rest.

    Safe-path mode (Python 3.11+) keeps ``python -m``'s working directory, the repository, from going first.
    """
    env = dict(os.environ if base is None else base)
    entries = [str(require_comfy_source(comfy_dir)), str(REPO_ROOT)]
    entries += [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry and entry not in entries]
    env["PYTHONPATH"] = os.pathsep.join(entries)
    env["PYTHONSAFEPATH"] = "1"
    return env


def _found_in(name: str, folder: Path) -> bool:
    """Whether top-level module ``name`` is (or would be) imported from ``folder``."""
    module = sys.modules.get(name)
    spec = module.__spec__ if module is not None else importlib.util.find_spec(name)
    if spec is None:
        return False
    # ComfyUI's ``comfy`` is a namespace package: no origin, only the folders it is searched in.
    places = list(spec.submodule_search_locations or []) or [spec.origin]
    return all(place is not None and Path(place).resolve().is_relative_to(folder) for place in places)


def comfy_source_first(comfy_dir: Path = DEFAULT_COMFY_DIR) -> bool:
    """Whether ComfyUI's ``comfy`` package and ``nodes`` module come from ``comfy_dir`` in this process."""
    comfy_dir = Path(comfy_dir).resolve()
    return _found_in("comfy", comfy_dir) and _found_in("nodes", comfy_dir)


def ensure_comfy_source_first(module: str, argv: list[str], comfy_dir: Path = DEFAULT_COMFY_DIR) -> None:
    """Go on if ComfyUI's source comes first here; otherwise, when this process runs ``module`` as its main module,
    replace it by ``python -m module argv`` started in that order (:func:`comfy_source_env`). The restarted process
    gets its caller's PYTHONPATH back for the processes it starts."""
    if comfy_source_first(comfy_dir):
        _restore_caller_env()
        return
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    if main is None or main.name != module:  # called from another program: never replace that program's process
        raise ModelLoadError(
            f"{module} needs ComfyUI's source ({comfy_dir}) first on the module path, and this process ({sys.argv[0]}) "
            f"does not have it; run `python -m {module}` from the repository's root, or start this process with "
            "pmg_tools.comfy_source.comfy_source_env().")
    if _RESTARTED in os.environ:
        raise ModelLoadError(
            f"ComfyUI's source at {comfy_dir} is still not first on the module path after a restart with "
            f"PYTHONPATH={os.environ.get('PYTHONPATH')!r}; run with Python 3.11 or later (safe-path mode), from the venv "
            "that scripts/bootstrap_env.sh builds.")
    env = comfy_source_env(comfy_dir)
    env[_RESTARTED] = json.dumps({name: os.environ.get(name) for name in _PATH_VARIABLES})
    log.info("restarting as python -m %s with ComfyUI's source (%s) first on the module path", module, comfy_dir)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def _restore_caller_env() -> None:
    """Put back the caller's PYTHONPATH/PYTHONSAFEPATH, so the processes this one starts search as usual."""
    saved = os.environ.pop(_RESTARTED, None)
    if saved is None:
        return
    for name, value in json.loads(saved).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def import_comfy_package(comfy_dir: Path = DEFAULT_COMFY_DIR, cpu: bool = True):
    """ComfyUI's ``comfy`` package from ``comfy_dir``, told to use the CPU (or not) before its model management loads.

    The caller's process must already find ComfyUI's source first (:func:`ensure_comfy_source_first`)."""
    comfy_dir = require_comfy_source(comfy_dir)
    if not comfy_source_first(comfy_dir):
        raise ModelLoadError(
            f"ComfyUI's source at {comfy_dir} is not first on the module path, so its 'comfy' package or 'nodes' module "
            "would come from elsewhere (this repository's 'nodes' package shadows it); call "
            "pmg_tools.comfy_source.ensure_comfy_source_first(...) in main, or start Python with comfy_source_env().")
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu  # must precede comfy.model_management's import
    return comfy
