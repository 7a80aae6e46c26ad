"""Convert ComfyUI workflows between the UI format (the editor's file) and the API format (what ``/prompt`` runs).

A *UI workflow* is what the ComfyUI front end saves and loads: nodes with ids, positions,
sizes, sockets and an ordered list of ``widgets_values``; links as
``[link_id, from_node, from_slot, to_node, to_slot, type]``; notes that never run. An
*API workflow* is ``{node_id: {"class_type", "inputs": {name: value | [from_node, slot]},
"_meta": {"title"}}}``. Turning one into the other needs each node's schema, because
``widgets_values`` is positional: the schemas come from the server's ``/object_info``.

The rules follow the front end (``graphToPrompt`` and its widget constructors):

* widget inputs are those of type INT, FLOAT, STRING, BOOLEAN, COMBO (or a list of
  choices) without ``forceInput``; they take values from ``widgets_values`` in schema
  order (``input_order``: required, then optional);
* an INT named ``seed``/``noise_seed``, or any input with ``control_after_generate``,
  is followed by one more value (``"fixed"``, ``"randomize"``...) that is not sent;
  an input with ``image_upload`` (and the audio/video variants) by the upload button's;
* a widget input connected to a link sends the link instead of its value;
* ``Note``, ``MarkdownNote`` and other front-end-only nodes are dropped, ``Reroute``
  nodes are followed through, a ``PrimitiveNode`` sends its value to the inputs it
  feeds; muted nodes (mode 2) are dropped, bypassed nodes (mode 4) pass their input of
  the same type through.

The module is pure (no HTTP, no ComfyUI import): callers pass the ``/object_info`` dict.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import WorkflowFormatError

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = frozenset({"seed", "noise_seed"})
# The front end adds an upload button (one more widget value) for these; not for file_upload.
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
# Nodes that live only in the front end: they never reach /prompt.
FRONTEND_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
UI_VERSION = 0.4


@dataclass(frozen=True)
class InputSpec:
    """One input of a node class, as the front end sees it."""

    name: str
    type: str
    is_widget: bool
    # Defaults of the widgets_values entries after this one that are never sent: the
    # seed's "control after generate" and an upload button.
    extra_defaults: tuple[str, ...] = ()
    default: Any = None

    @property
    def extra_values(self) -> int:
        return len(self.extra_defaults)


def node_inputs(schema: Mapping) -> list[InputSpec]:
    """The inputs of one ``/object_info`` entry, in the order the front end creates them."""
    sections = schema.get("input") or {}
    order = schema.get("input_order") or {}
    specs = []
    for section in ("required", "optional"):
        entries = sections.get(section) or {}
        for name in order.get(section) or list(entries):
            if name in entries:
                specs.append(_input_spec(name, entries[name]))
    return specs


def _input_spec(name: str, entry: Any) -> InputSpec:
    kind = entry[0] if isinstance(entry, (list, tuple)) and entry else entry
    options = entry[1] if isinstance(entry, (list, tuple)) and len(entry) > 1 and isinstance(entry[1], dict) else {}
    type_name = "COMBO" if isinstance(kind, list) else str(kind)
    is_widget = type_name in WIDGET_TYPES and not options.get("forceInput", False)
    extra: tuple[str, ...] = ()
    if is_widget:
        control = options.get("control_after_generate")
        if control if control is not None else (type_name == "INT" and name in SEED_NAMES):
            # "fixed" keeps a shared workflow reproducible; the editor's own default is "randomize".
            extra += ("fixed",)
        if any(options.get(flag) for flag in UPLOAD_FLAGS):
            extra += ("image",)
    default = options.get("default")
    if default is None and isinstance(kind, list) and kind:
        default = kind[0]
    if default is None and type_name == "COMBO" and options.get("options"):
        default = options["options"][0]
    return InputSpec(name, type_name, is_widget, extra, default)


def _schema(object_info: Mapping, node_type: str, node_id: Any) -> Mapping:
    schema = object_info.get(node_type)
    if schema is None:
        raise WorkflowFormatError(
            f"Node {node_id} is of type {node_type!r}, which the server does not know; install the node "
            "pack that provides it (or check the server log for its import error) and fetch /object_info again."
        )
    return schema


# --- UI -> API -------------------------------------------------------------------------------


def ui_to_api(workflow: Mapping, object_info: Mapping) -> dict[str, dict]:
    """The API-format graph that the front end would queue for this UI workflow.

    Raises :class:`WorkflowFormatError` for an unknown node type, a widget list that
    does not match the node's schema, a dangling link, or an unsupported feature
    (subgraphs, group nodes).
    """
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowFormatError(
            "This is not a UI-format workflow (no 'nodes'/'links'); an API-format file is already "
            "{node_id: {class_type, inputs}} and needs no conversion."
        )
    if workflow.get("definitions", {}).get("subgraphs"):
        raise WorkflowFormatError("Workflows with subgraphs are not supported; unpack the subgraph in the editor first.")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    graph: dict[str, dict] = {}
    for node in sorted(workflow["nodes"], key=lambda n: _id_key(n["id"])):
        if node["type"] in FRONTEND_ONLY_TYPES or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        schema = _schema(object_info, node["type"], node["id"])
        values = _widget_values(node, schema)
        linked = {inp["name"]: inp.get("link") for inp in node.get("inputs") or [] if inp.get("link") is not None}
        inputs: dict[str, Any] = {}
        for spec in node_inputs(schema):
            if spec.name in linked:
                source = _resolve_link(linked[spec.name], nodes, links, object_info)
                if source is not None:
                    inputs[spec.name] = source
                    continue
            if spec.is_widget:
                inputs[spec.name] = values[spec.name]
        title = node.get("title") or schema.get("display_name") or node["type"]
        graph[str(node["id"])] = {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}
    return graph


def _id_key(node_id: Any) -> tuple[int, Any]:
    text = str(node_id)
    return (0, int(text)) if text.isdigit() else (1, text)


def _widget_values(node: Mapping, schema: Mapping) -> dict[str, Any]:
    """Map the node's positional ``widgets_values`` onto its widget input names."""
    specs = [spec for spec in node_inputs(schema) if spec.is_widget]
    raw = node.get("widgets_values")
    if raw is None:
        raw = []
    if isinstance(raw, dict):  # some nodes save widgets by name
        missing = [spec.name for spec in specs if spec.name not in raw]
        if missing:
            raise WorkflowFormatError(f"Node {node['id']} ({node['type']}) has no value for {missing}; re-save it in the editor.")
        return {spec.name: raw[spec.name] for spec in specs}
    expected = sum(1 + spec.extra_values for spec in specs)
    if len(raw) != expected:
        names = [spec.name + (" (+control)" if spec.extra_values else "") for spec in specs]
        raise WorkflowFormatError(
            f"Node {node['id']} ({node['type']}) has {len(raw)} widget values but its schema has {expected} "
            f"({', '.join(names) or 'none'}); the node pack changed since the workflow was saved: "
            "open it in the editor, check the node's widgets and save it again."
        )
    values, position = {}, 0
    for spec in specs:
        values[spec.name] = raw[position]
        position += 1 + spec.extra_values
    return values


def _resolve_link(link_id: int, nodes: Mapping, links: Mapping, object_info: Mapping, depth: int = 0) -> Any:
    """``[source_id, slot]`` for a link, or a literal (a PrimitiveNode), or None (muted source)."""
    if depth > 100:
        raise WorkflowFormatError(f"Link {link_id} loops through Reroute/bypassed nodes; remove the cycle.")
    link = links.get(link_id)
    if link is None:
        raise WorkflowFormatError(f"Link {link_id} is used by a node but missing from 'links'; re-save the workflow.")
    _, source_id, source_slot = link[0], link[1], link[2]
    source = nodes.get(source_id)
    if source is None:
        raise WorkflowFormatError(f"Link {link_id} starts at node {source_id}, which does not exist; re-save the workflow.")
    if source["type"] == "Reroute":
        upstream = (source.get("inputs") or [{}])[0].get("link")
        return None if upstream is None else _resolve_link(upstream, nodes, links, object_info, depth + 1)
    if source["type"] == "PrimitiveNode":
        return (source.get("widgets_values") or [None])[0]
    mode = source.get("mode", MODE_ALWAYS)
    if mode == MODE_NEVER:
        return None
    if mode == MODE_BYPASS:
        upstream = _bypass_input(source, int(source_slot), link[5] if len(link) > 5 else None)
        return None if upstream is None else _resolve_link(upstream, nodes, links, object_info, depth + 1)
    return [str(source_id), int(source_slot)]


def _bypass_input(node: Mapping, slot: int, link_type: Any) -> int | None:
    """The link feeding the input a bypassed node passes through to output ``slot``."""
    inputs = [inp for inp in node.get("inputs") or [] if inp.get("link") is not None]
    outputs = node.get("outputs") or []
    wanted = outputs[slot]["type"] if slot < len(outputs) else link_type
    same_slot = (node.get("inputs") or [])[slot] if slot < len(node.get("inputs") or []) else None
    if same_slot is not None and same_slot.get("type") == wanted and same_slot.get("link") is not None:
        return same_slot["link"]
    for inp in inputs:
        if inp.get("type") == wanted:
            return inp["link"]
    return None


# --- API -> UI -------------------------------------------------------------------------------


def api_to_ui(graph: Mapping, object_info: Mapping, template: Mapping | None = None) -> dict:
    """A UI workflow that runs ``graph``, laid out in columns by depth.

    With ``template`` (an earlier UI version of the same workflow), nodes whose id and
    type match keep its position, size, title, colours and properties (``models``
    included), its front-end-only nodes (notes) are kept, as are its groups and
    ``extra``; widget values and links always come from ``graph``.
    """
    template_nodes = {str(n["id"]): n for n in (template or {}).get("nodes", [])}
    ids = sorted(graph, key=_id_key)
    depth = _depths(graph)
    order = {node_id: i for i, node_id in enumerate(sorted(ids, key=lambda i: (depth[i], _id_key(i))))}

    ui_nodes: dict[str, dict] = {}
    column_fill: dict[int, float] = {}
    for node_id in ids:
        entry = graph[node_id]
        old = template_nodes.get(node_id)
        old = old if old is not None and old.get("type") == entry["class_type"] else None
        node = _ui_node(node_id, entry, _schema(object_info, entry["class_type"], node_id), old)
        col = depth[node_id]
        y = column_fill.get(col, 0.0)  # the next free place in the node's depth column
        column_fill[col] = y + node["size"][1] + 60
        node.update(pos=[col * 380, y], order=order[node_id])
        if old:
            for key in ("pos", "size", "flags", "properties", "color", "bgcolor"):
                if key in old:
                    node[key] = copy.deepcopy(old[key])
        ui_nodes[node_id] = node
    links = _link_ui_nodes(graph, ids, ui_nodes)
    return _ui_workflow(list(ui_nodes.values()), links, template)


def _ui_node(node_id: str, entry: Mapping, schema: Mapping, old: Mapping | None) -> dict:
    """One API node as a UI node (its position and order are set by the caller): sockets, widgets, outputs."""
    sockets, widgets_values = _sockets_and_widgets(schema, entry.get("inputs") or {}, old)
    outputs = [
        {"name": name, "type": kind, "slot_index": slot, "links": []}
        for slot, (kind, name) in enumerate(zip(schema.get("output", []), schema.get("output_name", []), strict=True))
    ]
    height = 46 + 24 * max(len(sockets), len(outputs)) + 26 * len(widgets_values)
    node = {
        "id": _ui_id(node_id),
        "type": entry["class_type"],
        "pos": None,
        "size": [320, height],
        "flags": {},
        "order": None,
        "mode": MODE_ALWAYS,
        "inputs": sockets,
        "outputs": outputs,
        "properties": {"Node name for S&R": entry["class_type"]},
        "widgets_values": widgets_values,
    }
    title = (entry.get("_meta") or {}).get("title")
    if title and title != schema.get("display_name", entry["class_type"]):
        node["title"] = title
    return node


def _sockets_and_widgets(schema: Mapping, given: Mapping, old: Mapping | None) -> tuple[list[dict], list]:
    """A node's input sockets (links and widgets converted to inputs) and its ``widgets_values``.

    A widget given a link becomes a socket and keeps the template's value (else the default) in
    ``widgets_values``, where the editor still expects one.
    """
    specs = node_inputs(schema)
    old_values = _safe_widget_values(old, schema) if old else {}
    sockets, widgets_values = [], []
    for spec in specs:
        value = given.get(spec.name)
        is_link = _is_link(value) if spec.is_widget else spec.name in given
        if not spec.is_widget or is_link:
            socket = {"name": spec.name, "type": spec.type, "link": None}
            if spec.is_widget:
                socket["widget"] = {"name": spec.name}
            if spec.is_widget or spec.name in given or spec in _required(schema, specs):
                sockets.append(socket)
        if spec.is_widget:
            if is_link or spec.name not in given:
                value = old_values.get(spec.name, spec.default)
            widgets_values.append(value)
            if spec.extra_values:
                widgets_values.extend(_extra_values(old, spec, schema))
    return sockets, widgets_values


def _link_ui_nodes(graph: Mapping, ids: list[str], ui_nodes: dict[str, dict]) -> list[list]:
    """The UI links of the graph's connections, numbered in a stable order; sockets and outputs point at them."""
    links: list[list] = []
    for node_id in ids:
        target = ui_nodes[node_id]
        for socket in target["inputs"]:
            value = (graph[node_id].get("inputs") or {}).get(socket["name"])
            if not _is_link(value):
                continue
            source_id, slot = str(value[0]), int(value[1])
            if source_id not in ui_nodes:
                raise WorkflowFormatError(
                    f"Node {node_id} input {socket['name']!r} links to node {source_id}, which is not in the graph; "
                    "reconnect the input in the editor or remove the link, then export again."
                )
            link_id = len(links) + 1
            kind = ui_nodes[source_id]["outputs"][slot]["type"]
            links.append([link_id, ui_nodes[source_id]["id"], slot, target["id"], target["inputs"].index(socket), kind])
            socket["link"] = link_id
            ui_nodes[source_id]["outputs"][slot]["links"].append(link_id)
    for node in ui_nodes.values():
        for output in node["outputs"]:
            output["links"] = output["links"] or None
    return links


def _ui_workflow(nodes: list[dict], links: list[list], template: Mapping | None) -> dict:
    """The UI workflow file around ``nodes`` and ``links``: the template's notes, groups, extra and id kept."""
    kept_types = FRONTEND_ONLY_TYPES - {"Reroute", "PrimitiveNode"}
    kept = [copy.deepcopy(n) for n in (template or {}).get("nodes", []) if n.get("type") in kept_types]
    for note in kept:
        note["order"] = len(nodes)
        nodes.append(note)
    workflow = {
        "last_node_id": max((_id_key(n["id"])[1] for n in nodes if isinstance(n["id"], int)), default=0),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": copy.deepcopy((template or {}).get("groups", [])),
        "config": {},
        "extra": copy.deepcopy((template or {}).get("extra", {"ds": {"scale": 1.0, "offset": [0, 0]}})),
        "version": UI_VERSION,
    }
    if template and "id" in template:
        workflow = {"id": template["id"], "revision": template.get("revision", 0), **workflow}
    return workflow


def _required(schema: Mapping, specs: list[InputSpec]) -> list[InputSpec]:
    required = set((schema.get("input") or {}).get("required") or {})
    return [spec for spec in specs if spec.name in required]


def _safe_widget_values(node: Mapping, schema: Mapping) -> dict[str, Any]:
    try:
        return _widget_values(node, schema)
    except WorkflowFormatError:
        return {}  # an out-of-date template only loses its widget values


def _extra_values(old: Mapping | None, spec: InputSpec, schema: Mapping) -> list[Any]:
    """The not-sent values after a widget (seed control, upload button), kept from the template."""
    if old and isinstance(old.get("widgets_values"), list):
        position = 0
        for other in node_inputs(schema):
            if not other.is_widget:
                continue
            if other.name == spec.name:
                kept = old["widgets_values"][position + 1 : position + 1 + spec.extra_values]
                if len(kept) == spec.extra_values:
                    return list(kept)
                break
            position += 1 + other.extra_values
    return list(spec.extra_defaults)


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _ui_id(node_id: str) -> int | str:
    return int(node_id) if node_id.isdigit() else node_id


def _depths(graph: Mapping) -> dict[str, int]:
    """Longest distance from a source node, for a left-to-right layout."""
    memo: dict[str, int] = {}

    def visit(node_id: str, trail: frozenset) -> int:
        if node_id in memo:
            return memo[node_id]
        if node_id in trail:
            raise WorkflowFormatError(f"The graph has a cycle through node {node_id}; ComfyUI cannot run it.")
        parents = [str(v[0]) for v in (graph[node_id].get("inputs") or {}).values() if _is_link(v) and str(v[0]) in graph]
        memo[node_id] = 1 + max((visit(p, trail | {node_id}) for p in parents), default=-1)
        return memo[node_id]

    return {node_id: visit(node_id, frozenset()) for node_id in graph}


# --- comparing ---------------------------------------------------------------------------------


def normalise_api(graph: Mapping, keep_meta: bool = True) -> dict[str, dict]:
    """An API graph with string ids, list links and (optionally) no ``_meta``, for comparison."""
    result = {}
    for node_id, entry in graph.items():
        # Widget values are scalars, so a two-item list is always a link.
        inputs = {
            name: [str(value[0]), int(value[1])] if isinstance(value, (list, tuple)) and len(value) == 2 else value
            for name, value in (entry.get("inputs") or {}).items()
        }
        node = {"inputs": inputs, "class_type": entry["class_type"]}
        if keep_meta and "_meta" in entry:
            node["_meta"] = dict(entry["_meta"])
        result[str(node_id)] = node
    return result


def api_differences(expected: Mapping, actual: Mapping, keep_meta: bool = True) -> list[str]:
    """Human-readable differences between two API graphs (empty when they are the same)."""
    a, b = normalise_api(expected, keep_meta), normalise_api(actual, keep_meta)
    problems = []
    for node_id in sorted(set(a) | set(b), key=_id_key):
        if node_id not in a:
            problems.append(f"node {node_id} ({b[node_id]['class_type']}) only in the second graph")
        elif node_id not in b:
            problems.append(f"node {node_id} ({a[node_id]['class_type']}) only in the first graph")
        elif a[node_id] != b[node_id]:
            for key in sorted(set(a[node_id]["inputs"]) | set(b[node_id]["inputs"])):
                left, right = a[node_id]["inputs"].get(key, "<absent>"), b[node_id]["inputs"].get(key, "<absent>")
                if left != right:
                    problems.append(f"node {node_id} ({a[node_id]['class_type']}) input {key}: {left!r} != {right!r}")
            for key in ("class_type", "_meta"):
                if a[node_id].get(key) != b[node_id].get(key):
                    problems.append(f"node {node_id} {key}: {a[node_id].get(key)!r} != {b[node_id].get(key)!r}")
    return problems

