"""Talk to a real ComfyUI over HTTP: script it (``client``), batch users (``batch``), convert workflows.

Nothing in this package imports ComfyUI. Starting a server is checkout tooling
(``pmg_tools.server``): point the client at any running ComfyUI with the pack installed.
"""

from .client import ComfyClient, execution_error, output_files

__all__ = ["ComfyClient", "execution_error", "output_files"]
