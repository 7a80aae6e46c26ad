"""Talk to a real ComfyUI over HTTP: run one (``server``), script it (``client``), batch users (``batch``).

Nothing in this package imports ComfyUI; the server runs as a child process.
"""

from .client import ComfyClient, execution_error, output_files
from .server import EmbeddedComfyUI, ensure_tiny_checkpoint, free_port, install_default_models

__all__ = [
    "ComfyClient",
    "EmbeddedComfyUI",
    "ensure_tiny_checkpoint",
    "execution_error",
    "free_port",
    "install_default_models",
    "output_files",
]
