"""nodes/node_support.py: one validation policy, one file fingerprint, one payload check, for every node.

The helpers alone first, then every PMG node through them: each ``validate_inputs`` answers a
broken check with a message (never an exception), each ``fingerprint_inputs`` follows file
content, and every node taking a preference refuses a value that is not one.
"""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from fixtures_nodes import make_bundle, pack_submodule


@pytest.fixture(scope="module")
def support(pack_module):
    return pack_submodule("nodes.node_support")


@pytest.fixture(scope="module")
def errors(pack_module):
    return pack_submodule("pmg_core.errors")


def test_validation_passes_runs_every_check_and_stops_at_the_first_failure(support, errors):
    ran = []

    def fail():
        ran.append("fail")
        raise errors.InvalidSettingError("alpha 'x' is not a number; give one in [0, 1].")

    assert support.validation_result(lambda: ran.append("a"), lambda: ran.append("b")) is True
    assert ran == ["a", "b"]
    ran.clear()
    message = support.validation_result(lambda: ran.append("a"), fail, lambda: ran.append("never"))
    assert message == "alpha 'x' is not a number; give one in [0, 1]."  # the library's message, as it is
    assert ran == ["a", "fail"]


def test_an_unexpected_exception_is_a_message_and_a_logged_traceback(support, caplog):
    def broken():
        raise KeyError("width")

    with caplog.at_level(logging.ERROR):
        message = support.validation_result(broken)
    assert isinstance(message, str)
    assert "KeyError: 'width'" in message and "ComfyUI log" in message
    assert any(record.exc_info and record.exc_info[0] is KeyError for record in caplog.records)


def test_the_digest_is_the_content_sha256(support, tmp_path):
    path = tmp_path / "adapter.safetensors"
    path.write_bytes(b"weights" * 1000)
    assert support.file_digest(path) == hashlib.sha256(b"weights" * 1000).hexdigest()


def test_a_file_rewritten_at_once_with_the_same_size_is_hashed_again(support, tmp_path):
    """Two writes inside one clock tick can leave size and times equal: such a digest is never reused."""
    path = tmp_path / "users.jsonl"
    path.write_text('{"a": 1}\n')
    first = support.file_digest(path)
    path.write_text('{"a": 2}\n')
    assert support.file_digest(path) != first


def test_a_settled_file_is_read_once_and_a_restored_mtime_does_not_hide_a_change(support, tmp_path, monkeypatch):
    reads = []
    real = support.sha256_file
    monkeypatch.setattr(support, "sha256_file", lambda path: reads.append(path) or real(path))
    monkeypatch.setattr(support, "SETTLED_NS", -1)  # every file counts as settled
    path = tmp_path / "big.safetensors"
    path.write_bytes(b"a" * 4096)
    first = support.file_digest(path)
    assert support.file_digest(path) == first and len(reads) == 1  # the second call reads nothing
    before = os.stat(path)
    path.write_bytes(b"b" * 4096)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r / cp -p: same size and mtime
    assert support.file_digest(path) != first  # ctime moved: hashed again
    assert len(reads) == 2


def test_fingerprint_files_joins_digests_in_order_and_reports_a_missing_file(support, errors, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.write_text("1")
    two.write_text("2")
    assert support.fingerprint_files(lambda: [one, two]) == f"{support.file_digest(one)}:{support.file_digest(two)}"
    assert support.fingerprint_files(lambda: [two, one]) != support.fingerprint_files(lambda: [one, two])
    assert support.fingerprint_files(lambda: [tmp_path / "gone"]) == support.MISSING

    def unresolved():
        raise errors.UnsafePathError("outside the input folder")

    assert support.fingerprint_files(unresolved) == support.MISSING


@pytest.mark.parametrize("value", ["ada", 3, {"user_id": "ada"}])
def test_a_preference_that_is_not_one_is_refused_naming_the_input_and_its_source(support, errors, pmg_pack, value):
    with pytest.raises(errors.EmbeddingValueError) as info:
        support.preference_bundle(value)
    message = str(info.value)
    assert f"The preference input got a {type(value).__name__}" in message
    assert "connect PMG Preference Extractor's preference output" in message
    bundle = make_bundle(pmg_pack)
    assert support.preference_bundle(bundle) is bundle and support.preference_bundle(None) is None


def test_a_soft_prompt_that_is_not_one_is_refused(support, errors):
    with pytest.raises(errors.EmbeddingValueError, match=r"soft_prompt input got a str.*PMG Soft Prompt Encoder"):
        support.checked_soft_prompt("0.1, 0.2")
    assert support.checked_soft_prompt(None) is None


def test_a_long_value_is_shortened_in_the_message(support, errors):
    with pytest.raises(errors.EmbeddingValueError) as info:
        support.preference_bundle("x" * 10_000)
    assert len(str(info.value)) < 400


def test_node_ui_puts_text_and_records_where_clients_read_them(support):
    assert support.node_ui("shown", pmg_scores={"selected": 1}) == {"text": ["shown"], "pmg_scores": [{"selected": 1}]}
    assert support.node_ui(pmg_soft_prompt={"k": 0}) == {"pmg_soft_prompt": [{"k": 0}]}


# Each node's validation, given a resolver that fails unexpectedly: (node, the resolver, the inputs).
BROKEN_RESOLVERS = [
    ("PMGUserHistoryLoader", "resolve_history_file", {"history_file": "pmg/movies.jsonl"}),
    ("PMGSoftPromptTrainer", "resolve_history_file", {"history_file": "pmg/movies.jsonl", "adapter_name": "a"}),
    ("PMGLLMLoader", "resolve_llm", {"model": "some-llm"}),
    ("PMGSoftPromptEncoder", "resolve_adapter", {"adapter": "user.safetensors"}),
    ("PMGImagePromptEncoder", "resolve_image_prompt", {"projection": "ip.safetensors"}),
    ("PMGStickerGeneratorLoader", "resolve_generator", {"generator": "g.safetensors"}),
    ("PMGScorer", "resolve_clip_scorer", {"lpips_net": "alex", "clip_model": "clip", "preference": None}),
]


@pytest.mark.parametrize(("node_id", "resolver", "inputs"), BROKEN_RESOLVERS, ids=[row[0] for row in BROKEN_RESOLVERS])
def test_every_node_answers_a_broken_check_with_a_message(pmg_pack, monkeypatch, caplog, node_id, resolver, inputs):
    """One policy everywhere: a bug in a check is a message on the node and a traceback in the log."""
    comfy_paths = pack_submodule("nodes.comfy_paths")

    def broken(_name):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(comfy_paths, resolver, broken)
    with caplog.at_level(logging.ERROR):
        message = pmg_pack.nodes[node_id].validate_inputs(**inputs)
    assert isinstance(message, str) and "OSError" in message and "Input/output error" in message
    assert any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("node_id", ["PMGSoftPromptEncoder", "PMGConditioning", "PMGScorer"])
def test_every_node_taking_a_preference_refuses_a_string_at_validation(pmg_pack, node_id):
    inputs = {"PMGSoftPromptEncoder": {"adapter": "none (keywords only)"},
              "PMGScorer": {"lpips_net": "alex", "clip_model": "none"}}.get(node_id, {})
    node = pmg_pack.nodes[node_id]
    message = node.validate_inputs(preference="ada", **inputs)
    assert isinstance(message, str) and "The preference input got a str ('ada')" in message
    assert node.validate_inputs(preference=None, **inputs) is True  # linked: known only when it runs


def test_the_extractor_refuses_a_history_that_is_not_one(pmg_pack):
    extractor = pmg_pack.nodes["PMGPreferenceExtractor"]
    message = extractor.validate_inputs(history="users.jsonl")
    assert "The history input got a str ('users.jsonl')" in message and "PMG User History Loader" in message
    assert extractor.validate_inputs(history=None) is True


def test_the_trainer_fingerprints_its_history_by_content(pmg_pack, comfy_base):
    """It used mtime and size: a same-size rewrite with the old mtime restored returned the cached adapter."""
    trainer = pmg_pack.nodes["PMGSoftPromptTrainer"]
    path = comfy_base.input / "trainer_fp.jsonl"
    path.write_text('{"user_id": "a"}\n')
    first = trainer.fingerprint_inputs(history_file="trainer_fp.jsonl")
    before = os.stat(path)
    path.write_text('{"user_id": "b"}\n')
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert trainer.fingerprint_inputs(history_file="trainer_fp.jsonl") != first
    assert trainer.fingerprint_inputs(history_file="../outside.jsonl") == "missing"
