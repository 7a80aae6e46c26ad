"""Full-size Stable Diffusion checkpoints with random weights, for tests and benchmarks at real size.

No machine of this project can download a real checkpoint, yet ComfyUI's stock loader picks a
single-file checkpoint's family from its tensor shapes and key names (``comfy/model_detection.py``),
and a sampling step costs what the real network's costs. So this builds each family's **real**
single-file layout from ComfyUI's own classes:

* the UNet from ``comfy.supported_models.<family>(unet_config).get_model({})`` with the family's
  full configuration (SD1.5: 860 M parameters, context 768; SD2.1: context 1024, v-prediction;
  SDXL base: 2.6 B, context 2048, ADM ``y`` 2816);
* the text encoders from ``comfy.sd1_clip.SD1ClipModel`` (CLIP-L), ``sd2_clip.SD2ClipModel``
  (OpenCLIP-H) or ``sdxl_clip.SDXLClipModel`` (CLIP-L + OpenCLIP-bigG);
* the KL VAE (``comfy.ldm.models.autoencoder.AutoencoderKL``, the SD ``ddconfig``);

each saved through the family's own ``process_*_state_dict_for_saving`` (the key names a real file has).

The networks are built on PyTorch's ``meta`` device (shapes only), and every tensor is drawn from a
generator seeded by the seed and the tensor's name, then written straight to the file, one at a
time: building SDXL needs well under 1 GB of memory and gives the same bytes on every run. ComfyUI's
ops skip weight initialisation, so every tensor is set here: matrices and kernels N(0, 1/fan_in)
(activations keep their scale through the depth: no inf/NaN), norm scales 1, biases small noise.
Weights are fp16 (SD1.5, SD2.1) or bf16 (SDXL, as a 24 GB machine must load it). Their images are
noise: these files measure loading, memory and compute, never quality.

Builds are cached outside the repository, in ``~/.cache/pmg/realsize/comfyui-<version>-builder-<n>/``
(``$PMG_CACHE_DIR`` moves it), so a new ComfyUI or a new builder rebuilds them::

    .venv/bin/python -m pmg_tools.realsize --family sd15 --out comfy_base/models/checkpoints

It imports ComfyUI (checkout tooling, never part of ``pmg_core``); :func:`ensure_realsize_checkpoint`
runs it in a subprocess for callers that must not import ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from pmg_core.atomic import atomic_path, copy_atomic
from pmg_core.errors import InvalidSettingError, ModelLoadError

from .comfy_source import DEFAULT_COMFY_DIR, REPO_ROOT, comfy_source_env, ensure_comfy_source_first, import_comfy_package
from .report import emit
from .safetensors_stream import write_safetensors
from .server import file_lock

log = logging.getLogger(__name__)

# Raise it whenever what a build writes changes: the cache folder is keyed by it.
BUILDER_VERSION = 1

# The SD ``first_stage_model`` of every family here (comfy/sd.py builds the same for a KL VAE).
_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                 "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}

# The full UNet configurations, in the form comfy/model_detection.py detects from a file's shapes.
_COMMON = {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
           "use_spatial_transformer": True, "legacy": False, "model_channels": 320,
           "use_temporal_attention": False, "use_temporal_resblock": False}
_SD1_SD2_DEPTHS = {"num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
                   "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_middle": 1,
                   "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}


@dataclass(frozen=True)
class Family:
    """One checkpoint family: ComfyUI's model class, its UNet configuration, its text encoder, its dtype."""

    name: str
    model_class: str            # in comfy.supported_models
    unet_config: dict
    text_encoder: str           # "module:Class" under comfy
    dtype: str                  # of the stored weights
    description: str
    # A tensor whose spread ComfyUI reads to choose the prediction type (SD2.x: std > 0.09 means v-prediction).
    marker: tuple[str, float] | None = None

    @property
    def file_name(self) -> str:
        return f"pmg-realsize-{self.name}.safetensors"


FAMILIES = {
    "sd15": Family(
        "sd15", "SD15",
        {**_COMMON, **_SD1_SD2_DEPTHS, "adm_in_channels": None, "context_dim": 768, "num_heads": 8,
         "use_linear_in_transformer": False},
        "sd1_clip:SD1ClipModel", "float16",
        "Stable Diffusion 1.5 layout (UNet 860 M, CLIP-L 123 M, KL VAE 84 M)"),
    "sd21": Family(
        "sd21", "SD20",
        {**_COMMON, **_SD1_SD2_DEPTHS, "adm_in_channels": None, "context_dim": 1024, "num_head_channels": 64,
         "use_linear_in_transformer": True},
        "text_encoders.sd2_clip:SD2ClipModel", "float16",
        "Stable Diffusion 2.1 768-v layout (UNet 866 M, OpenCLIP-H 354 M, KL VAE 84 M; v-prediction)",
        marker=("model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias", 0.12)),
    "sdxl": Family(
        "sdxl", "SDXL",
        {**_COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "num_res_blocks": [2, 2, 2],
         "channel_mult": [1, 2, 4], "transformer_depth": [0, 0, 2, 2, 10, 10], "transformer_depth_middle": 10,
         "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "context_dim": 2048, "num_head_channels": 64,
         "use_linear_in_transformer": True},
        "sdxl_clip:SDXLClipModel", "bfloat16",
        "Stable Diffusion XL base 1.0 layout (UNet 2.6 B, CLIP-L 123 M + OpenCLIP-bigG 695 M, KL VAE 84 M)"),
}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise InvalidSettingError(
            f"No full-size family {name!r}; choose one of {', '.join(FAMILIES)}.") from None


def comfy_version(comfy_dir: Path = DEFAULT_COMFY_DIR) -> str:
    """ComfyUI's ``__version__`` as its source folder states it (read, not imported)."""
    path = Path(comfy_dir) / "comfyui_version.py"
    if not path.is_file():
        raise ModelLoadError(f"No ComfyUI source at {comfy_dir} ({path.name} missing); run scripts/fetch_comfyui.sh.")
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise ModelLoadError(f"{path} states no __version__; extract ComfyUI again with scripts/fetch_comfyui.sh.")


def cache_folder(cache_dir: Path | None = None, comfy_dir: Path = DEFAULT_COMFY_DIR) -> Path:
    """Where builds for this ComfyUI and this builder live."""
    from pmg_core.assets import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "realsize"
    return root / f"comfyui-{comfy_version(comfy_dir)}-builder-{BUILDER_VERSION}"


# --- building (imports ComfyUI) ---------------------------------------------------------------


def import_comfy(comfy_dir: Path):
    """Import ComfyUI's model code from its source folder (first on the module path), forced onto the CPU."""
    import_comfy_package(comfy_dir)
    import comfy.ldm.models.autoencoder
    import comfy.supported_models

    return comfy


def layout(comfy, spec: Family) -> dict:
    """Every tensor of the checkpoint, by its name in the single-file layout: meta tensors (shape and
    dtype only), except the few integer buffers a file holds with their content (position ids)."""
    import importlib

    import torch

    model_config = getattr(comfy.supported_models, spec.model_class)(dict(spec.unet_config))
    dtype = getattr(torch, spec.dtype)
    module, cls = spec.text_encoder.split(":")
    encoder_class = getattr(importlib.import_module(f"comfy.{module}"), cls)
    with torch.device("meta"):
        unet = model_config.get_model({}).diffusion_model
        encoder = encoder_class(device="meta", dtype=dtype)
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(_VAE_DDCONFIG), embed_dim=4)
    tensors = {}
    tensors.update(model_config.process_unet_state_dict_for_saving(dict(unet.state_dict())))
    tensors.update(model_config.process_clip_state_dict_for_saving(dict(encoder.state_dict())))
    tensors.update(model_config.process_vae_state_dict_for_saving(dict(vae.state_dict())))
    return tensors


def draw(name: str, like, seed: int, dtype, marker: tuple[str, float] | None = None):
    """The value of one tensor: seeded by ``seed`` and the tensor's name, so order does not matter."""
    import torch

    if not like.is_floating_point():
        return like.clone()  # integer buffers (position ids) keep their defined content
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    shape = tuple(like.shape)
    if marker is not None and name == marker[0]:
        value = torch.randn(shape, generator=generator) * marker[1]
    elif len(shape) >= 2:
        value = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
    elif len(shape) == 1 and name.endswith(".weight"):
        value = torch.ones(shape)  # in these layouts every 1-D weight is a norm's scale
    else:
        value = torch.randn(shape, generator=generator) * 0.02
    return value.to(dtype)


def build_checkpoint(name: str, out: Path, seed: int = 0, comfy_dir: Path = DEFAULT_COMFY_DIR) -> dict:
    """Write family ``name``'s full-size random checkpoint to ``out``; returns its metadata."""
    import torch
    from tqdm import tqdm

    spec = family(name)
    comfy = import_comfy(Path(comfy_dir))
    tensors = layout(comfy, spec)
    n_params = sum(t.numel() for t in tensors.values() if t.is_floating_point())
    metadata = {
        "pmg_kind": "random-weight full-size test checkpoint",
        "description": f"{spec.description} with RANDOM weights, built by pmg_tools/realsize.py "
                       "from ComfyUI's own classes: real loading, memory and compute; its images are noise.",
        "family": spec.name, "seed": str(seed), "parameters": str(n_params),
        "comfyui_version": comfy_version(comfy_dir), "builder_version": str(BUILDER_VERSION),
        "unet_config": json.dumps(spec.unet_config, sort_keys=True),
    }
    dtype = getattr(torch, spec.dtype)

    stored = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}  # shapes only (meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(total=n_params, desc=f"building {spec.file_name}", unit="param", unit_scale=True,
              file=sys.stderr) as bar, atomic_path(out) as temporary:
        write_safetensors(temporary, stored, lambda key: draw(key, tensors[key], seed, dtype, spec.marker), metadata,
                          progress=bar.update)
    log.info("wrote %s: %d tensors, %.2f B parameters, %.2f GB", out, len(tensors), n_params / 1e9,
             out.stat().st_size / 1e9)
    return metadata


# --- the cache (no ComfyUI import) -----------------------------------------------------------------


def cached_path(name: str, seed: int = 0, cache_dir: Path | None = None, comfy_dir: Path = DEFAULT_COMFY_DIR) -> Path:
    spec = family(name)
    return cache_folder(cache_dir, comfy_dir) / f"{spec.name}-seed{seed}.safetensors"


def ensure_realsize_checkpoint(name: str, seed: int = 0, cache_dir: Path | None = None,
                               comfy_dir: Path = DEFAULT_COMFY_DIR, python: str | None = None) -> Path:
    """The cached full-size checkpoint of family ``name``, built first if missing.

    The build runs ``python -m pmg_tools.realsize`` in a subprocess (it imports ComfyUI, which the
    caller, e.g. a test session, must not), under a lock between processes. SD1.5 takes about a minute,
    SDXL a few (one CPU core); its output shows the progress on the caller's stderr.
    """
    target = cached_path(name, seed, cache_dir, comfy_dir)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target.parent / f".{target.name}.lock"):
        if target.is_file():  # another process built it while we waited
            return target
        command = [python or sys.executable, "-m", "pmg_tools.realsize", "--family", name, "--seed", str(seed),
                   "--comfy-dir", str(comfy_dir)]
        if cache_dir is not None:
            command += ["--cache-dir", str(cache_dir)]
        log.info("building the full-size %s checkpoint: %s", name, " ".join(command))
        env = comfy_source_env(comfy_dir)
        env.setdefault("OMP_NUM_THREADS", "1")
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=3600, check=False)
        if done.returncode != 0 or not target.is_file():
            raise ModelLoadError(
                f"Building the full-size {name} checkpoint failed (exit {done.returncode}):\n{done.stderr[-3000:]}\n"
                "Check that ComfyUI is extracted (scripts/fetch_comfyui.sh) and there is disk space in "
                f"{target.parent}.")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pmg_tools.realsize",
        description="Build (once, cached) a full-size single-file checkpoint with RANDOM weights, in a family's "
                    "real layout from ComfyUI's own classes, and print its path. Its images are noise: it is for "
                    "tests and benchmarks at real size.")
    parser.add_argument("--family", required=True, choices=sorted(FAMILIES),
                        help="; ".join(f"{f.name}: {f.description}" for f in FAMILIES.values()))
    parser.add_argument("--out", type=Path,
                        help="also place it in this folder (a hard link where possible), e.g. ComfyUI/models/checkpoints")
    parser.add_argument("--seed", type=int, default=0, help="seed of every weight (default 0)")
    parser.add_argument("--cache-dir", type=Path, help="cache root (default ~/.cache/pmg/realsize, or $PMG_CACHE_DIR/realsize)")
    parser.add_argument("--comfy-dir", type=Path, default=DEFAULT_COMFY_DIR, help="ComfyUI source folder")
    parser.add_argument("--rebuild", action="store_true", help="build again even if the cache has it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    ensure_comfy_source_first("pmg_tools.realsize", sys.argv[1:] if argv is None else argv, args.comfy_dir)

    import torch

    torch.set_num_threads(1)
    target = cached_path(args.family, args.seed, args.cache_dir, args.comfy_dir)
    if args.rebuild or not target.is_file():
        build_checkpoint(args.family, target, args.seed, args.comfy_dir)
    result = {"family": args.family, "cached": str(target)}
    if args.out is not None:
        placed = args.out / family(args.family).file_name
        copy_atomic(target, placed, link=True)
        result["path"] = str(placed)
    emit(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
