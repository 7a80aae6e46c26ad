"""``pmg train`` end to end on tiny random models (mechanics only) and its error handling.

The generator is the tiny random SD pipeline saved as a diffusers folder, the LLM
the tiny random Llama; the users are real Twemoji sticker users (an exported set).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from pmg_core.soft_prompt import load_adapter
from pmg_core.training.cli import main
from pmg_core.training.trainer import read_loss_csv

REPO = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--batch-size", "2", "--grad-accum", "1", "--resolution", "32", "--lr", "1e-3", "--checkpoint-every", "2"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pmg_core.training.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_train_command_end_to_end(sticker_set, tiny_sd_folder, tiny_llm_folder, tiny_llm, tmp_path, capsys):
    """Mechanics: the CLI trains, evaluates one held-out user, writes adapter + loss.csv + loss_curve.png, prints JSON."""
    out = tmp_path / "run"
    done = _run(
        "--history", str(sticker_set), "--checkpoint", str(tiny_sd_folder), "--llm", str(tiny_llm_folder),
        "--out", str(out), *TINY, "--eval-users", "1", "--eval-steps", "2", "--eval-guidance", "1.0",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["steps"] == 3 and summary["examples"] == 5
    assert summary["generator"].startswith(tiny_sd_folder.name + "@")
    assert "train" in done.stderr  # tqdm progress on stderr, not stdout

    assert [row["step"] for row in read_loss_csv(out / "loss.csv")] == [1, 2, 3]
    with Image.open(out / "loss_curve.png") as curve:
        assert curve.format == "PNG"
    adapter = load_adapter(out / "adapter.safetensors", llm=tiny_llm, text_dim=32)
    assert adapter.config.metadata["trained_steps"] == "3"

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert set(evaluation["summary"]) == {"trained", "untrained", "keywords"}
    assert len(evaluation["users"]) == 1
    assert summary["evaluation"]["summary"] == evaluation["summary"]

    # A second run into the same folder needs --resume (or --overwrite); with it, nothing is left to do.
    again = ["--history", str(sticker_set), "--checkpoint", str(tiny_sd_folder), "--llm", str(tiny_llm_folder), "--out", str(out),
             *TINY, "--eval-users", "1", "--eval-steps", "2", "--eval-guidance", "1.0"]
    assert main(again) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--resume" in last
    assert main([*again, "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 3


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resolution", "30"], "multiple of 8"),
        (["--batch-size", "0"], "batch_size"),
        (["--checkpoint", "/nonexistent/model.safetensors"], "does not exist"),
        (["--history", "/nonexistent/users.jsonl"], "does not exist"),
    ],
)
def test_bad_input_gives_one_line_error(extra, message, sticker_set, tiny_sd_folder, tiny_llm_folder, tmp_path, capsys):
    """Bad settings and paths end with exit status 1 and a single 'error: ...' line naming the problem."""
    args = {"--history": str(sticker_set), "--checkpoint": str(tiny_sd_folder), "--llm": str(tiny_llm_folder),
            "--out": str(tmp_path / "o")}
    plain = [*TINY]
    for i in range(0, len(extra), 2):
        if extra[i] in args:
            args[extra[i]] = extra[i + 1]
        else:
            plain += extra[i : i + 2]
    argv = [part for pair in args.items() for part in pair] + plain
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1]
