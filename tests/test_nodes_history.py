"""PMGUserHistoryLoader: listing, validation (paths confined to the input folder), fingerprints, execute."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="module")
def loader(pmg_pack):
    return pmg_pack.nodes["PMGUserHistoryLoader"]


def test_history_files_are_listed_one_folder_deep(loader, input_histories, comfy_base):
    (comfy_base.input / "notes.md").write_text("not a history")
    deep = comfy_base.input / "pmg" / "deeper"
    deep.mkdir(exist_ok=True)
    (deep / "hidden.jsonl").write_text("{}")
    options = loader.GET_SCHEMA().inputs[0].options
    assert "pmg/movies.jsonl" in options and "pmg/movies.csv" in options
    assert "notes.md" not in options
    assert "pmg/deeper/hidden.jsonl" not in options


def test_validate_inputs_accepts_a_file_in_the_input_folder(loader, input_histories):
    assert loader.validate_inputs(history_file="pmg/movies.jsonl") is True
    assert loader.validate_inputs(history_file="pmg/movies.jsonl [input]") is True


@pytest.mark.parametrize("name", ["../outside.jsonl", "pmg/../../outside.jsonl", "/etc/passwd", "x.jsonl [output]"])
def test_validate_inputs_rejects_paths_outside_the_input_folder(loader, input_histories, comfy_base, name):
    (comfy_base.base / "outside.jsonl").write_text("{}")
    (comfy_base.output / "x.jsonl").write_text("{}")
    message = loader.validate_inputs(history_file=name)
    assert isinstance(message, str)
    assert "input folder" in message or "outside" in message


def test_validate_inputs_rejects_a_symlink_leading_out(loader, comfy_base):
    (comfy_base.base / "secret.jsonl").write_text("{}")
    link = comfy_base.input / "link.jsonl"
    if not link.exists():
        os.symlink(comfy_base.base / "secret.jsonl", link)
    message = loader.validate_inputs(history_file="link.jsonl")
    assert isinstance(message, str) and "outside" in message


def test_validate_inputs_names_a_missing_file_and_the_fix(loader, input_histories):
    message = loader.validate_inputs(history_file="pmg/nope.jsonl")
    assert isinstance(message, str) and "does not exist" in message and "upload" in message
    empty = loader.validate_inputs(history_file="")
    assert isinstance(empty, str) and "No history file selected" in empty


def test_fingerprint_follows_the_file_content(loader, comfy_base):
    path = comfy_base.input / "fp.jsonl"
    path.write_text('{"a": 1}\n')
    first = loader.fingerprint_inputs(history_file="fp.jsonl", user_id="x")
    assert first == loader.fingerprint_inputs(history_file="fp.jsonl", user_id="y")
    path.write_text('{"a": 2}\n')
    assert loader.fingerprint_inputs(history_file="fp.jsonl") != first
    assert loader.fingerprint_inputs(history_file="../escape.jsonl") == "missing"


def test_fingerprint_follows_the_images_the_history_names(loader, comfy_base):
    """A history image replaced under the same name must re-run the loader (its IMAGE output
    changes), as ComfyUI's LoadImage re-runs when its file changes."""
    from PIL import Image

    folder = comfy_base.input / "fp_images"
    folder.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    Image.new("RGB", (8, 8), "blue").save(folder / "t.png")
    (folder / "h.jsonl").write_text(
        '{"user_id": "u1", "scene": "sticker", "items": [{"item_id": "1", "title": "a", "image_path": "a.png"}], '
        '"target": {"item_id": "2", "title": "t", "image_path": "t.png"}}\n'
    )
    inputs = dict(history_file="fp_images/h.jsonl", format="auto", user_id="u1", max_items=0, scene="auto")
    first = loader.fingerprint_inputs(**inputs)
    assert first == loader.fingerprint_inputs(**inputs)
    Image.new("RGB", (8, 8), "green").save(folder / "a.png")
    second = loader.fingerprint_inputs(**inputs)
    assert second != first, "a changed history image must change the fingerprint"
    Image.new("RGB", (8, 8), "green").save(folder / "t.png")
    assert loader.fingerprint_inputs(**inputs) != second, "a changed target image must change the fingerprint"


def test_execute_loads_the_user_text_and_images(loader, input_histories):
    history, text, images = loader.execute(
        history_file="pmg/movies.jsonl", format="auto", user_id="ada", max_items=0, scene="auto"
    ).args
    assert history.user_id == "ada" and history.scene == "movie"
    assert len(history.items) == 4 and history.target.title == "Starlings of Vega"
    assert "Orbit of Ashes" in text and "Midnight Tram" in text
    # three items have posters: one IMAGE batch at the common size, values in [0, 1]
    assert images.shape == (3, 256, 256, 3)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0


def test_execute_empty_user_takes_the_first_and_scene_overrides(loader, input_histories):
    history, _, _ = loader.execute(
        history_file="pmg/movies.jsonl", format="jsonl", user_id=" ", max_items=2, scene="generic"
    ).args
    assert history.user_id == "ada"
    assert history.scene == "generic"
    assert len(history.items) == 2


def test_execute_without_images_gives_the_white_placeholder(loader, pmg_pack, comfy_base):
    (comfy_base.input / "noimg.jsonl").write_text(
        '{"user_id": "u1", "scene": "movie", "items": [{"item_id": "1", "title": "Alien"}], '
        '"target": {"item_id": "2", "title": "Aliens"}}\n'
    )
    _, _, images = loader.execute(
        history_file="noimg.jsonl", format="auto", user_id="u1", max_items=0, scene="auto"
    ).args
    history_nodes = __import__("comfyui_pmg.nodes.history_nodes", fromlist=["x"])
    assert torch.equal(images, history_nodes.placeholder_image())
    assert history_nodes.is_placeholder(images)
    assert not history_nodes.is_placeholder(torch.ones(2, 64, 64, 3))


def test_execute_unknown_user_is_a_clear_error(loader, pmg_pack, input_histories):
    with pytest.raises(pmg_pack.errors.UnknownUserError, match="ada"):
        loader.execute(history_file="pmg/movies.jsonl", format="auto", user_id="zed", max_items=0, scene="auto")
