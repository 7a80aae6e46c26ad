"""Checkout tooling: what a clone of the repository uses beside the installed library.

Not part of the wheel (``pyproject.toml`` packages ``pmg_core`` only): it reaches the
repository's own files (``workflows/``, ``scripts/``, ``.cache/comfyui``), so it only
works from a clone. It imports ``pmg_core``; ``pmg_core`` never imports it.

- :mod:`.server` — :class:`EmbeddedComfyUI`, the offline default models, ``pmg serve``;
- :mod:`.demo` — ``pmg demo`` (``bash scripts/demo.sh``), with :mod:`.contact_sheet`;
- :mod:`.tiny_models` — tiny random LLM, SD pipeline and CLIP for mechanics tests and demos;
- :mod:`.cli` — the ``./pmg`` command: the library's subcommands plus ``serve`` and ``demo``.
"""
