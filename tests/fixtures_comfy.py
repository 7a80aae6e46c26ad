"""Fixtures for tests that need a real ComfyUI server or the tiny default checkpoint.

* ``tiny_checkpoint``: path of the random-weight SD1.5 checkpoint (built once into the
  user cache by ``scripts/make_tiny_checkpoint.py``, ~10 s the first time).
* ``comfy_server``: ONE real ComfyUI per test session (CPU, 127.0.0.1, a free port),
  with its own base folder under pytest's session tmp, the default models installed and
  this pack linked into ``custom_nodes``. It has ``.url``, ``.base_dir``, ``.client``
  (a :class:`ComfyClient`), ``.server`` and ``.log_tail()``; the server is stopped by
  PID at the end. A failing test that used it gets the server log in its report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pmg_core.comfy_client.client import ComfyClient
from pmg_core.comfy_client.server import EmbeddedComfyUI, ensure_tiny_checkpoint, install_default_models


@dataclass
class ComfyServerHandle:
    url: str
    base_dir: Path
    client: ComfyClient
    server: EmbeddedComfyUI

    def log_tail(self, lines: int = 60) -> str:
        return self.server.log_tail(lines)

    def log_text(self) -> str:
        return self.server.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """The cached tiny random SD1.5 checkpoint (safetensors, fp16, ~300 MB)."""
    return ensure_tiny_checkpoint()


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory, tiny_checkpoint) -> ComfyServerHandle:
    base = tmp_path_factory.mktemp("comfy_base")
    install_default_models(base)
    server = EmbeddedComfyUI(base_dir=base)
    server.start(timeout=120)  # raises with the log tail if it cannot start
    handle = ComfyServerHandle(url=server.url, base_dir=base, client=ComfyClient(server.url), server=server)
    try:
        yield handle
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the end of the ComfyUI log to the report of a failed test that used the server."""
    outcome = yield
    report = outcome.get_result()
    handle = getattr(item, "funcargs", {}).get("comfy_server")
    if report.failed and isinstance(handle, ComfyServerHandle):
        report.sections.append(("ComfyUI server log (last 80 lines)", handle.log_tail(80)))


def stock_txt2img_graph(seed: int = 0, prefix: str = "pmg_test/stock", steps: int = 2, size: int = 64,
                        text: str = "a red apple") -> dict:
    """The stock ``CheckpointLoaderSimple → CLIPTextEncode → KSampler → VAEDecode → SaveImage``
    API graph on the tiny checkpoint. Vary ``seed`` or ``prefix``: ComfyUI caches identical prompts."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "pmg-tiny-sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }
