"""The pack's ``ComfyExtension``: gathers ``NODES`` from every node module.

Core modules must import: a failure there is a bug and stops the pack loudly.
Optional modules (training nodes, which need extra components) load behind a
try/except: when one fails, the rest of the pack still works and the reason is
logged as a warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

from comfy_api.latest import ComfyExtension, io

from . import comfy_paths, history_upload_route

logger = logging.getLogger(__name__)

CORE_MODULES = (
    "history_nodes", "llm_nodes", "served_llm_nodes", "conditioning_nodes", "image_prompt_nodes", "scoring_nodes",
    "sticker_model_nodes",
)
OPTIONAL_MODULES = ("trainer_nodes",)


def _module_nodes(name: str) -> list[type[io.ComfyNode]]:
    module = importlib.import_module(f".{name}", __package__)
    return list(module.NODES)


def collect_nodes() -> list[type[io.ComfyNode]]:
    """Every PMG node class, core modules first."""
    nodes: list[type[io.ComfyNode]] = []
    for name in CORE_MODULES:
        nodes.extend(_module_nodes(name))
    for name in OPTIONAL_MODULES:
        if importlib.util.find_spec(f"{__package__}.{name}") is None:
            continue
        try:
            nodes.extend(_module_nodes(name))
        except Exception as error:  # noqa: BLE001 - any failure of an optional group is only logged
            logger.warning("PMG: the optional node module %r did not load (%s); its nodes are unavailable.", name, error)
    return nodes


class PMGExtension(ComfyExtension):
    """The PMG node pack."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 never calls on_load; this runs once at start-up, before any
        # schema is built, and the combo lists of the loaders read these folders.
        comfy_paths.register_model_folders()
        # The loader's upload button posts here (web/js/pmg_history_upload.js).
        history_upload_route.register()
        return collect_nodes()
