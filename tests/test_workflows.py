"""The shareable workflows on a real ComfyUI: in sync, loadable, runnable, cached, and failing cleanly.

The movie workflows ship for the checkpoints users have (SD1.5 at 512 px, SDXL at 1024 px);
the tests put the offline tiny checkpoint (``pmg-tiny-sd15``, random weights) in through
``NODE.INPUT`` overrides, as ``pmg queue --set`` does, at 64 px and 4 steps. Mechanics only
for those: images are noise; the keywords come from the real SmolLM2-135M. What is checked
is the wiring: UI ⇄ API sync, what the shared files say, the stock KSampler consuming PMG
conditioning (one image per α), the score records, LLM work reused on a repeat, bad inputs
reported per node, and the batch client's JSONL.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

from pmg_core.comfy_client.batch import parse_overrides, queue_users, read_results
from fixtures_comfy import workflow_models
from pmg_core.comfy_client.workflow_format import api_differences, ui_to_api
from pmg_core.errors import ComfyServerError

pytestmark = pytest.mark.comfy_server
REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
NAMES = ("pmg_movie_poster", "pmg_movie_poster_sdxl", "pmg_sticker", "pmg_alpha_sweep", "pmg_served_keywords")
# The checkpoint each movie workflow ships for, its size and its least number of steps.
MOVIE_WORKFLOWS = {"pmg_movie_poster": ("v1-5-pruned-emaonly.safetensors", 512, 20),
                   "pmg_movie_poster_sdxl": ("sd_xl_base_1.0.safetensors", 1024, 20)}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Node ids shared by the three workflows (see workflows/api/*.json).
HISTORY, LLM, EXTRACTOR, SOFT, ALPHAS, CONDITIONING, LATENT, SAMPLER, DECODE, SCORER, SAVE = (
    "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12")
BEFORE_SAMPLER = {"1", HISTORY, LLM, EXTRACTOR, SOFT, ALPHAS, CONDITIONING}
# What the tests run the movie workflows with, written as `pmg queue --set` takes it.
TINY_SET = ["1.ckpt_name=pmg-tiny-sd15.safetensors", "8.width=64", "8.height=64", "9.steps=4"]


def load(name: str, api: bool = True) -> dict:
    return json.loads((WORKFLOWS / ("api" if api else "") / f"{name}.json").read_text(encoding="utf-8"))


def load_tiny(name: str = "pmg_movie_poster") -> dict:
    """A movie workflow's API copy with the tiny checkpoint, 64 px and 4 steps set in."""
    graph = load(name)
    for target, value in parse_overrides(TINY_SET).items():
        node, input_name = target.split(".", 1)
        assert input_name in graph[node]["inputs"], target  # the override replaces what the shared file sets
        graph[node]["inputs"][input_name] = value
    return graph


class Timeline:
    """One prompt's websocket events with arrival times: which nodes ran, which were cached, how long each took."""

    def __init__(self, events: list[tuple[float, dict]], entry: dict, graph: dict) -> None:
        self.events, self.entry, self.graph = events, entry, graph

    def cached(self) -> set[str]:
        cached_events = [e["data"] for _, e in self.events if e["type"] == "execution_cached"]
        return {str(n) for data in cached_events for n in data.get("nodes", [])}

    def executed(self) -> set[str]:
        return set(self.graph) - self.cached()  # a successful prompt runs every node it does not serve from cache

    def seconds(self, node: str) -> float:
        """From ``executing`` of ``node`` to the next ``executing`` event."""
        starts = [(t, e["data"].get("node")) for t, e in self.events if e["type"] == "executing"]
        for (t, current), (t_next, _) in zip(starts, starts[1:], strict=False):  # pairs: each start with the next
            if current == node:
                return t_next - t
        raise AssertionError(f"node {node} did not execute; events: {[e['type'] for _, e in self.events]}")


def run(client, graph: dict, timeout: float = 300) -> tuple[dict, Timeline]:
    """Queue ``graph`` and wait for it; the client opens its socket first, so no early event is lost."""
    events: list[tuple[float, dict]] = []
    entry = client.run(graph, timeout=timeout, on_progress=lambda event: events.append((time.monotonic(), event)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    return entry, Timeline(events, entry, graph)


def node_output(entry: dict, node: str) -> dict:
    return (entry.get("outputs") or {}).get(node) or {}


def fetch_png(client, record: dict) -> Image.Image:
    data = client.view(record["filename"], record.get("subfolder", ""), record.get("type", "output"))
    assert data.startswith(PNG_MAGIC)
    return Image.open(io.BytesIO(data))


@pytest.fixture(scope="module")
def pmg_server(comfy_server):
    """The session server; ``install_default_models`` put the scorer's tiny random CLIP in models/pmg."""
    return comfy_server


@pytest.fixture(scope="module")
def object_info(pmg_server) -> dict:
    info = pmg_server.client.object_info()
    missing = [n for n in ("PMGUserHistoryLoader", "PMGScorer", "PMGConditioning") if n not in info]
    assert not missing, f"the pack did not load {missing}:\n{pmg_server.log_tail()}"
    return info


@pytest.fixture(scope="module")
def movie_run(pmg_server, object_info):
    """The movie workflow for MovieLens user 1, run once (cold: nothing of this user cached)."""
    return run(pmg_server.client, load_tiny())


# --- the files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_converts_to_its_api_copy(name, object_info):
    """The committed UI file and API copy describe the same graph (widget order from the live /object_info)."""
    assert api_differences(load(name), ui_to_api(load(name, api=False), object_info)) == []


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_has_what_the_front_end_needs(name, pmg_server):
    """Front-end schema essentials, consistent links, a note on real checkpoints, and the model files it lists exist."""
    ui = load(name, api=False)
    assert isinstance(ui["version"], float) and ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for node in ui["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "properties"} <= set(node)
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        assert link_id in nodes[source]["outputs"][slot]["links"]
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[source]["outputs"][slot]["type"] == kind
    notes = [n for n in ui["nodes"] if n["type"] in ("Note", "MarkdownNote")]
    # The note says which model the graph runs on: an SD checkpoint, or the pack's sticker generator.
    on_checkpoint = any(n["type"] == "CheckpointLoaderSimple" for n in ui["nodes"])
    model_word = "checkpoint" if on_checkpoint else "pmg-sticker-generator.safetensors"
    assert notes and any(model_word in n["widgets_values"][0].lower() for n in notes)

    # The front end checks the listed models that a widget selects against /experiment/models/<folder>
    # and its "Missing Models" dialog offers to download the others (huggingface.co, .safetensors only).
    # (That listing skips .gguf files, so the LLM is documented in the note instead of being listed.)
    models = workflow_models(ui)
    expected = [MOVIE_WORKFLOWS[name][0]] if name in MOVIE_WORKFLOWS else []
    assert [m["name"] for m in models] == expected
    folders = [entry["name"] for entry in requests.get(f"{pmg_server.url}/experiment/models", timeout=10).json()]
    for model in models:
        assert model["url"].startswith("https://huggingface.co/") and model["url"].split("?")[0].endswith(model["name"])
        assert model["name"].endswith(".safetensors") and model["directory"] in folders
        owner = next(n for n in ui["nodes"] if model in (n["properties"].get("models") or []))
        assert owner["widgets_values"] == [model["name"]], "the front end checks only selected models"
    assert any("SmolLM2" in n["widgets_values"][0] and "models/LLM" in n["widgets_values"][0] for n in notes)


@pytest.mark.parametrize("name", list(MOVIE_WORKFLOWS))
def test_shared_movie_workflows_are_set_up_for_real_checkpoints(name):
    """What a user opens: the real checkpoint's name, its resolution, enough steps, no random parts."""
    checkpoint, size, least_steps = MOVIE_WORKFLOWS[name]
    graph = load(name)
    assert graph["1"]["inputs"]["ckpt_name"] == checkpoint
    assert graph[LATENT]["inputs"]["width"] == graph[LATENT]["inputs"]["height"] == size
    assert graph[SAMPLER]["inputs"]["steps"] >= least_steps
    assert graph[SOFT]["inputs"]["adapter"] == "none (keywords only)"  # no adapter: no soft tokens, never random ones
    assert graph[SCORER]["inputs"]["clip_model"] == "none"
    assert "pmg-tiny" not in json.dumps(graph) and "pmg-tiny" not in json.dumps(load(name, api=False))


def test_sync_script_regenerates_each_format_from_the_other_byte_for_byte(pmg_server, tmp_path):
    """``scripts.workflow_sync --write api`` rebuilds the committed API copies from the UI files, and ``--write ui``
    rebuilds the committed UI files from the API copies (layout, notes and model lists kept from the old UI file)."""
    folder = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS, folder)
    for path in (folder / "api").glob("*.json"):
        path.unlink()
    sync = [sys.executable, "-m", "scripts.workflow_sync", "--url", pmg_server.url, "--dir", str(folder)]
    subprocess.run([*sync, "--write", "api", *NAMES], cwd=REPO, check=True, capture_output=True, timeout=120)
    for name in NAMES:
        assert (folder / "api" / f"{name}.json").read_bytes() == (WORKFLOWS / "api" / f"{name}.json").read_bytes()
        ui = folder / f"{name}.json"
        for size in (64, 512, 1024):
            ui.write_text(ui.read_text().replace(f'"widgets_values": [\n        {size},', '"widgets_values": [\n        32,'))
    subprocess.run([*sync, "--write", "ui", *NAMES], cwd=REPO, check=True, capture_output=True, timeout=120)
    for name in NAMES:  # the API copy wins: the committed sizes again
        assert (folder / f"{name}.json").read_bytes() == (WORKFLOWS / f"{name}.json").read_bytes()

    # An edited API copy makes the check fail and name the difference.
    api = json.loads((folder / "api" / "pmg_sticker.json").read_text())
    committed_steps = api[SAMPLER]["inputs"]["steps"]
    api[SAMPLER]["inputs"]["steps"] = committed_steps + 1
    (folder / "api" / "pmg_sticker.json").write_text(json.dumps(api))
    checked = subprocess.run([*sync, "pmg_sticker"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1 and f"input steps: {committed_steps + 1} != {committed_steps}" in checked.stderr


def test_pack_serves_the_ui_workflows_as_templates(pmg_server):
    """ComfyUI lists workflows/*.json of the pack in its template browser (not the API copies)."""
    listing = requests.get(f"{pmg_server.url}/workflow_templates", timeout=10).json()
    pack = next(key for key in listing if "pmg" in key.lower())
    assert sorted(listing[pack]) == sorted(NAMES)
    served = requests.get(f"{pmg_server.url}/api/workflow_templates/{pack}/pmg_sticker.json", timeout=10)
    assert served.status_code == 200 and served.json() == load("pmg_sticker", api=False)


# --- running them ----------------------------------------------------------------------------------


def test_movie_workflow_gives_one_image_per_alpha_and_a_score_record(pmg_server, movie_run):
    """The stock KSampler consumes PMGConditioning: an α list of 3 gives 3 images; the scorer picks one and saves its report."""
    entry, _ = movie_run
    client = pmg_server.client
    candidates = node_output(entry, SAVE)["images"]
    assert len(candidates) == 3
    assert {fetch_png(client, c).size for c in candidates} == {(64, 64)}

    (keywords,) = node_output(entry, EXTRACTOR)["pmg_keywords"]
    assert keywords["user_id"] == "1" and keywords["preference_keywords"]
    (scores,) = node_output(entry, SCORER)["pmg_scores"]
    assert scores["candidate_alphas"] == [0.33, 0.5, 0.67]
    assert len(scores["candidates"]) == 3 and 0 <= scores["selected"] < 3
    assert scores["selected_alpha"] == scores["candidate_alphas"][scores["selected"]]
    assert node_output(entry, SCORER)["images"] == [scores["selected_image"]]
    selected = fetch_png(client, scores["selected_image"])
    assert selected.size == (64, 64)

    report = scores["report_file"]
    on_disk = json.loads((pmg_server.base_dir / "output" / report["subfolder"] / report["filename"]).read_text())
    assert on_disk["candidates"] == scores["candidates"] and on_disk["selected"] == scores["selected"]


def test_movie_workflow_conditions_on_keywords_only_without_an_adapter(movie_run):
    """The shared adapter choice gives no soft tokens: the LLM is not run for them, the condition has no soft part."""
    entry, _ = movie_run
    (soft,) = node_output(entry, SOFT)["pmg_soft_prompt"]
    assert soft == {"user_id": "1", "adapter": "none (keywords only)", "num_image_tokens": 0}


def test_sdxl_workflow_runs_with_the_tiny_checkpoint_set_in(pmg_server, movie_run):
    """The SDXL file is the same pipeline: with the --set overrides it runs on the offline checkpoint."""
    entry, _ = run(pmg_server.client, load_tiny("pmg_movie_poster_sdxl"))
    candidates = node_output(entry, SAVE)["images"]
    assert len(candidates) == 3 and {fetch_png(pmg_server.client, c).size for c in candidates} == {(64, 64)}


def test_a_workflow_saved_with_the_old_untrained_choice_runs_keywords_only_and_says_so(pmg_server, movie_run):
    """'none (untrained)' (the adapter choice before the rename) is read as keywords only, with a log line."""
    graph = load_tiny()
    graph[SOFT]["inputs"]["adapter"] = "none (untrained)"
    entry, _ = run(pmg_server.client, graph)
    (soft,) = node_output(entry, SOFT)["pmg_soft_prompt"]
    assert soft["adapter"] == "none (keywords only)" and soft["num_image_tokens"] == 0
    assert "now means 'none (keywords only)'" in pmg_server.log_text()


def test_sticker_workflow_scores_against_the_real_history_images(pmg_server, object_info):
    """Sticker items have real Twemoji images: the scorer measures the candidates against them (LPIPS, SSIM),
    and against the target sticker's own image, which the workflow does not wire (the scorer takes it from the history)."""
    entry, _ = run(pmg_server.client, load("pmg_sticker"))
    assert len(node_output(entry, SAVE)["images"]) == 3
    (scores,) = node_output(entry, SCORER)["pmg_scores"]
    assert scores["user_id"] == "sticker_user_000"
    assert all(c["lpips_history"] is not None and c["ssim_history"] is not None for c in scores["candidates"])
    assert scores["target_image"].startswith("history target item: pmg_stickers/images/")
    assert all(c["lpips_target"] is not None and c["ssim_target"] is not None for c in scores["candidates"])
    assert_upscaled_selection(pmg_server.client, entry, scores, "15")


def assert_upscaled_selection(client, entry: dict, scores: dict, save_node: str) -> None:
    """The sticker workflows end in the stock upscaler: the selected 64 px sticker, 4x by Real-ESRGAN Compact."""
    (record,) = node_output(entry, save_node)["images"]
    big = fetch_png(client, record).convert("RGB")
    small = fetch_png(client, scores["selected_image"]).convert("RGB")
    assert big.size == (256, 256) and small.size == (64, 64)
    # The same picture: shrunk back, the upscale is close to the selection (a wrong input would not be).
    shrunk = big.resize((64, 64), Image.Resampling.BOX)
    mean_error = sum(abs(a - b) for p, q in zip(shrunk.getdata(), small.getdata(), strict=True)
                     for a, b in zip(p, q, strict=True)) / (64 * 64 * 3)
    assert mean_error < 12, mean_error


def test_alpha_sweep_saves_seven_candidates_and_the_tradeoff_plot(pmg_server, object_info):
    entry, _ = run(pmg_server.client, load("pmg_alpha_sweep"))
    assert len(node_output(entry, SAVE)["images"]) == 7
    (scores,) = node_output(entry, SCORER)["pmg_scores"]
    assert scores["candidate_alphas"] == [0.0, 0.17, 0.33, 0.5, 0.67, 0.83, 1.0]
    (plot,) = node_output(entry, "13")["images"]
    assert fetch_png(pmg_server.client, plot).width > 64  # a chart, not a candidate
    assert_upscaled_selection(pmg_server.client, entry, scores, "16")


def test_repeat_of_a_user_does_no_llm_work(pmg_server, movie_run):
    """Queues of a user seen before: (a) only the sampler seed changed, right after another prompt of
    the same user → ComfyUI serves everything before the sampler from its memory cache; (b) an
    extractor setting changed → the extractor runs but reads its disk cache instead of asking the LLM
    (zero LLM batches, much faster than the cold run)."""
    client = pmg_server.client
    cold_entry, cold = movie_run
    graph = load_tiny()
    graph[SAMPLER]["inputs"]["seed"] = 1
    run(client, graph)  # other tests may have run other users since: ComfyUI keeps only the last prompt's nodes
    graph[SAMPLER]["inputs"]["seed"] = 2
    entry, warm = run(client, graph)
    assert warm.cached() >= BEFORE_SAMPLER and not (BEFORE_SAMPLER & warm.executed())
    assert len(node_output(entry, SAVE)["images"]) == 3

    graph[EXTRACTOR]["inputs"]["keep_model_loaded"] = True  # does not change the keywords, forces a re-run
    entry, forced = run(client, graph)
    assert EXTRACTOR in forced.executed()
    (keywords,) = node_output(entry, EXTRACTOR)["pmg_keywords"]
    (cold_keywords,) = node_output(cold_entry, EXTRACTOR)["pmg_keywords"]
    assert cold_keywords["llm_batches"] > 0
    assert keywords["llm_batches"] == 0, keywords  # the extractor counts the LLM batches it ran
    assert keywords["preference_keywords"] == cold_keywords["preference_keywords"]
    assert forced.seconds(EXTRACTOR) < 0.25 * cold.seconds(EXTRACTOR), (forced.seconds(EXTRACTOR), cold.seconds(EXTRACTOR))


# --- bad inputs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(pmg_server, smollm2):
    """A junk LLM folder and an adapter built for a 512-wide text encoder (the checkpoint's CLIP is 768)."""
    from pmg_core.soft_prompt import SoftPromptAdapter, save_adapter

    junk = pmg_server.base_dir / "models" / "LLM" / "junk-llm"
    junk.mkdir(parents=True, exist_ok=True)
    (junk / "config.json").write_text("{this is not json", encoding="utf-8")
    adapter = pmg_server.base_dir / "models" / "pmg" / "adapters" / "pmg-wrong-width.safetensors"
    save_adapter(SoftPromptAdapter.untrained(smollm2, text_dim=512), adapter)
    return {"llm": junk.name, "adapter": adapter.name}


BAD_INPUTS = {
    # case: (node, input, value, node named in the error, words of the message)
    "missing history file": (HISTORY, "history_file", "pmg/no_such_users.jsonl", HISTORY, "does not exist"),
    "path escaping input/": (HISTORY, "history_file", "../comfyui.log", HISTORY, "outside"),
    "unknown user": (HISTORY, "user_id", "no-such-user", HISTORY, "not in"),
    "wrong adapter width": (SOFT, "adapter", "{adapter}", SOFT, "512-wide"),
    "garbage LLM folder": (LLM, "model", "{llm}", LLM, "junk-llm"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_node_error_and_the_server_keeps_serving(case, pmg_server, bad_files, movie_run):
    node, name, value, failing, words = BAD_INPUTS[case]
    client = pmg_server.client
    graph = load_tiny()
    graph[node]["inputs"][name] = value.format(**bad_files)
    graph[SAMPLER]["inputs"]["seed"] = 100 + list(BAD_INPUTS).index(case)
    with pytest.raises(ComfyServerError) as info:
        client.wait(client.queue_prompt(graph), timeout=300)  # refused by /prompt, or failed in /history
    (error,) = [e for e in info.value.node_errors if e["node_id"] == failing]
    assert words.lower() in error["message"].lower(), error

    # The server is still healthy: the next prompt (same user, another seed) runs.
    good = load_tiny()
    good[SAMPLER]["inputs"]["seed"] = 200 + list(BAD_INPUTS).index(case)
    entry, _ = run(client, good)
    assert len(node_output(entry, SAVE)["images"]) == 3


# --- the batch client ---------------------------------------------------------------------------------


# MovieLens user 2 is left out on purpose: SmolLM2-135M answers 'Shall We Dance?' with the title
# repeated, which the keyword parser rightly refuses (a limit of the tiny LLM, not of the wiring).
BATCH_USERS = ["1", "3", "4"]


def test_batch_queue_writes_one_line_per_user_with_keywords_image_and_scores(pmg_server, movie_run, tmp_path):
    out = tmp_path / "scores.jsonl"
    summary = queue_users(pmg_server.client, load("pmg_movie_poster"), None, BATCH_USERS, out, concurrency=2,
                          substitutions=parse_overrides(TINY_SET))  # what `pmg queue --set ...` passes
    assert summary.done == 3 and summary.failed == 0, summary
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(line["user_id"] for line in lines) == BATCH_USERS
    for line in lines:
        assert line["status"] == "success"
        assert line["keywords"]["user_id"] == line["user_id"] and line["keywords"]["preference_keywords"]
        assert len(line["scores"]["candidates"]) == 3
        assert line["selected_image"]["subfolder"].startswith(f"pmg/{line['user_id']}")
        fetch_png(pmg_server.client, line["selected_image"])
        assert len([i for i in line["images"] if "_candidates" in i["filename"]]) == 3
    assert read_results(out).keys() == set(BATCH_USERS)
