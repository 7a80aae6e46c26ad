"""UI ⇄ API workflow conversion (pure; schemas written here in /object_info's shape, no server)."""

from __future__ import annotations

import copy

import pytest

from fixtures_comfy import workflow_models
from pmg_core.comfy_client.workflow_format import api_differences, api_to_ui, node_inputs, ui_to_api
from pmg_core.errors import WorkflowFormatError

# Trimmed copies of ComfyUI 0.3.75's /object_info entries (same keys and option shapes).
OBJECT_INFO = {
    "CheckpointLoaderSimple": {
        "input": {"required": {"ckpt_name": [["tiny.safetensors", "other.safetensors"], {}]}},
        "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"], "output_name": ["MODEL", "CLIP", "VAE"],
        "display_name": "Load Checkpoint",
    },
    "CLIPTextEncode": {
        "input": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
        "input_order": {"required": ["text", "clip"]},
        "output": ["CONDITIONING"], "output_name": ["CONDITIONING"],
        "display_name": "CLIP Text Encode (Prompt)",
    },
    "EmptyLatentImage": {
        "input": {"required": {"width": ["INT", {"default": 512}], "height": ["INT", {"default": 512}],
                               "batch_size": ["INT", {"default": 1}]}},
        "input_order": {"required": ["width", "height", "batch_size"]},
        "output": ["LATENT"], "output_name": ["LATENT"], "display_name": "Empty Latent Image",
    },
    "KSampler": {
        "input": {"required": {
            "model": ["MODEL", {}],
            "seed": ["INT", {"default": 0, "control_after_generate": True}],
            "steps": ["INT", {"default": 20}],
            "cfg": ["FLOAT", {"default": 8.0}],
            "sampler_name": [["euler", "ddim"], {}],
            "scheduler": ["COMBO", {"options": ["normal", "karras"]}],
            "positive": ["CONDITIONING", {}],
            "negative": ["CONDITIONING", {}],
            "latent_image": ["LATENT", {}],
            "denoise": ["FLOAT", {"default": 1.0}],
        }},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                     "positive", "negative", "latent_image", "denoise"]},
        "output": ["LATENT"], "output_name": ["LATENT"], "display_name": "KSampler",
    },
    "Counter": {  # a V3-style node: seed without the explicit flag, an optional socket and widget, forceInput
        "input": {
            "required": {"seed": ["INT", {"default": 0}], "label": ["STRING", {"forceInput": True}]},
            "optional": {"extra": ["LATENT", {}], "note": ["STRING", {"default": ""}]},
            "hidden": {"prompt": "PROMPT"},
        },
        "input_order": {"required": ["seed", "label"], "optional": ["extra", "note"], "hidden": ["prompt"]},
        "output": ["INT"], "output_name": ["count"], "display_name": "Counter",
    },
}


def _node(node_id, node_type, inputs=(), outputs=(), widgets=(), **extra):
    return {"id": node_id, "type": node_type, "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 0,
            "mode": extra.pop("mode", 0), "inputs": list(inputs), "outputs": list(outputs),
            "properties": extra.pop("properties", {}), "widgets_values": list(widgets), **extra}


def _workflow() -> dict:
    """Checkpoint → prompt → KSampler, with a note, a seed control value and a linked widget."""
    return {
        "last_node_id": 6, "last_link_id": 5, "version": 0.4,
        "nodes": [
            _node(1, "CheckpointLoaderSimple", outputs=[
                {"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP", "links": [2]},
                {"name": "VAE", "type": "VAE", "links": None}], widgets=["tiny.safetensors"],
                properties={"models": [{"name": "tiny.safetensors", "url": "https://example.org/tiny",
                                        "directory": "checkpoints"}]}),
            _node(2, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 2}],
                  outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [3, 4]}], widgets=["a cat"],
                  title="Positive"),
            _node(3, "Counter", outputs=[{"name": "count", "type": "INT", "links": [5]}],
                  inputs=[{"name": "label", "type": "STRING", "link": None}], widgets=[7, "randomize", "hi"]),
            _node(4, "EmptyLatentImage",
                  inputs=[{"name": "batch_size", "type": "INT", "widget": {"name": "batch_size"}, "link": 5}],
                  outputs=[{"name": "LATENT", "type": "LATENT", "links": [6]}], widgets=[64, 64, 1]),
            _node(5, "KSampler", inputs=[
                {"name": "model", "type": "MODEL", "link": 1}, {"name": "positive", "type": "CONDITIONING", "link": 3},
                {"name": "negative", "type": "CONDITIONING", "link": 4}, {"name": "latent_image", "type": "LATENT", "link": 6}],
                outputs=[{"name": "LATENT", "type": "LATENT", "links": None}],
                widgets=[42, "fixed", 3, 5.5, "euler", "normal", 1.0]),
            _node(6, "Note", widgets=["change the checkpoint for real images"]),
        ],
        "links": [[1, 1, 0, 5, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 2, 0, 5, 1, "CONDITIONING"],
                  [4, 2, 0, 5, 2, "CONDITIONING"], [5, 3, 0, 4, 0, "INT"], [6, 4, 0, 5, 3, "LATENT"]],
        "groups": [], "config": {}, "extra": {},
    }


EXPECTED_API = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"},
          "_meta": {"title": "Load Checkpoint"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}, "_meta": {"title": "Positive"}},
    "3": {"class_type": "Counter", "inputs": {"seed": 7, "note": "hi"}, "_meta": {"title": "Counter"}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": ["3", 0]},
          "_meta": {"title": "Empty Latent Image"}},
    "5": {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "seed": 42, "steps": 3, "cfg": 5.5, "sampler_name": "euler", "scheduler": "normal",
        "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0], "denoise": 1.0},
        "_meta": {"title": "KSampler"}},
}


def test_widget_order_follows_the_schema_and_skips_control_values():
    """The seed's control value ('fixed'/'randomize') is in widgets_values but never sent; seeds
    without the explicit flag get one too (the front end adds it by name); forceInput is no widget."""
    specs = {spec.name: spec for spec in node_inputs(OBJECT_INFO["Counter"])}
    assert specs["seed"].extra_values == 1 and specs["seed"].is_widget
    assert not specs["label"].is_widget and specs["note"].is_widget
    assert "prompt" not in specs  # hidden inputs are not the user's
    assert ui_to_api(_workflow(), OBJECT_INFO) == EXPECTED_API


def test_notes_are_dropped_and_links_replace_widget_values():
    api = ui_to_api(_workflow(), OBJECT_INFO)
    assert "6" not in api
    assert api["4"]["inputs"]["batch_size"] == ["3", 0]


def test_muted_node_is_dropped_and_bypassed_node_passes_its_input_through():
    workflow = _workflow()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    nodes[3]["mode"] = 2  # muted: the latent falls back to its own widget value
    api = ui_to_api(workflow, OBJECT_INFO)
    assert "3" not in api and api["4"]["inputs"]["batch_size"] == 1

    workflow = _workflow()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    # A second encoder between 2 and the KSampler's negative, bypassed: the KSampler sees node 2.
    nodes[7] = _node(7, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": None}],
                     outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [8]}], widgets=["x"], mode=4)
    nodes[7]["inputs"].append({"name": "conditioning", "type": "CONDITIONING", "link": 7})
    workflow["nodes"].append(nodes[7])
    workflow["links"] = [link for link in workflow["links"] if link[0] != 4]
    workflow["links"] += [[7, 2, 0, 7, 1, "CONDITIONING"], [8, 7, 0, 5, 2, "CONDITIONING"]]
    nodes[5]["inputs"][2]["link"] = 8
    api = ui_to_api(workflow, OBJECT_INFO)
    assert "7" not in api and api["5"]["inputs"]["negative"] == ["2", 0]


def test_reroute_and_primitive_nodes_are_resolved():
    workflow = _workflow()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    # MODEL goes through a Reroute; steps comes from a PrimitiveNode.
    workflow["nodes"].append(_node(8, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
                                   outputs=[{"name": "", "type": "MODEL", "links": [9]}]))
    workflow["nodes"].append(_node(9, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [10]}],
                                   widgets=[9, "fixed"]))
    workflow["links"] = [link for link in workflow["links"] if link[0] != 1]
    workflow["links"] += [[1, 1, 0, 8, 0, "MODEL"], [9, 8, 0, 5, 0, "MODEL"], [10, 9, 0, 5, 4, "INT"]]
    nodes[5]["inputs"][0]["link"] = 9
    nodes[5]["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 10})
    api = ui_to_api(workflow, OBJECT_INFO)
    assert api["5"]["inputs"]["model"] == ["1", 0]
    assert api["5"]["inputs"]["steps"] == 9
    assert "8" not in api and "9" not in api


def test_wrong_widget_count_and_unknown_node_type_raise_clear_errors():
    workflow = _workflow()
    workflow["nodes"][4]["widgets_values"] = [42, 3, 5.5, "euler", "normal", 1.0]  # control value missing
    with pytest.raises(WorkflowFormatError, match=r"Node 5 \(KSampler\) has 6 widget values but its schema has 7"):
        ui_to_api(workflow, OBJECT_INFO)
    workflow = _workflow()
    workflow["nodes"][0]["type"] = "NoSuchLoader"
    with pytest.raises(WorkflowFormatError, match="NoSuchLoader.*install the node pack"):
        ui_to_api(workflow, OBJECT_INFO)
    with pytest.raises(WorkflowFormatError, match="not a UI-format workflow"):
        ui_to_api(EXPECTED_API, OBJECT_INFO)


def test_api_to_ui_round_trips_and_keeps_the_template_layout_notes_and_models():
    template = _workflow()
    changed = copy.deepcopy(EXPECTED_API)
    changed["5"]["inputs"]["steps"] = 8
    ui = api_to_ui(changed, OBJECT_INFO, template=template)
    assert api_differences(changed, ui_to_api(ui, OBJECT_INFO)) == []
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert nodes[6]["type"] == "Note"  # kept from the template
    assert nodes[5]["widgets_values"][:3] == [42, "fixed", 8]
    assert workflow_models(ui) == [{"name": "tiny.safetensors", "url": "https://example.org/tiny", "directory": "checkpoints"}]
    assert ui["last_link_id"] == len(ui["links"]) == 6
    # every link is recorded at both of its ends
    for link_id, source, slot, target, target_slot, _ in ui["links"]:
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id


def test_api_to_ui_without_template_lays_out_columns_by_depth():
    ui = api_to_ui(EXPECTED_API, OBJECT_INFO)
    x = {n["id"]: n["pos"][0] for n in ui["nodes"]}
    assert x[1] < x[2] < x[5] and x[3] < x[4] < x[5]
    assert ui_to_api(ui, OBJECT_INFO) == EXPECTED_API


def test_api_differences_names_the_node_and_input():
    other = copy.deepcopy(EXPECTED_API)
    other["5"]["inputs"]["cfg"] = 7.0
    assert api_differences(EXPECTED_API, other) == ["node 5 (KSampler) input cfg: 5.5 != 7.0"]
