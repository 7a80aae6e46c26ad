"""Real-shaped LLM configs, the chat-template requirement, and the benchmarks' CPU modes.

No real-size weights are built here (gigabytes); the shapes are checked on the meta device
against the published parameter counts, and the GPU check runs its ``--dry-run`` on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from pmg_core.errors import ModelLoadError
from pmg_core.llm_placement import parameter_count
from pmg_tools.realsize_llm import (
    SHAPES,
    build_realsize_llm,
    realsize_config,
    require_chat_template,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("shape", "published_billions"),
    [("llama-3.2-1b", 1.24), ("qwen2.5-3b", 3.09), ("llama-3.1-8b", 8.03)],
)
def test_shapes_have_the_published_parameter_counts(shape, published_billions):
    config = realsize_config(shape)
    assert round(parameter_count(config) / 1e9, 2) == published_billions
    assert config.tie_word_embeddings == (shape != "llama-3.1-8b")


def test_unknown_shape_names_the_choices():
    with pytest.raises(ModelLoadError, match="llama-3.2-1b"):
        realsize_config("gpt-5")
    assert set(SHAPES) == {"llama-3.2-1b", "qwen2.5-3b", "llama-3.1-8b"}


def test_a_tokenizer_without_chat_template_is_refused_before_building(tiny_llm, tmp_path):
    plain = tmp_path / "plain-tokenizer"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llm.source, local_files_only=True)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    for template in plain.glob("chat_template.*"):
        template.unlink()
    with pytest.raises(ModelLoadError, match="no chat template"):
        build_realsize_llm("llama-3.1-8b", root=tmp_path / "models", tokenizer_dir=plain)
    assert not (tmp_path / "models").exists(), "nothing is built for a tokenizer that cannot write chat prompts"
    with pytest.raises(ModelLoadError, match="no loadable tokenizer"):
        require_chat_template(tmp_path / "empty")
    require_chat_template(tiny_llm.source)  # SmolLM2's tokenizer has one


def test_the_8b_shape_is_skipped_with_a_reason_when_memory_is_short():
    from benchmarks.bench_llm_shapes import GB, memory_verdict

    assert memory_verdict(17 * GB, 12 * GB, "llama-3.1-8b").startswith("skipped: needs ~18.0 GB")
    assert memory_verdict(17 * GB, 20 * GB, "llama-3.1-8b") is None
    assert "needs ~9.0 GB" in memory_verdict(9 * GB, 8 * GB, "qwen2.5-3b")
    assert memory_verdict(3 * GB, 8 * GB, "llama-3.2-1b") is None


def test_gpu_check_script_parses_and_its_comfy_part_runs_on_the_cpu(tmp_path):
    """The GPU check's ComfyUI part, dry run: tiny LLM and SD stand-in through ComfyUI's model management."""
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "gpu_check.sh")], check=False).returncode == 0
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_llm_comfy", "--device", "cpu", "--dry-run",
         "--new-tokens", "4", "--batch", "2", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "llm_comfy.json").read_text())
    (row,) = report["rows"]
    assert row["placement"] == "cpu" and row["llm_registered_after_use"] is True
    assert row["sd_still_loaded"] is True and row["llm_registered_after_unload"] is False
    assert row["tokens_per_s"] > 0 and row["batched_prompts_per_s"] > 0
    assert "| tiny |" in (tmp_path / "llm_comfy.md").read_text()
