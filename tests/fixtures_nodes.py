"""Session fixtures for the node pack's unit tests: ComfyUI's source importable, the pack
loaded the way ComfyUI loads it, ComfyUI's folders redirected to a temporary base, and a
tiny real ComfyUI CLIP.

No server runs here: tests call each node's ``execute`` directly. ComfyUI's modules
(``comfy``, ``folder_paths``, ``comfy_api``) are imported into the test process, so
the ComfyUI source goes first on ``sys.path`` (its top-level ``nodes`` module must
win over this repository's ``nodes/`` folder, which the pack only ever imports as a
sub-package).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_SOURCE = REPO / ".cache" / "comfyui"
PACK_NAME = "comfyui_pmg"


@pytest.fixture(scope="session")
def comfy_source() -> Path:
    """ComfyUI 0.3.75's source on ``sys.path``, configured for the CPU (no CUDA here)."""
    if not (COMFY_SOURCE / "comfy").is_dir():
        pytest.fail(f"ComfyUI's source is missing at {COMFY_SOURCE}; run scripts/bootstrap_env.sh first.")
    if str(COMFY_SOURCE) not in sys.path:
        sys.path.insert(0, str(COMFY_SOURCE))
    loaded = sys.modules.get("nodes")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(COMFY_SOURCE)):
        pytest.fail("A module called 'nodes' that is not ComfyUI's was imported before the ComfyUI fixtures.")
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # must precede comfy.model_management's import
    import comfy.model_management  # noqa: F401

    return COMFY_SOURCE


@pytest.fixture(scope="session")
def comfy_base(comfy_source, tmp_path_factory) -> SimpleNamespace:
    """ComfyUI's input/output/temp/user/models folders moved under one temporary base."""
    import folder_paths

    base = tmp_path_factory.mktemp("comfy_base")
    dirs = SimpleNamespace(base=base)
    for name in ("input", "output", "temp", "user", "models"):
        path = base / name
        path.mkdir()
        setattr(dirs, name, path)
    folder_paths.set_input_directory(str(dirs.input))
    folder_paths.set_output_directory(str(dirs.output))
    folder_paths.set_temp_directory(str(dirs.temp))
    folder_paths.set_user_directory(str(dirs.user))
    # The pack registers models/LLM and models/pmg relative to this attribute.
    folder_paths.models_dir = str(dirs.models)
    (dirs.models / "LLM").mkdir()
    (dirs.models / "pmg").mkdir()
    return dirs


def load_pack_module():
    """Import the repository root as the package ``comfyui_pmg``, exactly as ComfyUI imports a custom node folder."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(
        PACK_NAME, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack_module(comfy_base):
    """The pack's root module, imported as ComfyUI does (its node modules are imported on demand)."""
    return load_pack_module()


@pytest.fixture(scope="session")
def pmg_pack(pack_module, comfy_base) -> SimpleNamespace:
    """The loaded pack: its module, its extension's nodes by id, and its own copy of ``pmg_core``.

    The pack's library is ``comfyui_pmg.pmg_core``, a different module object from a
    top-level ``pmg_core``: errors raised by nodes are classes of ``pack.core``.
    """
    module = pack_module
    extension = asyncio.run(module.comfy_entrypoint())
    node_list = asyncio.run(extension.get_node_list())
    nodes = {cls.GET_SCHEMA().node_id: cls for cls in node_list}
    return SimpleNamespace(
        module=module,
        extension=extension,
        node_list=node_list,
        nodes=nodes,
        core=importlib.import_module(f"{PACK_NAME}.pmg_core"),
        errors=importlib.import_module(f"{PACK_NAME}.pmg_core.errors"),
        base=comfy_base,
    )


def pack_submodule(name: str):
    """A module of the loaded pack, e.g. ``pack_submodule("nodes.comfy_paths")``."""
    return importlib.import_module(f"{PACK_NAME}.{name}")


TINY_CLIP_WIDTH = 32


@pytest.fixture(scope="session")
def comfy_clip(comfy_source):
    """A real ComfyUI ``CLIP`` (SD1.x layout, real CLIP tokenizer) shrunk to width 32, seeded random weights.

    Mechanics only: ComfyUI's tokenizer, token weighting, 77-token windows and
    pooled output run for real; the embeddings mean nothing.
    """
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    import torch

    config = json.loads((COMFY_SOURCE / "comfy" / "sd1_clip_config.json").read_text())
    config.update(
        hidden_size=TINY_CLIP_WIDTH, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=TINY_CLIP_WIDTH,
    )
    clip_model = functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=config)
    target = comfy.supported_models_base.ClipTarget(
        comfy.sd1_clip.SD1Tokenizer, functools.partial(comfy.sd1_clip.SD1ClipModel, clip_model=clip_model)
    )
    clip = comfy.sd.CLIP(target=target)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # ComfyUI's ops skip weight initialisation: every tensor must be set explicitly.
        for parameter in clip.cond_stage_model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return clip


HISTORY_DATA = REPO / "tests" / "data" / "histories"


@pytest.fixture(scope="session")
def input_histories(comfy_base) -> Path:
    """The movie test histories (jsonl + posters) copied into ``<input>/pmg/``; returns that folder."""
    import shutil

    folder = comfy_base.input / "pmg"
    if not folder.exists():
        folder.mkdir()
        shutil.copy(HISTORY_DATA / "movies.jsonl", folder / "movies.jsonl")
        shutil.copy(HISTORY_DATA / "movies.csv", folder / "movies.csv")
        shutil.copytree(HISTORY_DATA / "posters", folder / "posters")
    return folder


def make_bundle(pack, history=None, llm=None, **fields):
    """A ``PMG_PREFERENCE`` value built by hand (no LLM run), for the conditioning and scoring nodes."""
    keywords = importlib.import_module(f"{PACK_NAME}.pmg_core.keywords")
    types = importlib.import_module(f"{PACK_NAME}.nodes.types")
    history_module = importlib.import_module(f"{PACK_NAME}.pmg_core.history")
    if history is None:
        item = history_module.Item(item_id="m1", title="Orbit of Ashes", categories=("Sci-Fi",))
        history = history_module.UserHistory(user_id="ada", items=(item,), scene="movie",
                                             target=history_module.Item(item_id="m5", title="Starlings of Vega"))
    values = dict(
        user_id=history.user_id,
        scene=history.scene,
        history_text="1. Orbit of Ashes(Sci-Fi): space, salvage.",
        preference_keywords=("space", "salvage", "mystery"),
        target_keywords=("birds", "colony", "alien sky"),
        target_text="movie poster, Starlings of Vega, named 'Starlings of Vega', birds, colony",
        preference_text="space, salvage, mystery",
        soft_prompt_text='A person watched the following movies "Orbit of Ashes". Please describe his movie interests.',
        negative_prompt="broken text, unclear, twisted",
    )
    values.update(fields)
    return types.PreferenceBundle(preference=keywords.Preference(**values), history=history, llm=llm)
