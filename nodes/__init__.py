"""ComfyUI V3 nodes of the PMG pack: thin wrappers that adapt ComfyUI objects to ``pmg_core``.

Each node module defines ``NODES: list[type[io.ComfyNode]]``; :mod:`.extension`
gathers them into the pack's ``ComfyExtension``. The modules import ComfyUI
(``comfy_api``, ``folder_paths``, ``comfy.*``) and the library relatively
(``from ..pmg_core import ...``), so they only load inside the pack package.
This package is never imported as a top-level ``nodes``: that name is ComfyUI's own.
"""
