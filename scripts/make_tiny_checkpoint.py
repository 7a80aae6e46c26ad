"""Build the offline default checkpoint: a tiny, random-weight SD1.5 that ComfyUI loads.

No machine of this project can download a real Stable Diffusion checkpoint, so the
ComfyUI server used by tests and demos gets one built from configuration:

* a **one-level SD1.5 UNet** (model_channels 320, context_dim 768, channel_mult [1],
  num_res_blocks [1], transformer_depth [1]) built by ComfyUI's own
  ``comfy.supported_models.SD15(unet_config).get_model({})``, so ComfyUI's model
  detection recognises it as SD1.5 from its keys;
* the full **CLIP-L** text encoder from ``comfy.sd1_clip.SD1ClipModel``, saved with
  the SD1.5 key layout (``process_clip_state_dict_for_saving``);
* a **TAESD** VAE (``comfy.taesd.taesd.TAESD``) under ``first_stage_model.``.

ComfyUI's ops skip weight initialisation, so every tensor is set here from one seeded
generator, in sorted key order: the file is byte-identical across runs with the same
seed. Its images are noise: it tests wiring, not quality.

Usage, from the repository's root (it imports ComfyUI, so it is a script, not part of ``pmg_core``)::

    .venv/bin/python -m scripts.make_tiny_checkpoint --out pmg-tiny-sd15.safetensors [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path

from pmg_tools.comfy_source import DEFAULT_COMFY_DIR, ensure_comfy_source_first, import_comfy_package
from pmg_tools.safetensors_stream import write_safetensors

# ComfyUI reads these from the key shapes; see comfy/model_detection.py::detect_unet_config.
UNET_CONFIG = {
    "use_checkpoint": False,
    "image_size": 32,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "channel_mult": [1],
    "transformer_depth_middle": 1,
    "use_linear_in_transformer": False,
    "context_dim": 768,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
}

log = logging.getLogger("make_tiny_checkpoint")


def import_comfy(comfy_dir: Path):
    """Import ComfyUI's model code from its source folder (first on the module path), forced onto the CPU."""
    import_comfy_package(comfy_dir)
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd

    return comfy


def init_tensor(name: str, like, generator):
    """A deterministic, numerically tame value for one tensor of the state dict.

    Matrices and kernels get N(0, 1/fan_in) so activations keep their scale through
    the random network (no inf/NaN in fp16); norm weights start at 1; other vectors
    (biases) get small noise. Everything is drawn, in order, from ``generator``.
    """
    import torch

    if not like.is_floating_point():
        # Integer buffers (e.g. position ids) keep their defined content.
        return like.clone()
    if name.endswith("vae_scale"):
        return torch.ones_like(like, dtype=torch.float32)
    if name.endswith("vae_shift"):
        return torch.zeros_like(like, dtype=torch.float32)
    if like.dim() >= 2:
        fan_in = like[0].numel()
        std = 1.0 / math.sqrt(fan_in)
        return torch.randn(like.shape, generator=generator, dtype=torch.float32) * std
    if like.dim() == 1 and name.endswith(".weight"):
        # In this layout every 1-D weight is a GroupNorm/LayerNorm scale.
        return torch.ones(like.shape, dtype=torch.float32)
    return torch.randn(like.shape, generator=generator, dtype=torch.float32) * 0.02


def build_state_dict(comfy, seed: int) -> dict:
    """All tensors of the checkpoint, in the key layout of an SD1.5 ``.safetensors`` file."""
    import torch

    sd15 = comfy.supported_models.SD15(UNET_CONFIG)
    unet = sd15.get_model({}).diffusion_model
    clip = comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32)
    taesd = comfy.taesd.taesd.TAESD()

    parts = {}
    parts.update(sd15.process_unet_state_dict_for_saving(dict(unet.state_dict())))
    parts.update(sd15.process_clip_state_dict_for_saving(dict(clip.state_dict())))
    parts.update(sd15.process_vae_state_dict_for_saving(dict(taesd.state_dict())))

    generator = torch.Generator(device="cpu").manual_seed(seed)
    out = {}
    for name in sorted(parts):
        value = init_tensor(name, parts[name], generator)
        out[name] = value.to(torch.float16).contiguous() if value.is_floating_point() else value.contiguous()
    return out


def save(state_dict: dict, out: Path, seed: int) -> None:
    """Write atomically (temp file + rename) with metadata that says what this is.

    Written by ``pmg_tools.safetensors_stream`` rather than ``safetensors.save_file``, which
    orders the metadata map at random: two builds of the same weights would differ in bytes.
    """
    n_params = sum(t.numel() for t in state_dict.values())
    metadata = {
        "pmg_kind": "random-weight test checkpoint",
        "description": "Tiny SD1.5-layout checkpoint with RANDOM weights built by "
        "scripts/make_tiny_checkpoint.py: it tests wiring, its images are noise.",
        "seed": str(seed),
        "parameters": str(n_params),
        "unet_config": json.dumps(UNET_CONFIG, sort_keys=True),
        "vae": "TAESD layout (random)",
        "text_encoder": "CLIP-L layout (random)",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    write_safetensors(tmp, state_dict, state_dict.__getitem__, metadata)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the .safetensors file")
    parser.add_argument("--seed", type=int, default=0, help="seed of every weight (default 0)")
    parser.add_argument("--comfy-dir", type=Path, default=DEFAULT_COMFY_DIR, help="ComfyUI source folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    ensure_comfy_source_first("scripts.make_tiny_checkpoint", sys.argv[1:] if argv is None else argv, args.comfy_dir)

    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    comfy = import_comfy(args.comfy_dir)
    state_dict = build_state_dict(comfy, args.seed)
    save(state_dict, args.out, args.seed)
    log.info("wrote %s (%d tensors, %.1f MB)", args.out, len(state_dict), args.out.stat().st_size / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
