"""Issues 11 and 18 through a live ComfyUI: what a user sends never hangs the server or fails without a fix.

Issue 18's cases: alphas with an empty entry or a repeat, PMG Scorer's alphas sent as text, a
1 MB target and an over-long preference text (bounded in 77-token windows), Cancel inside the
condition build.

Each case runs the real pack in the session's ComfyUI (tiny random SD1.5, the real
SmolLM2-135M where keywords matter); the last test sends a good prompt after all the bad
ones and checks the server still serves it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from fixtures_comfy import pmg_no_llm_graph, stock_txt2img_graph
from pmg_core.comfy_client.batch import queue_users
from pmg_core.errors import ComfyServerError
from pmg_tools.demo import DemoSettings, apply_settings

pytestmark = pytest.mark.comfy_server
REPO = Path(__file__).resolve().parents[1]
# A fix names an action: which input, which value range, which file.
FIX_HINT = re.compile(r"\b(give|add|type|pass|use|pick|write|connect|remove|lower|raise|set)\b", re.IGNORECASE)


def movie_workflow() -> dict:
    """The shared movie workflow with the tiny checkpoint, 64 px and 4 steps set in (as `pmg queue --set` does)."""
    shared = json.loads((REPO / "workflows" / "api" / "pmg_movie_poster.json").read_text(encoding="utf-8"))
    return apply_settings(shared, DemoSettings().resolved())


def with_user(graph: dict, history_file: str, user_id: str, prefix: str, scene: str = "auto",
              max_new_tokens: int | None = None) -> dict:
    graph["2"]["inputs"].update(history_file=history_file, user_id=user_id, scene=scene)
    if max_new_tokens is not None:
        graph["4"]["inputs"]["max_new_tokens"] = max_new_tokens
    graph["11"]["inputs"]["filename_prefix"] = prefix
    graph["12"]["inputs"]["filename_prefix"] = f"{prefix}_candidates"
    return graph


def upload_jsonl(server, tmp_path: Path, name: str, records: list[dict]) -> str:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    server.client.upload_file(path, subfolder="pmg_trust")
    return f"pmg_trust/{name}"


def up_to_the_extractor(graph: dict) -> dict:
    """The movie workflow's history loader, LLM and PMG Preference Extractor (an output node) alone.

    What the huge-history case asserts is the extractor's: the nodes after it read its preference,
    already cut to the newest items, and the history's images, which these items do not have; so
    running them (an LLM pass of the soft-prompt encoder, sampling, scoring) adds time and checks nothing.
    """
    return {node_id: graph[node_id] for node_id in ("2", "3", "4")}


def extractor_output(entry: dict) -> tuple[str, dict]:
    output = entry["outputs"]["4"]
    return output["text"][0], output["pmg_keywords"][0]


def test_movielens_users_whose_keywords_do_not_parse_fall_back_and_the_batch_completes(comfy_server, tmp_path):
    """Users 500 and 73 watched '2001: A Space Odyssey', whose keywords SmolLM2 cannot give (it repeats the title)."""
    out = tmp_path / "results.jsonl"
    summary = queue_users(comfy_server.client, movie_workflow(), None, ["500", "73"], out, concurrency=1)
    assert (summary.done, summary.failed) == (2, 0), summary
    for line in map(json.loads, out.read_text(encoding="utf-8").splitlines()):
        keywords = line["keywords"]
        assert keywords["fallback_items"] >= 1, keywords
        assert any("'135'" in note for note in keywords["fallback_notes"]), keywords
        assert keywords["target_text"].startswith("movie poster, ")


def test_a_user_without_a_target_is_named_with_the_way_to_give_one(comfy_server, tmp_path):
    items = [{"item_id": f"m{i}", "title": f"Quiet Harbour {i}", "categories": ["Drama"], "keywords": ["sea", "fog"]}
             for i in range(3)]
    name = upload_jsonl(comfy_server, tmp_path, "no_target.jsonl", [{"user_id": "nora", "scene": "movie", "items": items}])
    with pytest.raises(ComfyServerError) as info:
        comfy_server.client.run(with_user(movie_workflow(), name, "nora", "pmg_trust/no_target"), timeout=300)
    message = str(info.value)
    assert "User 'nora' has no target item" in message
    assert '"target"' in message and "history file" in message and "target_text" in message
    assert "connect a preference" not in message


def _timed(server, graph) -> tuple[float, dict]:
    began = time.monotonic()
    entry = server.client.run(graph, timeout=600)
    return time.monotonic() - began, entry


def test_huge_histories_are_cut_before_any_llm_work_and_reported(comfy_server, tmp_path):
    """10,000 history items cost what 50 cost: the extractor reads the newest 50 and says so.

    The huge user's newest 50 items are the small user's (later timestamps), so their keywords
    come from the small run's cache and one 50-item extraction serves both: what the huge run
    may add is the work of its 9,950 older items, all new to the cache, and that must be none.
    """
    def movies(prefix: str, n: int, first_timestamp: int = 0) -> list[dict]:
        return [{"item_id": f"{prefix}{i}", "title": f"{prefix.title()} Film {i}", "categories": ["Drama"],
                 "timestamp": first_timestamp + i} for i in range(n)]

    target = {"item_id": "t1", "title": "Harbour Lights", "categories": ["Drama"]}
    name = upload_jsonl(comfy_server, tmp_path, "huge.jsonl", [
        {"user_id": "small", "scene": "movie", "items": movies("small", 50), "target": target},
        {"user_id": "huge", "scene": "movie", "items": movies("huge", 9_950) + movies("small", 50, 9_950),
         "target": target},
        {"user_id": "stickers", "scene": "sticker", "target": {"item_id": "s", "title": "a waving cat"},
         "items": [{"item_id": f"e{i}", "title": f"sticker {i}"} for i in range(10_000)]},
    ])
    small_seconds, _ = _timed(comfy_server, up_to_the_extractor(
        with_user(movie_workflow(), name, "small", "pmg_trust/small", max_new_tokens=8)))
    huge_seconds, entry = _timed(comfy_server, up_to_the_extractor(
        with_user(movie_workflow(), name, "huge", "pmg_trust/huge", max_new_tokens=8)))
    text, record = extractor_output(entry)
    assert record["truncated_items"] == 10_000 - 50
    assert "9950 oldest history items dropped before any LLM work" in text
    assert huge_seconds < 2 * small_seconds + 30, (huge_seconds, small_seconds)

    _, entry = _timed(comfy_server, up_to_the_extractor(
        with_user(movie_workflow(), name, "stickers", "pmg_trust/stickers", max_new_tokens=8)))
    text, record = extractor_output(entry)
    assert record["scene"] == "sticker" and record["truncated_items"] == 10_000 - 50
    assert "oldest history items dropped" in text and "a waving cat" in record["target_text"]


@pytest.fixture(scope="module")
def target_image(comfy_server) -> str:
    from PIL import Image

    path = comfy_server.base_dir / "input" / "pmg_trust_target.png"
    Image.new("RGB", (64, 64), (200, 40, 40)).save(path)
    return path.name


@pytest.mark.parametrize("change, expected", [
    ({"alphas": ", ".join(["0.5"] * 1000)}, r"1000 alpha values given; at most 16 .*Give 16 or fewer"),
    ({"alphas": "0.5, 1.5"}, r"Alpha 1\.5 is outside \[0, 1\]"),
    ({"user_id": "nobody"}, r"User 'nobody' is not in .*pick one of those"),
    ({"alphas": "0.5,,0.7"}, r"'0\.5,,0\.7' hold an empty entry.*remove the extra comma"),
    ({"alphas": "0.5, 0.7, 0.5"}, r"Alpha 0\.5 is given more than once.*give each alpha once"),
    ({"scorer_alphas": "0.33, abc"}, r"PMGScorer.*Cannot read 'abc' as an alpha.*write decimal numbers"),
    ({"target_text": "cat " * 262_144}, r"target text is 1,048,576 characters long.*at most 8 encoder window.*Shorten"),
    ({"preference_text": " ".join(["cat"] * 700)},
     r"preference text is 770 tokens long.*raise PMG Conditioning's max_text_windows"),
])
def test_user_facing_errors_name_the_problem_and_the_fix(comfy_server, target_image, change, expected):
    graph = pmg_no_llm_graph(target_image, prefix=f"pmg_trust/err_{len(str(change))}")
    if "alphas" in change:
        graph["5"]["inputs"]["alphas"] = graph["9"]["inputs"]["alphas"] = change["alphas"]
    elif "scorer_alphas" in change:  # what an API script sends PMG Scorer: text, not a link
        graph["9"]["inputs"]["alphas"] = change["scorer_alphas"]
    elif "user_id" in change:
        graph["2"]["inputs"]["user_id"] = change["user_id"]
    else:
        graph["5"]["inputs"].update(change)
    began = time.monotonic()
    with pytest.raises(ComfyServerError) as info:
        comfy_server.client.run(graph, timeout=120)
    assert time.monotonic() - began < 60  # refused, not generated
    message = str(info.value)
    assert re.search(expected, message), message
    assert FIX_HINT.search(message.split(":", 2)[-1]), f"no fix named in {message!r}"


def test_scorer_alphas_given_as_text_are_read_like_conditioning_alphas(comfy_server, target_image):
    """An API script sends '0.33, 0.67' to PMG Scorer: read as two alphas, not as nine characters."""
    graph = pmg_no_llm_graph(target_image, prefix="pmg_trust/scorer_text_alphas")
    graph["9"]["inputs"]["alphas"] = "0.33, 0.67"
    entry = comfy_server.client.run(graph, timeout=300)
    (record,) = entry["outputs"]["9"]["pmg_scores"]
    assert record["candidate_alphas"] == [0.33, 0.67]
    assert record["selected_alpha"] in (0.33, 0.67)


def _words(count: int, salt: int) -> str:
    return " ".join(f"w{salt}x{i % 97}" for i in range(count))


def test_cancel_during_the_condition_build_stops_it_there(comfy_server, target_image):
    """Cancel while PMG Conditioning encodes two long texts stops in that node, not after it.

    ComfyUI 0.3.75 checks for Cancel in every layer of its CLIP, and PMG Conditioning also checks
    before each encoding (the tokenizing and the library code between encodes). The build of two
    60-window texts lasts a few tenths of a second on the tiny CLIP, so the interrupt is sent when
    the node starts and the case is retried (new texts, nothing cached) if the build won the race.
    """
    stopped_at = []
    for attempt in range(3):
        graph = pmg_no_llm_graph(target_image, prefix=f"pmg_trust/cancel_{attempt}")
        graph["5"]["inputs"].update(target_text=_words(1500, attempt), preference_text=_words(1500, attempt + 10),
                                    max_text_windows=64)

        def interrupt_when_conditioning_starts(event):
            if event["type"] == "executing" and (event.get("data") or {}).get("node") == "5":
                comfy_server.client.interrupt()

        with comfy_server.client.connect() as events:
            prompt_id = comfy_server.client.queue_prompt(graph)
            entry = comfy_server.client.wait(prompt_id, timeout=300, on_progress=interrupt_when_conditioning_starts,
                                             raise_on_error=False, events=events)
        kinds = {kind: data for kind, data in entry["status"]["messages"]}
        assert "execution_interrupted" in kinds, entry["status"]
        stopped_at.append(kinds["execution_interrupted"]["node_id"])
        if stopped_at[-1] == "5":
            break
    assert stopped_at[-1] == "5", f"interrupted in nodes {stopped_at}, never inside PMG Conditioning (node 5)"
    assert "5" not in kinds["execution_interrupted"]["executed"]
    assert not entry["outputs"].get("9")  # nothing was scored or saved


def test_a_node_without_inputs_is_refused_before_queueing_naming_it(comfy_server):
    graph = stock_txt2img_graph(seed=1101, prefix="pmg_trust/no_inputs")
    graph["99"] = {"class_type": "PrimitiveString"}
    queue_before = comfy_server.client.queue()
    with pytest.raises(ComfyServerError, match=r"node 99 \(PrimitiveString\): has no \"inputs\" object") as info:
        comfy_server.client.queue_prompt(graph)
    assert info.value.node_errors[0]["node_id"] == "99" and info.value.status_code == 400
    assert comfy_server.client.queue() == queue_before  # nothing reached the server's queue


def test_zz_after_every_bad_prompt_a_good_one_still_runs(comfy_server):
    """Runs last in this file: the server kept serving through all the cases above."""
    entry = comfy_server.client.run(stock_txt2img_graph(seed=1199, prefix="pmg_trust/good"), timeout=120)
    assert entry["status"]["status_str"] == "success"
    images = [image for output in entry["outputs"].values() for image in output.get("images", [])]
    assert len(images) == 1
