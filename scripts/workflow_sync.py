"""Keep the UI workflows (``workflows/*.json``) and their API copies (``workflows/api/*.json``) in sync.

The UI file is what a user opens in ComfyUI (the template browser lists it); the API
copy is what ``pmg queue``, the tests and studio scripts POST to ``/prompt``. Both are
committed, so this script proves they describe the same graph, using the node schemas
of a real server (``/object_info``) to read the positional ``widgets_values``.

    # check (exit 1 and list the differences when a pair disagrees)
    .venv/bin/python -m scripts.workflow_sync
    # after editing a UI workflow in ComfyUI and saving it over workflows/<name>.json:
    .venv/bin/python -m scripts.workflow_sync --write api
    # after editing an API copy by hand (layout, notes and model lists of the UI file are kept):
    .venv/bin/python -m scripts.workflow_sync --write ui pmg_movie_poster

Without ``--url`` it starts the embedded ComfyUI with this pack (~15 s) in a temporary
folder; ``--url http://127.0.0.1:8188`` uses a running server instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from pmg_core.comfy_client.workflow_format import api_differences, api_to_ui, ui_to_api
from pmg_core.errors import PMGError

log = logging.getLogger("workflow_sync")

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"


def workflow_names(folder: Path = WORKFLOWS) -> list[str]:
    """The stems of the workflows: UI files (top-level ``*.json``) and API copies (``api/*.json``)."""
    return sorted({p.stem for p in folder.glob("*.json")} | {p.stem for p in (folder / "api").glob("*.json")})


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def object_info_from(url: str | None) -> dict:
    """``/object_info`` of the server at ``url``, or of a temporary embedded one."""
    from pmg_core.comfy_client.client import ComfyClient

    if url:
        return ComfyClient(url).object_info()
    from pmg_tools.server import EmbeddedComfyUI

    with tempfile.TemporaryDirectory(prefix="pmg-sync-") as base, EmbeddedComfyUI(base_dir=base) as server:
        return ComfyClient(server.url).object_info()


def check(names: list[str], object_info: dict, folder: Path = WORKFLOWS) -> dict[str, list[str]]:
    """Differences between each UI workflow converted to API format and its API copy."""
    problems: dict[str, list[str]] = {}
    for name in names:
        api_path = folder / "api" / f"{name}.json"
        if not api_path.is_file():
            problems[name] = [f"{api_path} is missing; run with --write api"]
            continue
        try:
            converted = ui_to_api(read_json(folder / f"{name}.json"), object_info)
        except PMGError as error:
            problems[name] = [str(error)]
            continue
        differences = api_differences(read_json(api_path), converted)
        if differences:
            problems[name] = differences
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="workflow names (default: every workflows/*.json)")
    parser.add_argument("--write", choices=("api", "ui"), help="regenerate the API copies from the UI files, or the reverse")
    parser.add_argument("--url", help="a running ComfyUI with this pack (default: start the embedded one)")
    parser.add_argument("--object-info", type=Path, help="read the node schemas from this saved /object_info JSON")
    parser.add_argument("--dir", type=Path, default=WORKFLOWS, help="the workflows folder (default: workflows/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    folder = args.dir
    names = args.names or workflow_names(folder)
    unknown = [n for n in names if not (folder / f"{n}.json").is_file() and not (folder / "api" / f"{n}.json").is_file()]
    if unknown:
        parser.error(f"no workflow named {', '.join(unknown)} in {folder}")
    object_info = read_json(args.object_info) if args.object_info else object_info_from(args.url)

    if args.write == "api":
        for name in names:
            write_json(folder / "api" / f"{name}.json", ui_to_api(read_json(folder / f"{name}.json"), object_info))
            log.info("wrote %s/api/%s.json", folder, name)
    elif args.write == "ui":
        for name in names:
            ui_path = folder / f"{name}.json"
            template = read_json(ui_path) if ui_path.is_file() else None
            write_json(ui_path, api_to_ui(read_json(folder / "api" / f"{name}.json"), object_info, template))
            log.info("wrote %s", ui_path)

    problems = check(names, object_info, folder)
    for name, lines in problems.items():
        log.error("%s: out of sync\n%s", name, "\n".join(f"  {line}" for line in lines))
    if not problems:
        log.info("in sync: %s", ", ".join(names))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
