"""Every error pmg_core raises on bad input.

Each exception names the problem and the fix, so that a ComfyUI user reading a
node error or a studio reading a batch log knows what to do next.
"""

from __future__ import annotations


class PMGError(Exception):
    """Base class: every error pmg_core raises on purpose derives from it."""


class HistoryFormatError(PMGError):
    """A history file is malformed, not UTF-8, or in an unknown format."""


class EmptyHistoryError(PMGError):
    """A user has no usable behaviours left after filtering."""


class UnknownUserError(PMGError):
    """The requested user id is not in the history file."""


class MissingImageError(PMGError):
    """An item names an image file that does not exist or cannot be read."""


class KeywordParseError(PMGError):
    """The LLM's answer holds no usable keywords."""


class ModelLoadError(PMGError):
    """A model folder or file is missing, incomplete or of an unsupported kind."""


class MissingDependencyError(ModelLoadError):
    """A Python package the pack needs is not installed (the message gives the pip command)."""


class AdapterMismatchError(PMGError):
    """A soft-prompt adapter does not fit the LLM or the text encoder it is used with."""


class EmbeddingValueError(PMGError):
    """An embedding has the wrong shape or holds NaN/inf values."""


class ImageValueError(PMGError, ValueError):
    """An image tensor has the wrong shape or channel count, is out of [0, 1], or holds NaN/inf."""


class InvalidSettingError(PMGError, ValueError):
    """A setting (an alpha list, a weight, a step count, an image size) is malformed or out of range."""


class MissingFileError(PMGError):
    """A file the user named (a history, a checkpoint to fingerprint) does not exist or cannot be read."""


class UnsafePathError(PMGError):
    """A path points outside the folder it is allowed to be read from."""


class TrainingError(PMGError):
    """Training data or training state is unusable."""


class ComfyServerError(PMGError):
    """A ComfyUI server refused or failed a request.

    ``status_code``: the HTTP status the server refused the request with; ``None`` when it
    gave none (unreachable, timed out, or the prompt failed while running).
    ``node_errors``: one ``{"node_id", "node_type", "message"}`` per node the server named.
    """

    def __init__(self, message: str, *, node_errors: list[dict] | None = None, status_code: int | None = None):
        super().__init__(message)
        self.node_errors: list[dict] = list(node_errors or [])
        self.status_code: int | None = status_code

    @property
    def refused(self) -> bool:
        """The server answered and refused the request: the request, not the server, is the problem."""
        return self.status_code is not None


class WorkflowFormatError(PMGError):
    """A ComfyUI workflow file is malformed or does not match the server's node schemas."""


class ServedLLMError(PMGError):
    """An LLM server (Ollama, an OpenAI-compatible one) is down, too slow, or answered unusably."""
