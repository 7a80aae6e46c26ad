"""The pmg command line: JSON on stdout, one-line errors, exit codes.

The happy path runs the real SmolLM2 once (keywords, cached in a per-module cache
folder) and reuses its cache for embed/generate, so only the first step pays for
the LLM. The generator is the tiny random pipeline: these tests check the
command's mechanics, not image quality.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from pmg_tools.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli-cache")


@pytest.fixture(scope="module")
def smollm2_path(smollm2) -> str:
    """The converted SmolLM2 folder (the smollm2 fixture converts the GGUF once per machine)."""
    return str(smollm2.source)


@pytest.mark.real_model
def test_keywords_for_a_movielens_user_are_real_and_repeat(capsys, cache_dir, smollm2_path):
    args = ("keywords", "--history", "builtin:movielens", "--user", "1", "--llm", smollm2_path,
            "--cache-dir", str(cache_dir), "--max-new-tokens", "48")
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    (first,) = json.loads(out)
    assert first["user_id"] == "1" and first["scene"] == "movie"
    assert len(first["preference_keywords"]) >= 3
    assert all(k.strip() and len(k.split()) <= 6 for k in first["preference_keywords"])
    assert first["target_text"].startswith("movie poster, ")
    code, again, _ = run_cli(capsys, *args)
    assert code == 0 and json.loads(again) == [first]


@pytest.mark.real_model
def test_embed_writes_soft_embeddings_of_the_requested_width(capsys, caplog, cache_dir, smollm2_path, tmp_path):
    out = tmp_path / "u1.safetensors"
    code, stdout, err = run_cli(
        capsys, "embed", "--history", "builtin:movielens", "--user", "1", "--llm", smollm2_path,
        "--cache-dir", str(cache_dir), "--max-new-tokens", "48", "--text-dim", "1024", "--out", str(out),
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["shape"] == [1, 4, 1024]
    with safe_open(str(out), "pt") as f:
        embeddings = f.get_tensor("soft_embeddings")
        assert f.metadata()["users"] == "1"
    assert embeddings.shape == (1, 4, 1024) and embeddings.isfinite().all()
    assert "UNTRAINED" in caplog.text  # the user is told the adapter is untrained


@pytest.mark.real_model
def test_generate_then_score_a_sticker_user(capsys, cache_dir, smollm2_path, tmp_path):
    out = tmp_path / "images"
    code, stdout, err = run_cli(
        capsys, "generate", "--history", "builtin:stickers", "--user", "sticker_user_000", "--llm", smollm2_path,
        "--cache-dir", str(cache_dir), "--max-new-tokens", "48", "--alphas", "0.2,0.8",
        "--steps", "2", "--size", "64", "--out", str(out),
    )
    assert code == 0, err
    generated = json.loads(stdout)
    assert generated["alphas"] == [0.2, 0.8]
    assert [Path(p).name for p in generated["images"]] == ["sticker_user_000_alpha0.20.png", "sticker_user_000_alpha0.80.png"]
    assert all(Path(p).is_file() for p in generated["images"])

    code, stdout, err = run_cli(capsys, "score", *generated["images"], "--history", "builtin:stickers",
                                "--user", "sticker_user_000")
    assert code == 0, err
    report = json.loads(stdout)
    assert len(report["candidates"]) == 2 and report["selected"] in (0, 1)
    # The sticker target has its own image, so both sides are measured on images.
    assert "target image" in report["measure"]["d_target"]
    for candidate in report["candidates"]:
        assert 0.0 <= candidate["lpips_history"] <= 1.5 and candidate["lpips_target"] is not None


@pytest.mark.parametrize(
    "argv, problem",
    [
        (["keywords", "--history", "no/such/file.jsonl", "--user", "1"], "no/such/file.jsonl"),
        (["keywords", "--history", "builtin:stickers", "--user", "nobody"], "nobody"),
        (["generate", "--history", "builtin:stickers", "--user", "sticker_user_000", "--alphas", "0.5,lots",
          "--out", "/tmp/unused"], "lots"),
        (["score", "missing.png", "--target-text", "x"], "missing.png"),
        (["example-data", "--comfyui", "/no/such/ComfyUI"], "does not look like a ComfyUI folder"),
        (["example-data"], "--comfyui /path/to/ComfyUI"),
    ],
)
def test_bad_input_is_one_line_error_and_exit_1(capsys, argv, problem):
    code, out, err = run_cli(capsys, *argv)
    assert code == 1
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and problem in lines[0]


def test_the_pmg_launcher_lists_every_subcommand():
    """The ./pmg script runs the CLI from a clone, in the project's environment."""
    result = subprocess.run([str(REPO / "pmg"), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("keywords", "embed", "generate", "score", "serve", "queue", "demo", "train", "example-data"):
        assert command in result.stdout


def test_module_entry_exits_non_zero_with_one_line(tmp_path):
    bad = tmp_path / "broken.jsonl"
    bad.write_text("{not json\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "pmg_core", "keywords", "--history", str(bad), "--user", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "broken.jsonl" in errors[0]


def test_score_candidates_of_different_sizes_is_a_one_line_error(capsys, tmp_path):
    """Candidates are stacked into one batch: differing sizes must be a clear error, not a torch traceback."""
    from PIL import Image

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (64, 64), "red").save(small)
    Image.new("RGB", (96, 64), "blue").save(large)
    code, out, err = run_cli(capsys, "score", str(small), str(large), "--target-text", "x")
    assert code == 1
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "large.png" in lines[0] and "64x96" in lines[0]


def test_keywords_progress_bar_counts_the_users_asked_for(capsys, cache_dir, tiny_llm_folder):
    """One bar from 0/8 to 8/8 user for 8 MovieLens users: never the LLM's internal step count."""
    users = ",".join(str(u) for u in range(1, 9))
    code, out, err = run_cli(capsys, "keywords", "--history", "builtin:movielens", "--user", users,
                             "--llm", str(tiny_llm_folder), "--cache-dir", str(cache_dir), "--max-new-tokens", "6")
    assert code == 0 and len(json.loads(out)) == 8
    counts = re.findall(r"keywords:.*?\| *(\d+)/(\d+) \[", err)
    assert counts, err
    assert {total for _, total in counts} == {"8"}, err
    done = [int(d) for d, _ in counts]
    assert done == sorted(done) and done[-1] == 8
