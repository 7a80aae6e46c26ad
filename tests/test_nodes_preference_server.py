"""A preference typed into an API prompt (a string, not a link) through a live ComfyUI.

PMG Scorer used to ignore it (scoring as if nothing were connected) while PMG Conditioning
refused it only when it ran; both now apply one check (``node_support.preference_bundle``)
when the prompt is queued: ``/prompt`` answers 400 naming the node, the input and the fix,
nothing is sampled, and the next good prompt runs.
"""

from __future__ import annotations

import re
import time

import pytest

from fixtures_comfy import pmg_no_llm_graph
from pmg_core.errors import ComfyServerError

pytestmark = pytest.mark.comfy_server


@pytest.fixture(scope="module")
def target_image(comfy_server) -> str:
    from PIL import Image

    path = comfy_server.base_dir / "input" / "pmg_preference_target.png"
    Image.new("RGB", (64, 64), (40, 160, 90)).save(path)
    return path.name


@pytest.mark.parametrize(("node_id", "class_type"), [("9", "PMGScorer"), ("5", "PMGConditioning")])
def test_a_string_preference_is_refused_when_queued_then_a_good_prompt_runs(comfy_server, target_image, node_id,
                                                                            class_type):
    bad = pmg_no_llm_graph(target_image, prefix=f"pmg_pref/bad_{class_type}", seed=5)
    bad[node_id]["inputs"]["preference"] = "ada"
    queue_before = comfy_server.client.queue()
    began = time.monotonic()
    with pytest.raises(ComfyServerError) as info:
        comfy_server.client.queue_prompt(bad)
    assert time.monotonic() - began < 30  # refused at validation: nothing loaded or sampled
    message = str(info.value)
    assert re.search(rf"{class_type}.*The preference input got a str \('ada'\)", message, re.S), message
    assert "connect PMG Preference Extractor's preference output" in message
    assert info.value.status_code == 400
    # ComfyUI repeats a custom validation message once per input validate_inputs names.
    assert {error["node_id"] for error in info.value.node_errors} == {node_id}
    assert comfy_server.client.queue() == queue_before  # nothing reached the queue

    good = pmg_no_llm_graph(target_image, prefix=f"pmg_pref/good_{class_type}", seed=6)
    entry = comfy_server.client.run(good, timeout=300)
    assert entry["status"]["status_str"] == "success"
    (record,) = entry["outputs"]["9"]["pmg_scores"]
    assert record["candidate_alphas"] == [0.33, 0.67]
