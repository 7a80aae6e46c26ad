"""One models folder per kind of the pack's files, each under its own ComfyUI folder key.

Adapters, sticker generators and image-prompt projections each have a folder (``models/pmg/<kind>``
in ComfyUI, ``models/<kind>`` in the pack): a list is that folder's listing, whatever the files'
headers say. The old locations (``.safetensors`` flat in ``models/pmg``, ``models/pmg_generator``)
are still read, each file into its kind's list, with one log line per location saying where to
move the files. The live-server tests drop files into a real ComfyUI's folders and read
``/object_info``, as the front end does.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

import pytest
import requests
import torch
from fixtures_nodes import PACK_NAME, pack_submodule
from safetensors.torch import save_file

from pmg_core.evaluation.judge import FORMAT as JUDGE_FORMAT
from pmg_core.image_prompt import FORMAT as IMAGE_PROMPT_FORMAT
from pmg_core.soft_prompt import FORMAT_NAME as ADAPTER_FORMAT
from pmg_core.sticker_model.weights import FORMAT as GENERATOR_FORMAT

REPO = Path(__file__).resolve().parents[1]
PACK_MODELS = REPO / "models"
LOGGER = f"{PACK_NAME}.nodes.comfy_paths"
# Where each kind's list shows in /object_info: (node id, input name).
LIST_OF = {
    "pmg_adapters": ("PMGSoftPromptEncoder", "adapter"),
    "pmg_generators": ("PMGStickerGeneratorLoader", "generator"),
    "pmg_image_prompts": ("PMGImagePromptEncoder", "projection"),
}
OLD_LOCATION = "where earlier versions of the pack kept them"  # the log line's words
SUBFOLDER = {"pmg_adapters": "adapters", "pmg_generators": "generators", "pmg_image_prompts": "image_prompts"}
FORMAT = {"pmg_adapters": ADAPTER_FORMAT, "pmg_generators": GENERATOR_FORMAT, "pmg_image_prompts": IMAGE_PROMPT_FORMAT}


def write_model_file(path: Path, header_format: str | None) -> Path:
    """A small real safetensors file whose header declares ``header_format`` (listing reads no more)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": header_format} if header_format else None)
    return path


def header_format(path: Path) -> str | None:
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return json.loads(handle.read(size)).get("__metadata__", {}).get("format")


def unique(stem: str) -> str:
    """A file name no other test uses (the session's folders are shared)."""
    return f"{stem}-{uuid.uuid4().hex[:8]}.safetensors"


@pytest.fixture
def dropped():
    """Files a test writes into shared model folders; removed afterwards so no other list sees them."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------- the pack's own files


def test_each_shipped_file_lies_in_its_kinds_folder_and_the_card_names_it(pmg_pack):
    kinds = pack_submodule("nodes.comfy_paths").MODEL_KINDS
    card = (PACK_MODELS / "README.md").read_text(encoding="utf-8")
    assert not list(PACK_MODELS.glob("*.safetensors")), "model files belong in their kind's subfolder of models/"
    shipped = {kind.subfolder: sorted((PACK_MODELS / kind.subfolder).glob("*.safetensors")) for kind in kinds}
    assert all(shipped.values()), f"every kind ships a file: {shipped}"
    for kind in kinds:
        for path in shipped[kind.subfolder]:
            assert header_format(path) == kind.header_format, f"{path} is not a {kind.noun}"
    judges = sorted((PACK_MODELS / "judges").glob("*.safetensors"))
    assert judges and all(header_format(path) == JUDGE_FORMAT for path in judges)
    for path in [*(p for files in shipped.values() for p in files), *judges]:
        assert f"{path.parent.name}/{path.name}" in card, f"models/README.md does not list {path.relative_to(REPO)}"


def test_each_kind_has_its_key_comfyuis_folder_first_and_the_judge_none(pmg_pack):
    import folder_paths

    paths = pack_submodule("nodes.comfy_paths")
    paths.register_model_folders()
    models = pmg_pack.base.models
    for key, subfolder in SUBFOLDER.items():
        # ComfyUI's folder first: the trainer node saves adapters into the first folder of the key.
        assert folder_paths.get_folder_paths(key)[:2] == [str(models / "pmg" / subfolder), str(PACK_MODELS / subfolder)]
    registered = [Path(folder) for folders, _ in folder_paths.folder_names_and_paths.values() for folder in folders]
    assert PACK_MODELS not in registered and PACK_MODELS / "judges" not in registered
    assert folder_paths.get_folder_paths(paths.PMG_FOLDER_KEY) == [str(models / "pmg")]


def test_a_list_is_its_folder_whatever_the_header_says(pmg_pack, dropped, caplog):
    """No header sniffing in the new folders: a file is of the kind of the folder it lies in."""
    paths = pack_submodule("nodes.comfy_paths")
    models = pmg_pack.base.models
    name = unique("judge-in-adapters")  # a judge's header, in the adapters' folder
    dropped.append(write_model_file(models / "pmg" / "adapters" / name, JUDGE_FORMAT))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert name in paths.adapter_choices()
        assert name not in paths.generator_choices() and name not in paths.image_prompt_choices()
    assert paths.resolve_adapter(name) == models / "pmg" / "adapters" / name
    assert OLD_LOCATION not in caplog.text


def test_the_old_flat_folder_is_listed_by_kind_with_one_log_line(pmg_pack, dropped, caplog):
    paths = pack_submodule("nodes.comfy_paths")
    legacy = pmg_pack.base.models / "pmg"
    names = {kind: unique(f"legacy-{kind}") for kind in (*FORMAT, "judge", "foreign")}
    for kind, header in (*FORMAT.items(), ("judge", JUDGE_FORMAT), ("foreign", None)):
        dropped.append(write_model_file(legacy / names[kind], header))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        lists = {"pmg_adapters": paths.adapter_choices(), "pmg_generators": paths.generator_choices(),
                 "pmg_image_prompts": paths.image_prompt_choices()}
        lists_again = paths.adapter_choices()
    for key, listed in lists.items():
        assert [kind for kind, name in names.items() if name in listed] == [key], f"{key}: {listed}"
    assert not ({names["judge"], names["foreign"]} & set(lists_again))
    assert paths.resolve_adapter(names["pmg_adapters"]) == legacy / names["pmg_adapters"]
    assert paths.resolve_generator(names["pmg_generators"]) == legacy / names["pmg_generators"]
    assert paths.resolve_image_prompt(names["pmg_image_prompts"]) == legacy / names["pmg_image_prompts"]
    (line,) = [record.getMessage() for record in caplog.records if str(legacy) in record.getMessage()]
    for key, subfolder in SUBFOLDER.items():
        assert f"{names[key]} -> {legacy / subfolder}" in line
    assert names["judge"] not in line and names["foreign"] not in line


def test_the_old_generator_folder_is_still_listed_and_named_in_the_log(pmg_pack, dropped, caplog):
    paths = pack_submodule("nodes.comfy_paths")
    models = pmg_pack.base.models
    name = unique("old-generator")
    dropped.append(write_model_file(models / "pmg_generator" / name, GENERATOR_FORMAT))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert name in paths.generator_choices()
        assert name not in paths.adapter_choices() and name not in paths.image_prompt_choices()
    assert paths.resolve_generator(name) == models / "pmg_generator" / name
    (line,) = [record.getMessage() for record in caplog.records if str(models / "pmg_generator") in record.getMessage()]
    assert f"{name} -> {models / 'pmg' / 'generators'}" in line


def test_a_missing_file_names_its_kinds_folders(pmg_pack):
    paths = pack_submodule("nodes.comfy_paths")
    with pytest.raises(pmg_pack.errors.ModelLoadError, match="Image prompt projection 'nope.safetensors'") as caught:
        paths.resolve_image_prompt("nope.safetensors")
    assert str(pmg_pack.base.models / "pmg" / "image_prompts") in str(caught.value)
    assert str(PACK_MODELS / "image_prompts") in str(caught.value)


# ---------------------------------------------------------------- through a live ComfyUI


def combo_lists(url: str) -> dict[tuple[str, str], list]:
    """Every combo list of every node in /object_info, by (node id, input name)."""
    info = requests.get(f"{url}/object_info", timeout=60).json()
    lists = {}
    for node_id, node in info.items():
        for section in ("required", "optional"):
            for input_name, spec in (node["input"].get(section) or {}).items():
                options = spec[1].get("options") if len(spec) > 1 and isinstance(spec[1], dict) else None
                if isinstance(spec[0], list):
                    options = spec[0]
                if isinstance(options, list):
                    lists[(node_id, input_name)] = options
    return lists


def where_listed(lists: dict[tuple[str, str], list], name: str) -> list[tuple[str, str]]:
    return [place for place, options in lists.items() if name in options]


@pytest.mark.comfy_server
def test_a_file_in_each_kinds_folder_shows_in_its_nodes_list_and_nowhere_else(comfy_server, dropped):
    models = comfy_server.base_dir / "models"
    names = {key: unique(f"dropped-{subfolder}") for key, subfolder in SUBFOLDER.items()}
    for key, name in names.items():
        dropped.append(write_model_file(models / "pmg" / SUBFOLDER[key] / name, FORMAT[key]))
    lists = combo_lists(comfy_server.url)
    for key, name in names.items():
        assert where_listed(lists, name) == [LIST_OF[key]], f"{name}: {where_listed(lists, name)}"
    log = comfy_server.log_text()
    assert not any(name in log for name in names.values()), "the new folders are no old location"


@pytest.mark.comfy_server
def test_a_file_in_the_old_locations_still_shows_with_one_log_line_each(comfy_server, dropped):
    models = comfy_server.base_dir / "models"
    adapter, generator = unique("old-flat-adapter"), unique("old-generator")
    dropped.append(write_model_file(models / "pmg" / adapter, ADAPTER_FORMAT))
    dropped.append(write_model_file(models / "pmg_generator" / generator, GENERATOR_FORMAT))
    for _ in range(2):  # a second /object_info logs nothing new
        lists = combo_lists(comfy_server.url)
        assert where_listed(lists, adapter) == [LIST_OF["pmg_adapters"]]
        assert where_listed(lists, generator) == [LIST_OF["pmg_generators"]]
    log_lines = comfy_server.log_text().splitlines()
    (flat,) = [line for line in log_lines if adapter in line]
    (old_generators,) = [line for line in log_lines if generator in line]
    assert OLD_LOCATION in flat and f"-> {models / 'pmg' / 'adapters'}" in flat
    assert OLD_LOCATION in old_generators and f"-> {models / 'pmg' / 'generators'}" in old_generators
