"""Talk to a real ComfyUI over HTTP: script it (``client``), batch users (``batch``), convert workflows.

A batch journals each prompt id before queueing it (``journal``) and takes over a killed
run's prompts on resume (``recovery``); over several servers it runs on Ray (``distributed``:
the driver, ``server_worker``: one actor per server, ``ray_runtime``: the lazily imported Ray).

Nothing in this package imports ComfyUI. Starting a server is checkout tooling
(``pmg_tools.server``): point the client at any running ComfyUI with the pack installed.
"""

from .client import ComfyClient, execution_error, output_files

__all__ = ["ComfyClient", "execution_error", "output_files"]
