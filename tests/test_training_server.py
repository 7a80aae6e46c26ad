"""The trainer node inside a real ComfyUI server (tiny random SD1.5 + the real SmolLM2).

Mechanics of the integration: the node trains in ComfyUI's executor (inference mode,
model management), saves its adapter into models/pmg/adapters, and the very next prompt's
PMG Soft Prompt Encoder uses that adapter in the full PMG pipeline. The checkpoint's
weights are random, so nothing here says anything about image quality.
"""

from __future__ import annotations

import pytest

from fixtures_comfy import pmg_txt2img_graph
from pmg_core.comfy_client.client import output_files

pytestmark = [pytest.mark.comfy_server, pytest.mark.real_model]

ADAPTER = "server_trained_stickers"


def _training_graph(seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "pmg-tiny-sd15.safetensors"}},
        "3": {"class_type": "PMGLLMLoader", "inputs": {"model": "SmolLM2-135M-Instruct.Q4_1.gguf", "device": "cpu"}},
        "20": {"class_type": "PMGSoftPromptTrainer", "inputs": {
            "history_file": "pmg_stickers/history.jsonl", "llm": ["3", 0], "model": ["1", 0], "clip": ["1", 1],
            "vae": ["1", 2], "steps": 2, "learning_rate": 1e-4, "batch_size": 2, "grad_accum": 1, "resolution": 64,
            "negative_weight": 0.5, "num_image_tokens": 4, "num_prefix": 4, "seed": seed,
            "adapter_name": ADAPTER, "resume": False}},
    }


def test_trained_adapter_is_used_by_the_next_prompt(comfy_server):
    """Mechanics: train 2 steps in the server, then generate with PMG Soft Prompt Encoder on the new adapter."""
    entry = comfy_server.client.run(_training_graph(seed=5), timeout=900)
    trained = comfy_server.base_dir / "models" / "pmg" / "adapters" / f"{ADAPTER}.safetensors"
    assert trained.is_file(), comfy_server.log_tail(40)
    assert output_files(entry), "the trainer shows its loss curve as a preview image"
    run_dir = comfy_server.base_dir / "user" / "pmg_cache" / "training" / ADAPTER
    assert (run_dir / "loss.csv").read_text().count("\n") == 3  # header + 2 steps
    assert f"PMG: trained {ADAPTER} for 2 steps" in comfy_server.log_text()

    graph = pmg_txt2img_graph(seed=31, prefix="pmg/trained_adapter")
    graph["10"] = {"class_type": "PMGSoftPromptEncoder", "inputs": {
        "preference": ["4", 2], "adapter": f"{ADAPTER}.safetensors", "clip": ["1", 1],
        "num_image_tokens": 4, "seed": 0}}
    graph["5"]["inputs"]["soft_prompt"] = ["10", 0]
    # Keep the graph to what this test is about: the scorer has its own tests.
    graph["9"] = {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "pmg/trained_adapter"}}
    entry = comfy_server.client.run(graph, timeout=900)
    images = output_files(entry)
    assert images and comfy_server.client.view(**images[0])[:4] == b"\x89PNG"
