"""``pmg demo``: the shareable workflows, run for a handful of users, with a results folder to look at.

It starts the embedded ComfyUI with this pack and the offline default models (or uses
``--url`` of a running server), queues ``workflows/api/pmg_sticker.json`` for Twemoji
sticker users and ``workflows/api/pmg_movie_poster.json`` for MovieLens users through
the batch client, and writes ``results/<timestamp>/``:

* ``images/<user>/``: every candidate (one per α) and the selected image;
* ``scores.jsonl``: the batch client's lines (keywords, selected image, scores);
* ``keywords.jsonl``: one line per user with the LLM's preference and target keywords;
* ``contact_sheet.png``: one row per user: history, candidates per α (selected framed), keywords;
* ``summary.md``: what ran, timings, and what the images mean.

Only real images: the sticker users run on the sticker generator this project trained.
The movie users need a Stable Diffusion checkpoint nobody can download here, so without
``--checkpoint NAME`` (a file in ``models/checkpoints``) their rows show the LLM's keywords
and the prompt only, and the sheet says how to draw the posters. The workflow's own
settings (512 px, 25 steps for SD1.5) are what a given checkpoint runs with; every setting
reaches the graph as ``NODE.INPUT`` overrides, the way ``pmg queue --set`` passes them.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pmg_core.errors import ComfyServerError, InvalidSettingError
from .server import REPO_ROOT, TINY_CHECKPOINT_NAME

log = logging.getLogger(__name__)

WORKFLOW_DIR = REPO_ROOT / "workflows"
PMG_NODES = ("PMGUserHistoryLoader", "PMGLLMLoader", "PMGPreferenceExtractor", "PMGSoftPromptEncoder",
             "PMGConditioning", "PMGScorer")
MOVIE_WORKFLOWS = ("pmg_movie_poster", "pmg_movie_poster_sdxl")
NO_CLIP = "none"  # PMG Scorer's choice of no CLIP folder
# Sizes the tiny random checkpoint (tests, benchmarks) runs fast at; a real checkpoint runs with the workflow's own.
TINY_SETTINGS = {"size": 64, "steps": 4}


@dataclass
class DemoJob:
    """One workflow run for some users of one history file."""

    name: str  # workflows/api/<name>.json
    scene: str
    history_file: Path  # local copy (the contact sheet reads the users' items from it)
    users: list[str]


@dataclass
class DemoSettings:
    """What every prompt of a run uses: checkpoint, steps, size, alphas, seed.

    The default is the test rig: the offline tiny checkpoint (random weights) at 64 px and 4
    steps. ``checkpoint=None`` is the demo without a checkpoint: movie users get keywords only.
    """

    checkpoint: str | None = TINY_CHECKPOINT_NAME
    steps: int | None = None
    size: int | None = None
    alphas: str = "0.33, 0.5, 0.67"
    seed: int = 0

    @property
    def is_tiny(self) -> bool:
        return self.checkpoint == TINY_CHECKPOINT_NAME

    @property
    def draws_posters(self) -> bool:
        return self.checkpoint is not None

    def resolved(self, workflow: str = "pmg_movie_poster") -> "DemoSettings":
        """Steps and size filled in: the tiny checkpoint's, or the ``workflow``'s own for a real checkpoint."""
        defaults = TINY_SETTINGS if self.is_tiny else workflow_settings(load_api_workflow(workflow))
        return DemoSettings(self.checkpoint, self.steps or defaults["steps"], self.size or defaults["size"],
                            self.alphas, self.seed)


@dataclass
class DemoResult:
    """Where the demo wrote its results, how long it took, which users failed."""

    out_dir: Path
    wall_s: float
    users_ok: int = 0
    users_failed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"results": str(self.out_dir), "wall_s": round(self.wall_s, 1), "users_ok": self.users_ok,
                "users_failed": self.users_failed}


# --- workflow settings -----------------------------------------------------------------------


def load_api_workflow(name: str, folder: Path = WORKFLOW_DIR) -> dict:
    """``workflows/api/<name>.json``."""
    path = folder / "api" / f"{name}.json"
    if not path.is_file():
        raise InvalidSettingError(f"No API workflow {path}; the repository's workflows/ folder is incomplete.")
    return json.loads(path.read_text(encoding="utf-8"))


def workflow_settings(graph: dict) -> dict[str, int]:
    """The sampler steps and latent size a Stable Diffusion workflow ships with."""
    by_class = {node["class_type"]: node["inputs"] for node in graph.values()}
    return {"steps": by_class["KSampler"]["steps"], "size": by_class["EmptyLatentImage"]["width"]}


def settings_overrides(graph: dict, settings: DemoSettings) -> dict[str, Any]:
    """``{"NODE.INPUT": value}`` overrides (what ``pmg queue --set`` takes) that put ``settings`` into ``graph``.

    Nodes are found by class, not id. Checkpoint, steps and size belong to Stable Diffusion
    graphs; the sticker generator's graph keeps its own (it samples 64x64 stickers in the
    steps it was trained and measured at). ``None`` settings keep the workflow's values.
    """
    overrides: dict[str, Any] = {}
    uses_checkpoint = any(node["class_type"] == "CheckpointLoaderSimple" for node in graph.values())
    for node_id, node in graph.items():
        kind = node["class_type"]
        if kind == "CheckpointLoaderSimple" and settings.checkpoint:
            overrides[f"{node_id}.ckpt_name"] = settings.checkpoint
        elif kind == "KSampler":
            overrides[f"{node_id}.seed"] = settings.seed
            if uses_checkpoint and settings.steps:
                overrides[f"{node_id}.steps"] = settings.steps
        elif kind == "EmptyLatentImage" and uses_checkpoint and settings.size:
            overrides[f"{node_id}.width"] = overrides[f"{node_id}.height"] = settings.size
        elif kind == "PMGConditioning" and "alphas" in node["inputs"]:
            # The alpha list, typed in PMG Conditioning or in the String node feeding it (and PMG Scorer).
            value = node["inputs"]["alphas"]
            target = f"{value[0]}.value" if isinstance(value, list) else f"{node_id}.alphas"
            overrides[target] = settings.alphas
    return overrides


def with_overrides(graph: dict, overrides: dict[str, Any]) -> dict:
    """A copy of ``graph`` with ``{"NODE.INPUT": value}`` overrides applied."""
    graph = json.loads(json.dumps(graph))
    for target, value in overrides.items():
        node_id, name = target.split(".", 1)
        graph[node_id]["inputs"][name] = value
    return graph


def apply_settings(graph: dict, settings: DemoSettings) -> dict:
    """A copy of ``graph`` with ``settings`` in it (see :func:`settings_overrides`)."""
    return with_overrides(graph, settings_overrides(graph, settings))


def keywords_graph(graph: dict) -> dict:
    """Only what PMG Preference Extractor needs: the history, the LLM and the extractor (no checkpoint, no images)."""
    keep = [node_id for node_id, node in graph.items() if node["class_type"] == "PMGPreferenceExtractor"]
    if not keep:
        raise InvalidSettingError("The workflow has no PMG Preference Extractor to take the keywords from.")
    needed: set[str] = set()
    while keep:
        node_id = keep.pop()
        if node_id not in needed:
            needed.add(node_id)
            keep += [str(value[0]) for value in graph[node_id]["inputs"].values() if isinstance(value, list)]
    return {node_id: node for node_id, node in graph.items() if node_id in needed}


def check_server_has_pack(object_info: dict, url: str) -> None:
    """Refuse a server without the PMG nodes, saying how to install them."""
    missing = [name for name in PMG_NODES if name not in object_info]
    if missing:
        raise ComfyServerError(
            f"The ComfyUI at {url} lacks the PMG nodes {missing}; link this repository into its custom_nodes/ "
            "folder (ln -s $PWD <ComfyUI>/custom_nodes/comfyui-pmg), restart it and check its log."
        )


def check_checkpoint(object_info: dict, checkpoint: str, url: str) -> None:
    """Refuse a checkpoint name the server does not list in models/checkpoints."""
    choices = object_info.get("CheckpointLoaderSimple", {}).get("input", {}).get("required", {}).get("ckpt_name", [[]])[0]
    if isinstance(choices, list) and checkpoint not in choices:
        raise InvalidSettingError(
            f"Checkpoint {checkpoint!r} is not in models/checkpoints of the ComfyUI at {url} "
            f"(it has {choices[:6]}{' ...' if len(choices) > 6 else ''}); copy it there or pick one of those."
        )


def split_users(total: int) -> tuple[int, int]:
    """How many MovieLens and sticker users make ``total`` (3 + 2 for the default 5)."""
    if total < 1:
        raise InvalidSettingError(f"--users must be at least 1 (got {total}).")
    movies = math.ceil(total * 0.6)
    return movies, total - movies


def clip_model_overrides(graph: dict, clip_model: str) -> dict[str, str]:
    """Overrides pointing every PMG Scorer at ``clip_model`` (``none``, or a CLIP folder in models/pmg)."""
    return {f"{node_id}.clip_model": clip_model for node_id, node in graph.items() if node["class_type"] == "PMGScorer"}


def scorer_clip_choices(object_info: dict) -> list[str]:
    """The CLIP folders the server's PMGScorer offers (from /object_info)."""
    spec = object_info.get("PMGScorer", {}).get("input", {}).get("optional", {}).get("clip_model")
    if not spec:
        return []
    options = spec[0] if isinstance(spec[0], list) else (spec[1] or {}).get("options", [])
    return list(options)


# --- the run --------------------------------------------------------------------------------


@dataclass
class DemoOptions:
    """The demo's users, server (embedded or --url), folders and settings."""

    users: int = 5
    movie_users: list[str] | None = None
    sticker_users: list[str] | None = None
    url: str | None = None
    base: Path = REPO_ROOT / "comfy_base"
    out: Path | None = None
    clip_model: str = NO_CLIP
    concurrency: int = 2
    timeout: float = 1800.0
    # No checkpoint by default: the movie users' rows show keywords and prompts, never noise.
    settings: DemoSettings = field(default_factory=lambda: DemoSettings(checkpoint=None))
    movie_workflow: str = MOVIE_WORKFLOWS[0]


def run_demo(options: DemoOptions, progress: Callable[[int, int], None] | None = None) -> DemoResult:
    """Run the example workflows for a few users and write the results folder (see the module doc)."""
    from pmg_core.comfy_client.batch import queue_users
    from pmg_core.comfy_client.client import ComfyClient

    began = time.monotonic()
    if options.movie_workflow not in MOVIE_WORKFLOWS:
        raise InvalidSettingError(f"--movie-workflow {options.movie_workflow!r}: choose one of {', '.join(MOVIE_WORKFLOWS)}.")
    settings = options.settings.resolved(options.movie_workflow)
    if settings.is_tiny:
        log.warning("%s has RANDOM weights: its posters are noise (wiring only).", settings.checkpoint)
    out_dir = Path(options.out or REPO_ROOT / "results" / datetime.now().strftime("%Y%m%d-%H%M%S"))
    out_dir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        if options.url:
            client = ComfyClient(options.url)
            histories = _upload_examples(client, out_dir / "inputs")
        else:
            server, histories = _start_embedded(options.base)
            client = ComfyClient(server.url)
        object_info = client.object_info()
        check_server_has_pack(object_info, client.url)
        if settings.draws_posters:
            check_checkpoint(object_info, settings.checkpoint, client.url)
        if options.clip_model not in scorer_clip_choices(object_info):
            raise InvalidSettingError(
                f"PMG Scorer has no CLIP folder {options.clip_model!r} in models/pmg; the server offers "
                f"{scorer_clip_choices(object_info)}. Copy a Hugging Face CLIP folder there and pass --clip NAME, "
                f"or leave --clip at {NO_CLIP!r}."
            )
        jobs = _jobs(options, histories)
        scores_path = out_dir / "scores.jsonl"
        total = sum(len(job.users) for job in jobs)
        finished = 0
        for job in jobs:
            graph = load_api_workflow(job.name)
            if job.scene != "sticker" and not settings.draws_posters:
                graph = keywords_graph(graph)  # no checkpoint: the LLM's keywords and prompt, no images
            # The shared workflow stays as a user gets it: every setting goes in as a --set style override.
            overrides = settings_overrides(graph, settings)
            if job.scene != "sticker":  # sticker users have history and target images: LPIPS scores them, no CLIP
                overrides.update(clip_model_overrides(graph, options.clip_model))
            log.info("queueing %s for %d user(s): %s", job.name, len(job.users), ", ".join(job.users))
            offset = finished

            def report(done: int, _total: int, offset: int = offset) -> None:
                if progress is not None:
                    progress(offset + done, total)

            queue_users(client, graph, None, job.users, scores_path, concurrency=options.concurrency,
                         substitutions=overrides, progress=report, timeout=options.timeout)
            finished += len(job.users)
        result = _write_results(client, jobs, scores_path, out_dir, settings, time.monotonic() - began, options)
    finally:
        if server is not None:
            server.stop()
    result.wall_s = time.monotonic() - began
    _append_wall_time(out_dir / "summary.md", result.wall_s)
    return result


def _start_embedded(base: Path):
    """The embedded ComfyUI on ``base`` with the offline defaults (tiny checkpoint, SmolLM2, tiny CLIP, examples)."""
    from .server import EmbeddedComfyUI, install_default_models

    server = EmbeddedComfyUI(base_dir=base)
    server.prepare()
    installed = install_default_models(server.base_dir)
    server.start(timeout=180)
    return server, {"movie": installed["movielens"], "sticker": installed["stickers"]}


def _upload_examples(client, folder: Path) -> dict[str, Path]:
    """Write the example histories locally and upload them (the sticker images too) to a remote server."""
    from .server import EXAMPLE_MOVIELENS, EXAMPLE_STICKERS, install_example_histories

    written = install_example_histories(folder)
    for name, local in ((EXAMPLE_MOVIELENS, written["movielens"]), (EXAMPLE_STICKERS, written["stickers"])):
        client.upload_file(local, subfolder=str(Path(name).parent))
    stickers_dir = written["stickers"].parent
    for image in sorted((stickers_dir / "images").glob("*.png")):
        client.upload_file(image, subfolder=f"{Path(EXAMPLE_STICKERS).parent}/images")
    return {"movie": written["movielens"], "sticker": written["stickers"]}


def _jobs(options: DemoOptions, histories: dict[str, Path]) -> list[DemoJob]:
    from pmg_core.loaders import list_users

    n_movie, n_sticker = split_users(options.users)
    movie_users = options.movie_users if options.movie_users is not None else list_users(histories["movie"])[:n_movie]
    sticker_users = (options.sticker_users if options.sticker_users is not None
                     else list_users(histories["sticker"])[:n_sticker])
    overlap = set(movie_users) & set(sticker_users)
    if overlap:
        raise InvalidSettingError(f"Users {sorted(overlap)} are in both scenes; the results file is keyed by user id.")
    jobs = [DemoJob(options.movie_workflow, "movie", histories["movie"], list(movie_users))]
    if sticker_users:
        jobs.append(DemoJob("pmg_sticker", "sticker", histories["sticker"], list(sticker_users)))
    return [job for job in jobs if job.users]


# --- the results folder ------------------------------------------------------------------------


def _write_results(client, jobs: list[DemoJob], scores_path: Path, out_dir: Path, settings: DemoSettings,
                   elapsed: float, options: DemoOptions) -> DemoResult:
    from pmg_core.loaders import load_histories
    from pmg_core.comfy_client.batch import read_results
    from .contact_sheet import SheetRow, save_contact_sheet

    records = read_results(scores_path)
    rows, keyword_lines = [], []
    result = DemoResult(out_dir=out_dir, wall_s=elapsed)
    for job in jobs:
        histories = load_histories(job.history_file)
        for user in job.users:
            record = records.get(user, {"status": "error", "error": {"message": "no result line"}})
            ok = record.get("status") == "success"
            if ok:
                result.users_ok += 1
            else:
                result.users_failed.append(user)
            row = _sheet_row(client, SheetRow, user, job, histories.get(user), record, out_dir / "images" / user)
            if job.scene != "sticker" and not settings.draws_posters:
                row.placeholder = NO_POSTERS
            rows.append(row)
            keywords = record.get("keywords") or {}
            keyword_lines.append({
                "user_id": user, "workflow": job.name, "scene": job.scene, "status": record.get("status"),
                "preference_keywords": keywords.get("preference_keywords"),
                "target_keywords": keywords.get("target_keywords"),
                "target_text": keywords.get("target_text"),
            })
    (out_dir / "keywords.jsonl").write_text(
        "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in keyword_lines), encoding="utf-8")
    save_contact_sheet(rows, out_dir / "contact_sheet.png", title=_sheet_title(rows, settings, jobs))
    (out_dir / "summary.md").write_text(_summary(jobs, records, settings, options, result), encoding="utf-8")
    return result


NO_POSTERS = ("No posters: no Stable Diffusion checkpoint was given. Put one (e.g. v1-5-pruned-emaonly.safetensors) "
              "in models/checkpoints and run the demo with --checkpoint NAME.")


def _sheet_title(rows, settings: DemoSettings, jobs: list[DemoJob]) -> str:
    """What the sheet's images are, said where a newcomer looks first."""
    title = f"PMG demo: {len(rows)} users."
    if any(row.scene == "sticker" for row in rows):
        title += " Sticker rows: the sticker generator trained by this project (real weights), 64x64, its workflow's steps."
    if any(row.scene != "sticker" for row in rows):
        movie = next(job.name for job in jobs if job.scene != "sticker")
        if not settings.draws_posters:
            title += (" Movie rows: the LLM's keywords and prompt only; no Stable Diffusion checkpoint was given. "
                      f"For posters: put one in models/checkpoints and run with --checkpoint NAME ({movie})")
        else:
            title += (f" Movie rows: {movie} on {settings.checkpoint}, {settings.steps} steps, "
                      f"{settings.size}x{settings.size}.")
            if settings.is_tiny:
                title += " Its weights are RANDOM: those images are noise (wiring only)."
    return title


def _sheet_row(client, row_type, user: str, job: DemoJob, history, record: dict, image_dir: Path):
    scores = record.get("scores") or {}
    keywords = record.get("keywords") or {}
    candidates, selected_index = [], scores.get("selected")
    for image in record.get("images") or []:
        local = _download(client, image, image_dir)
        if local is not None and "_candidates" in image["filename"]:
            candidates.append(_read_image(local))
    history_tiles: list = []
    if history is not None:
        for item in history.items:
            if item.image_path is not None and Path(item.image_path).is_file():
                history_tiles.append(_read_image(item.image_path))
            else:
                history_tiles.append(item.title)
    error = record.get("error")
    return row_type(
        user_id=user, scene=job.scene, history=history_tiles, candidates=candidates,
        alphas=scores.get("candidate_alphas") or [], selected=selected_index,
        keywords=keywords.get("preference_keywords") or [], target_text=keywords.get("target_text") or "",
        error=(error.get("message") if isinstance(error, dict) else str(error)) if error else None,
    )


def _read_image(path: Path):
    """The image fully read into memory, its file closed (a sheet may hold hundreds)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def _download(client, image: dict, folder: Path) -> Path | None:
    try:
        data = client.view(image["filename"], image.get("subfolder", ""), image.get("type", "output"))
    except ComfyServerError as error:
        log.warning("could not fetch %s: %s", image.get("filename"), error)
        return None
    folder.mkdir(parents=True, exist_ok=True)
    # The name comes from the server: keep only its last part, so it cannot write outside `folder`.
    path = folder / Path(image["filename"]).name
    path.write_bytes(data)
    return path


def _summary(jobs: list[DemoJob], records: dict, settings: DemoSettings, options: DemoOptions, result: DemoResult) -> str:
    lines = ["# PMG demo results", ""]
    movie = next((job.name for job in jobs if job.scene != "sticker"), MOVIE_WORKFLOWS[0])
    if any(job.scene == "sticker" for job in jobs):
        lines += [
            "**Sticker users** run on `pmg-sticker-generator.safetensors`, the 64×64 sticker generator this project",
            "trained on the Twemoji images (real weights; see models/README.md and docs/EVALUATION.md): their",
            "candidates are real stickers, scored by LPIPS to the user's history and the target sticker.",
            "",
        ]
    if not settings.draws_posters:
        lines += [
            "**Movie users: keywords and prompts only.** Their posters need a Stable Diffusion checkpoint, and none",
            "was given (no machine of this project can download one). Their rows show the LLM's preference keywords",
            "and the prompt PMG Conditioning would use; the keywords are real output of SmolLM2-135M (a small, weak",
            "LLM; cached per user after the first run).",
            "",
            "To draw the posters:",
            "",
            "- put a Stable Diffusion 1.5 checkpoint into `comfy_base/models/checkpoints/` and run",
            "  `bash scripts/demo.sh --checkpoint v1-5-pruned-emaonly.safetensors` (the workflow's 512×512, 25 steps);",
            "  for SDXL add `--movie-workflow pmg_movie_poster_sdxl` (1024×1024);",
            "- or use a ComfyUI you already run (with this pack in its `custom_nodes/`):",
            "  `bash scripts/demo.sh --url http://127.0.0.1:8188 --checkpoint NAME`.",
            "",
        ]
    elif settings.is_tiny:
        lines += [
            f"**Movie users: the checkpoint `{settings.checkpoint}` has RANDOM weights: the images are noise.** It tests",
            "the wiring (history → LLM keywords → PMG conditioning → stock KSampler → scoring), not image quality.",
            "",
        ]
    lines += [
        "| | |", "|---|---|",
        f"| movie workflow | `{movie}` |",
        f"| checkpoint | {f'`{settings.checkpoint}`' if settings.draws_posters else 'none (keywords only)'} |",
        *([f"| steps, size | {settings.steps}, {settings.size}×{settings.size} |"] if settings.draws_posters else []),
        f"| alphas | {settings.alphas} |",
        f"| server | {options.url or 'embedded ComfyUI on ' + str(options.base)} |",
        f"| users | {result.users_ok} succeeded, {len(result.users_failed)} failed {result.users_failed or ''} |",
        "",
        "## Users", "",
        "| user | workflow | status | preference keywords | selected α | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for job in jobs:
        for user in job.users:
            record = records.get(user, {})
            keywords = (record.get("keywords") or {}).get("preference_keywords") or []
            scores = record.get("scores") or {}
            alpha = scores.get("selected_alpha")
            lines.append(
                f"| {user} | {job.name} | {record.get('status', 'missing')} | {', '.join(keywords)} | "
                f"{'' if alpha is None else f'{alpha:.2f}'} | {record.get('elapsed_s', '')} |"
            )
    lines += ["", "Files: `images/<user>/` (candidates and selected image), `scores.jsonl` (one line per user from",
              "the batch client), `keywords.jsonl`, `contact_sheet.png`.", ""]
    return "\n".join(lines)


def _append_wall_time(summary: Path, wall_s: float) -> None:
    with open(summary, "a", encoding="utf-8") as handle:
        handle.write(f"Wall time of the whole demo (server start included): {wall_s:.1f} s.\n")


# --- command line ----------------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add ``demo`` to an ``argparse`` sub-parser set (``pmg demo``)."""
    demo = subparsers.add_parser("demo", help="run the example workflows for a few users and write a results folder")
    demo.add_argument("--users", type=int, default=5,
                      help="how many users: 60%% MovieLens, the rest stickers (default 5 = 3 + 2)")
    demo.add_argument("--movie-users", help="comma-separated MovieLens user ids (instead of the first ones)")
    demo.add_argument("--sticker-users", help="comma-separated sticker user ids (instead of the first ones)")
    demo.add_argument("--url", help="use this running ComfyUI (with the pack installed) instead of the embedded one")
    demo.add_argument("--checkpoint",
                      help="a Stable Diffusion checkpoint in models/checkpoints for the movie posters (default: none, "
                           "the movie users get keywords and prompts only)")
    demo.add_argument("--movie-workflow", choices=MOVIE_WORKFLOWS, default=MOVIE_WORKFLOWS[0],
                      help="the movie workflow: SD1.5 at 512 px (default) or SDXL at 1024 px")
    demo.add_argument("--clip", default=NO_CLIP,
                      help="a CLIP folder in models/pmg for scoring the posters (default: none)")
    demo.add_argument("--steps", type=int, help="sampler steps of the posters (default: the workflow's)")
    demo.add_argument("--size", type=int, help="poster size in pixels (default: the workflow's)")
    demo.add_argument("--alphas", default="0.33, 0.5, 0.67", help="preference weights, one image each")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--base", type=Path, default=REPO_ROOT / "comfy_base",
                      help="base folder of the embedded ComfyUI (models, input, output, caches)")
    demo.add_argument("--out", type=Path, help="results folder (default results/<timestamp>)")
    demo.set_defaults(run=_run_cli)


def _ids(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _run_cli(args: argparse.Namespace) -> int:
    """Run ``pmg demo``: prints the JSON summary; exit status 1 when a user failed."""
    from pmg_core.cli_common import print_json
    from pmg_core.progress import stderr_bar, tqdm_progress

    options = DemoOptions(
        users=args.users, movie_users=_ids(args.movie_users), sticker_users=_ids(args.sticker_users),
        url=args.url, base=args.base, out=args.out, clip_model=args.clip, movie_workflow=args.movie_workflow,
        settings=DemoSettings(checkpoint=args.checkpoint, steps=args.steps, size=args.size, alphas=args.alphas,
                              seed=args.seed),
    )
    with stderr_bar("pmg demo", "user") as bar:
        result = run_demo(options, progress=tqdm_progress(bar))
    log.info("results in %s (%.1f s)", result.out_dir, result.wall_s)
    print_json(result.to_dict())
    return 1 if result.users_failed else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m pmg_tools.demo ...``: ``./pmg demo ...`` (same options)."""
    from pmg_core.cli_common import build_parser, run

    return run(build_parser([register]), ["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
