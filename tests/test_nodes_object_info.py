"""/object_info of a real ComfyUI server that loaded the pack from custom_nodes (mechanics)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.comfy_server

NODE_IDS = (
    "PMGUserHistoryLoader", "PMGLLMLoader", "PMGPreferenceExtractor",
    "PMGSoftPromptEncoder", "PMGConditioning", "PMGScorer",
)


def test_object_info_lists_every_pmg_node_with_description_and_tooltips(comfy_server):
    info = comfy_server.client.object_info()
    pmg = {name: spec for name, spec in info.items() if name.startswith("PMG")}
    assert set(NODE_IDS) <= set(pmg), comfy_server.log_tail()
    for name, spec in pmg.items():
        assert spec["category"].startswith("PMG/"), name
        assert spec["description"], name
        assert spec["python_module"].startswith("custom_nodes."), name
        inputs = {**spec["input"]["required"], **spec["input"].get("optional", {})}
        assert inputs and all(entry[1].get("tooltip") for entry in inputs.values()), name
        assert spec["output_tooltips"] and all(spec["output_tooltips"]), name
    # the server installed the default LLM into models/LLM: the loader lists it
    assert any(option.endswith(".gguf") for option in pmg["PMGLLMLoader"]["input"]["required"]["model"][1]["options"])
    assert pmg["PMGScorer"]["output_node"] is True


def test_the_pack_loads_through_its_v3_entry_point_without_errors(comfy_server):
    pack_lines = [line for line in comfy_server.log_text().splitlines() if "comfyui-pmg" in line]
    assert pack_lines, "the server log never mentions the pack"
    assert not [line for line in pack_lines if "IMPORT FAILED" in line or "Cannot import" in line], pack_lines
    assert "Error while calling comfy_entrypoint" not in comfy_server.log_text()
    one = comfy_server.client.object_info("PMGConditioning")
    assert list(one) == ["PMGConditioning"]
