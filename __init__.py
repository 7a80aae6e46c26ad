"""PMG for ComfyUI: the node pack's entry point.

ComfyUI imports this file as the package ``custom_nodes/<folder>`` and calls
:func:`comfy_entrypoint`, which returns the pack's V3 ``ComfyExtension``.

Importing this file does nothing else (it only names ``WEB_DIRECTORY``, the pack's
browser extension folder): no ComfyUI module, no torch, no model is
touched until ComfyUI calls the entry point, so the repository root can be
imported (by a test runner, a packaging tool or plain ``python -c``) on a machine
without ComfyUI. The pack deliberately exports no ``NODE_CLASS_MAPPINGS``: when a
pack exports both, ComfyUI uses the V1 mappings and never calls the V3 entry point.
"""

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]

# ComfyUI serves every .js file here to the browser (nodes.py reads this name from the
# module, V3 packs included): the history loader's upload button and drop target.
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """Build the PMG ``ComfyExtension`` (called by ComfyUI once, at start-up)."""
    import sys

    if not __package__ or __package__ not in sys.modules:
        # Executed as a loose file rather than imported as ComfyUI's package: the
        # relative imports below cannot work, and saying so beats a bare ImportError.
        raise ImportError(
            "The PMG node pack must be loaded as a package by ComfyUI: place (or symlink) this "
            "folder under ComfyUI's custom_nodes/ directory."
        )
    from .nodes.extension import PMGExtension
    from .pmg_core.startup import warn_missing_requirements

    warn_missing_requirements()
    return PMGExtension()
