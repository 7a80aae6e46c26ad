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

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from pmg_core.comfy_client.client import ComfyClient
from pmg_tools.server import EmbeddedComfyUI, ensure_tiny_checkpoint, install_default_models


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


def start_comfy_server(base: Path) -> ComfyServerHandle:
    """Another real ComfyUI (CPU, 127.0.0.1, a free port) with the default models in ``base``; stop it with
    ``handle.server.stop()``. Each one holds ~1.5-2 GB of memory."""
    install_default_models(base)
    server = EmbeddedComfyUI(base_dir=base)
    server.start(timeout=120)
    return ComfyServerHandle(url=server.url, base_dir=base, client=ComfyClient(server.url), server=server)


@pytest.fixture(scope="session")
def comfy_server_b(tmp_path_factory, tiny_checkpoint) -> ComfyServerHandle:
    """A second ComfyUI for the session, beside ``comfy_server`` (batches spread over several servers)."""
    handle = start_comfy_server(tmp_path_factory.mktemp("comfy_base_b"))
    try:
        yield handle
    finally:
        handle.server.stop()


def workflow_models(workflow: dict) -> list[dict]:
    """Every ``properties.models`` entry of a UI workflow's nodes, plus its top-level ``models``."""
    found = list(workflow.get("models") or [])
    for node in workflow.get("nodes", []):
        found.extend((node.get("properties") or {}).get("models") or [])
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the end of the ComfyUI log to the report of a failed test that used the server."""
    outcome = yield
    report = outcome.get_result()
    handle = getattr(item, "funcargs", {}).get("comfy_server")
    if report.failed and isinstance(handle, ComfyServerHandle):
        report.sections.append(("ComfyUI server log (last 80 lines)", handle.log_tail(80)))
    second = getattr(item, "funcargs", {}).get("comfy_server_b")
    if report.failed and isinstance(second, ComfyServerHandle):
        report.sections.append(("second ComfyUI server log (last 80 lines)", second.log_tail(80)))


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


def pmg_txt2img_graph(history_file: str = "pmg_stickers/history.jsonl", user_id: str = "", seed: int = 0,
                      prefix: str = "pmg/score", alphas: str = "0.33, 0.67", size: int = 64, steps: int = 2,
                      target_image: str | None = None) -> dict:
    """The PMG pipeline as an API graph on the offline defaults (tiny SD1.5, SmolLM2):
    history → LLM keywords → PMG conditioning (one image per alpha) → KSampler → VAE decode → PMG Scorer.
    The scorer needs a target: ``target_image`` (a file in the input folder, read by LoadImage)."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "pmg-tiny-sd15.safetensors"}},
        "2": {"class_type": "PMGUserHistoryLoader", "inputs": {
            "history_file": history_file, "format": "auto", "user_id": user_id, "max_items": 0, "scene": "auto"}},
        "3": {"class_type": "PMGLLMLoader", "inputs": {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "device": "cpu"}},
        "4": {"class_type": "PMGPreferenceExtractor", "inputs": {
            "history": ["2", 0], "llm": ["3", 0], "n_preference": 8, "n_target": 10, "seed": seed,
            "max_new_tokens": 100, "keep_model_loaded": False}},
        "5": {"class_type": "PMGConditioning", "inputs": {
            "clip": ["1", 1], "preference": ["4", 2], "w_target": 1.0, "w_soft": 1.0, "w_preference": 1.0,
            "alphas": alphas}},
        "6": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": ["5", 2]}},
        "7": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["6", 0],
            "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PMGScorer", "inputs": {
            "images": ["8", 0], "history_images": ["2", 2], "preference": ["4", 2], "alphas": ["5", 3],
            "alpha": 0.67, "lpips_net": "alex", "filename_prefix": prefix}},
    }
    if target_image is not None:
        graph["10"] = {"class_type": "LoadImage", "inputs": {"image": target_image}}
        graph["9"]["inputs"]["target_image"] = ["10", 0]
    return graph


def pmg_no_llm_graph(target_image: str, history_file: str = "pmg_stickers/history.jsonl", user_id: str = "",
                     seed: int = 0, prefix: str = "pmg/score", alphas: str = "0.33, 0.67", size: int = 64,
                     steps: int = 2) -> dict:
    """The PMG pipeline without the LLM (typed target and preference texts): fast, for mechanics tests.
    history (images) → PMG conditioning → KSampler → VAE decode → PMG Scorer, which compares with
    ``target_image`` (a file in the server's input folder, read by a stock LoadImage)."""
    graph = pmg_txt2img_graph(history_file, user_id, seed, prefix, alphas, size, steps, target_image)
    for node_id in ("3", "4"):
        del graph[node_id]
    graph["5"]["inputs"].pop("preference")
    graph["5"]["inputs"].update(target_text="a cute sticker of a cat", preference_text="smiling, hearts, yellow")
    graph["9"]["inputs"].pop("preference")
    return graph


def executions_by_user(url: str, stem: str) -> Counter:
    """How many prompts the server at ``url`` ran per user (its ``/history`` entries), counting the
    graphs whose SaveImage prefix is the batch's ``pmg/<user>/<stem>``."""
    history = requests.get(f"{url}/history", timeout=30).json()
    counts: Counter = Counter()
    for entry in history.values():
        for node in entry["prompt"][2].values():
            prefix = (node.get("inputs") or {}).get("filename_prefix")
            if isinstance(prefix, str) and prefix.startswith("pmg/") and prefix.endswith(f"/{stem}"):
                counts[prefix.split("/")[1]] += 1
    return counts
