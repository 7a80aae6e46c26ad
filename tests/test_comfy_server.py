"""The real ComfyUI server, started by the session fixture, with the pack and the tiny checkpoint.

These tests check mechanics (start-up, pack loading, the stock pipeline, error paths)
on a random-weight checkpoint: the images are noise by design.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from fixtures_comfy import stock_txt2img_graph
from pmg_core.comfy_client.client import output_files
from pmg_tools.server import EmbeddedComfyUI, free_port, install_default_models

pytestmark = pytest.mark.comfy_server
REPO = Path(__file__).resolve().parents[1]


def test_tiny_checkpoint_is_a_random_sd15_in_fp16(tiny_checkpoint):
    """Mechanics: the cached checkpoint has the SD1.5 key layout, fp16 tensors and says what it is."""
    with safe_open(str(tiny_checkpoint), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["pmg_kind"] == "random-weight test checkpoint"
        assert f.get_tensor("model.diffusion_model.input_blocks.0.0.weight").shape[0] == 320
        assert str(f.get_tensor("first_stage_model.taesd_decoder.1.weight").dtype) == "torch.float16"
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)
    assert not any(k.startswith("model.diffusion_model.input_blocks.2.") for k in keys), "one level only"


def test_tiny_checkpoint_build_is_byte_identical(tmp_path, tiny_checkpoint):
    """Mechanics: building again with the same seed gives the same bytes (the cache key relies on it)."""
    out = tmp_path / "again.safetensors"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "scripts.make_tiny_checkpoint", "--out", str(out)],
                   cwd=REPO, check=True, capture_output=True, env=env, timeout=300)

    def digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest(out) == digest(tiny_checkpoint)


def test_server_is_up_with_stock_nodes_and_tries_the_pack(comfy_server):
    stats = comfy_server.client.system_stats()
    assert stats["system"]["comfyui_version"] == "0.3.75"
    info = comfy_server.client.object_info()
    assert {"CheckpointLoaderSimple", "KSampler", "SaveImage"} <= set(info)
    assert (comfy_server.base_dir / "custom_nodes" / "comfyui-pmg").resolve() == REPO
    assert "custom_nodes/comfyui-pmg" in comfy_server.log_text(), "the pack was not even tried"


def test_the_pack_imports_and_registers_pmg_nodes(comfy_server):
    pack = str(comfy_server.base_dir / "custom_nodes" / "comfyui-pmg")
    log_text = comfy_server.log_text()
    assert f"(IMPORT FAILED): {pack}" not in log_text, f"the pack failed to import:\n{comfy_server.log_tail(40)}"
    pmg_nodes = [name for name in comfy_server.client.object_info() if name.startswith("PMG")]
    assert "PMGUserHistoryLoader" in pmg_nodes


def test_default_models_are_visible_to_comfyui(comfy_server):
    schema = comfy_server.client.object_info("CheckpointLoaderSimple")["CheckpointLoaderSimple"]
    assert "pmg-tiny-sd15.safetensors" in schema["input"]["required"]["ckpt_name"][0]
    assert any(p.suffix == ".gguf" for p in (comfy_server.base_dir / "models" / "LLM").iterdir())


def test_default_models_include_the_scorers_tiny_clip(tmp_path, tiny_checkpoint):
    """Mechanics: ``install_default_models`` alone gives PMG Scorer a CLIP folder (MovieLens has no posters)."""
    from pmg_core.metrics import CLIPScorer
    from pmg_tools.tiny_models.clip import TINY_CLIP_NAME

    installed = install_default_models(tmp_path, examples=False)
    assert installed["clip"] == tmp_path / "models" / "pmg" / TINY_CLIP_NAME
    scorer = CLIPScorer.from_folder(installed["clip"])
    assert scorer.image_text(torch.rand(2, 3, 32, 32), ["a movie poster"]).shape == (2, 1)


def test_the_session_server_offers_the_tiny_clip_to_the_scorer(comfy_server):
    schema = comfy_server.client.object_info("PMGScorer")["PMGScorer"]
    assert "pmg-tiny-clip" in schema["input"]["optional"]["clip_model"][1]["options"]


def test_example_histories_are_installed_in_the_input_folder(comfy_server):
    from pmg_core.loaders import list_users, load_user

    inputs = comfy_server.base_dir / "input"
    assert len(list_users(inputs / "pmg" / "movielens.jsonl")) > 900
    sticker_user = load_user(inputs / "pmg_stickers" / "history.jsonl", "sticker_user_000")
    assert sticker_user.images and all(path.is_file() for path in sticker_user.images)


def test_stock_pipeline_runs_and_its_image_is_served(comfy_server):
    """Mechanics: the stock SD1.5 graph runs on the tiny checkpoint; a warm rerun is fast."""
    client = comfy_server.client
    events = []
    entry = client.run(stock_txt2img_graph(seed=1, prefix="pmg_test/stock_a"), timeout=120, on_progress=events.append)
    assert entry["status"]["status_str"] == "success"
    assert any(e["type"] == "progress" for e in events), "no sampler progress on /ws"
    images = output_files(entry)
    assert len(images) == 1 and images[0]["subfolder"] == "pmg_test"
    png = client.view(**images[0])
    assert Image.open(io.BytesIO(png)).size == (64, 64)

    began = time.monotonic()
    warm = client.run(stock_txt2img_graph(seed=2, prefix="pmg_test/stock_b"), timeout=60)
    warm_seconds = time.monotonic() - began
    assert warm["status"]["status_str"] == "success"
    logging.getLogger(__name__).info("warm stock prompt: %.2f s; server start-up: %.1f s", warm_seconds,
                                     comfy_server.server.startup_seconds)
    assert warm_seconds < 10, "a warm 2-step 64x64 prompt should take well under a few seconds"


def test_serve_prints_its_url_and_stops_on_sigterm(tmp_path):
    """`pmg serve` prints the URL once the server answers, and SIGTERM stops it and its child."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmg_tools", "serve", "--port", str(port),
         "--base", str(tmp_path / "base"), "--no-default-models"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == f"http://127.0.0.1:{port}", line or proc.stderr.read()
        import requests

        assert requests.get(line + "/system_stats", timeout=5).status_code == 200
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        with pytest.raises(requests.ConnectionError):
            requests.get(line + "/system_stats", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_start_failure_reports_the_log(tmp_path):
    """A server that dies while starting raises with the end of its log."""
    from pmg_core.errors import ComfyServerError

    server = EmbeddedComfyUI(base_dir=tmp_path / "b", extra_args=("--no-such-flag",), pack_dir=None)
    with pytest.raises(ComfyServerError, match="no-such-flag"):
        server.start(timeout=60)
    assert not server.is_running()


def test_an_interrupted_start_kills_the_server(tmp_path, monkeypatch):
    """Mechanics: Ctrl-C while waiting for the server to answer kills it (it runs in its own session,
    so the Ctrl-C never reaches it, and a context manager's __exit__ does not run when __enter__ raises)."""
    from pmg_tools import server as server_module

    comfy_dir = tmp_path / "fake_comfy"
    comfy_dir.mkdir()
    (comfy_dir / "main.py").write_text("import time\ntime.sleep(120)\n")
    pids = []

    def interrupted(url):
        pids.append(server.pid)
        raise KeyboardInterrupt

    monkeypatch.setattr(server_module, "_answers", interrupted)
    server = EmbeddedComfyUI(comfy_dir=comfy_dir, base_dir=tmp_path / "b", pack_dir=None)
    with pytest.raises(KeyboardInterrupt), server:
        pass
    assert pids and pids[0] is not None, "the fake server was never polled"
    assert not server.is_running()
    with pytest.raises(ProcessLookupError):  # ended and reaped, not left running
        os.kill(pids[0], 0)
