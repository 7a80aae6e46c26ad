"""Loading SD1.x single-file checkpoints and diffusers folders (tiny random models: mechanics only).

The synthetic checkpoints are written here in the original LDM/ComfyUI key layout by
a small hand-written diffusers→LDM exporter, so the loader's key inference and
conversion are checked against modules whose outputs are known.
"""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from pmg_core.errors import ModelLoadError
from pmg_core.sd_checkpoint import (
    CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    infer_unet_config,
    load_sd_components,
)


# --------------------------------------------------------------------------- tiny diffusers models


def _tiny_unet(layers_per_block=1, depth=1, block_out=(32, 64), attention=(True, False)):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=block_out,
        layers_per_block=layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        cross_attention_dim=64,
        attention_head_dim=8,
        transformer_layers_per_block=depth,
        norm_num_groups=32,
    ).eval()


def _tiny_clip():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


def _tiny_kl_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(2)
    return AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=32,
        layers_per_block=1,
    ).eval()


def _tiny_taesd():
    from diffusers import AutoencoderTiny

    torch.manual_seed(3)
    return AutoencoderTiny().eval()


# --------------------------------------------------------------------------- diffusers -> LDM exporter


_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]


def _resnet_key(rest: str) -> str:
    for new, old in _RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    raise AssertionError(rest)


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    cfg = unet.config
    n = cfg.layers_per_block
    attn = [t.startswith("CrossAttn") for t in cfg.down_block_types]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out = {}
    for key, value in unet.state_dict().items():
        head, _, leaf = key.rpartition(".")
        if head in fixed:
            out[f"{fixed[head]}.{leaf}"] = value
            continue
        if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            out[f"input_blocks.{1 + b * (n + 1) + layer}.0.{_resnet_key(rest)}"] = value
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            out[f"input_blocks.{1 + b * (n + 1) + layer}.1.{rest}"] = value
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            b, rest = int(m[1]), m[2]
            out[f"input_blocks.{(b + 1) * (n + 1)}.0.op.{rest}"] = value
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
            out[f"middle_block.{2 * int(m[1])}.{_resnet_key(m[2])}"] = value
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            out[f"output_blocks.{b * (n + 1) + layer}.0.{_resnet_key(rest)}"] = value
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            b, layer, rest = int(m[1]), int(m[2]), m[3]
            out[f"output_blocks.{b * (n + 1) + layer}.1.{rest}"] = value
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            b, rest = int(m[1]), m[2]
            slot = 2 if list(reversed(attn))[b] else 1
            out[f"output_blocks.{b * (n + 1) + n}.{slot}.conv.{rest}"] = value
        else:
            raise AssertionError(f"unmapped UNet key {key}")
    return {UNET_PREFIX + k: v for k, v in out.items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    attn_names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in vae.state_dict().items():
        k = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)", k):
            name = attn_names[m[2]]
            if value.ndim == 2:  # LDM stores attention projections as 1x1 convs
                value = value[:, :, None, None]
            out[f"{m[1]}.mid.attn_1.{name}.{m[3]}"] = value
            continue
        k = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block", k)
        k = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample", k
        )
        out[k] = value
    return {VAE_PREFIX + k: v for k, v in out.items()}


def taesd_to_comfy(vae, vae_scale=1.0, vae_shift=0.0) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in vae.state_dict().items():
        if key.startswith("encoder.layers."):
            out["taesd_encoder." + key[len("encoder.layers.") :]] = value
        elif key.startswith("decoder.layers."):
            index, rest = key[len("decoder.layers.") :].split(".", 1)
            out[f"taesd_decoder.{int(index) + 1}.{rest}"] = value
    out["vae_scale"] = torch.tensor(vae_scale)
    out["vae_shift"] = torch.tensor(vae_shift)
    return {VAE_PREFIX + k: v for k, v in out.items()}


def clip_to_ldm(clip) -> dict[str, torch.Tensor]:
    # LDM files name the tower 'text_model.' (transformers>=5 drops that level in memory).
    return {CLIP_PREFIX + "text_model." + k: v for k, v in clip.state_dict().items()}


def _write(path, *parts):
    state = {}
    for part in parts:
        state.update({k: v.contiguous() for k, v in part.items()})
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def tiny_parts():
    return {"unet": _tiny_unet(), "clip": _tiny_clip(), "vae": _tiny_kl_vae(), "taesd": _tiny_taesd()}


# --------------------------------------------------------------------------- tests


def test_single_file_round_trip_gives_identical_outputs(tmp_path, tiny_parts):
    """Mechanics: UNet, CLIP and KL VAE written in LDM layout load back with identical outputs."""
    unet, clip, vae = tiny_parts["unet"], tiny_parts["clip"], tiny_parts["vae"]
    path = _write(tmp_path / "tiny.safetensors", unet_to_ldm(unet), clip_to_ldm(clip), vae_to_ldm(vae))

    loaded = load_sd_components(path)

    assert loaded.text_width == 64
    assert loaded.name == "tiny" and len(loaded.content_hash) == 64
    assert loaded.latent_scaling == pytest.approx(0.18215)
    torch.manual_seed(5)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 9, 64)
    with torch.no_grad():
        assert torch.equal(unet(x, t, cond).sample, loaded.unet(x, t, cond).sample)
        ids = loaded.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert torch.equal(clip(ids).last_hidden_state, loaded.text_encoder(ids).last_hidden_state)
        image = torch.rand(1, 3, 16, 16) * 2 - 1
        assert torch.equal(vae.encode(image).latent_dist.mean, loaded.vae.encode(image).latent_dist.mean)
        z = torch.randn(1, 4, 8, 8)
        assert torch.equal(vae.decode(z).sample, loaded.vae.decode(z).sample)
    assert all(not p.requires_grad for p in loaded.unet.parameters())


def test_taesd_vae_and_deeper_unet_round_trip(tmp_path, tiny_parts):
    """Mechanics: TAESD keys (ComfyUI layout) and a 2-res-block, depth-2 UNet convert exactly."""
    unet = _tiny_unet(layers_per_block=2, depth=2, attention=(True, True))
    taesd = tiny_parts["taesd"]
    path = _write(
        tmp_path / "taesd.safetensors",
        unet_to_ldm(unet),
        clip_to_ldm(tiny_parts["clip"]),
        taesd_to_comfy(taesd, vae_scale=0.5, vae_shift=0.1),
    )
    loaded = load_sd_components(path)

    cfg = loaded.unet.config
    assert cfg.layers_per_block == 2 and cfg.transformer_layers_per_block == 2
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        x, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.randn(1, 5, 64)
        assert torch.equal(unet(x, t, cond).sample, loaded.unet(x, t, cond).sample)
        raw = taesd.encode(image).latents
        assert torch.equal(raw, loaded.vae.encode(image).latents)
    # ComfyUI semantics: the UNet sees (raw / vae_scale + vae_shift) * 0.18215.
    expected = (raw / 0.5 + 0.1) * 0.18215
    got = (raw - loaded.latent_shift) * loaded.latent_scaling
    assert torch.allclose(got, expected, atol=1e-6)


def test_unet_config_is_inferred_from_keys(tiny_parts):
    """Mechanics: levels, channels, attention placement and context width come from the keys."""
    cfg = infer_unet_config(unet_to_ldm(tiny_parts["unet"]))
    assert cfg["block_out_channels"] == [32, 64]
    assert cfg["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert cfg["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D"]
    assert cfg["cross_attention_dim"] == 64 and cfg["layers_per_block"] == 1
    assert cfg["use_linear_projection"] is False


def _deeper_first_level(unet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first level's transformer one block deeper than the middle block's."""
    block, second = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.", UNET_PREFIX + "input_blocks.1.1.transformer_blocks.1."
    copies = {second + k[len(block) :]: v for k, v in unet.items() if k.startswith(block)}
    return {**unet, **copies}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda u: {k: v for k, v in u.items() if not k.endswith("input_blocks.0.0.weight")}, "lacks 'input_blocks.0.0.weight'"),
        (lambda u: {k: v for k, v in u.items() if "attn2.to_k" not in k}, "no cross-attention layers"),
        (lambda u: {**u, UNET_PREFIX + "input_blocks.4.0.in_layers.0.weight": torch.zeros(1)}, r"uneven .* \(\[1, 2\]\)"),
        (_deeper_first_level, r"mixes transformer depths \[2, 0\] \(middle 1\)"),
    ],
    ids=["no-conv-in", "no-cross-attention", "uneven-levels", "mixed-depths"],
)
def test_unet_layouts_the_reader_cannot_convert_are_refused(tiny_parts, edit, message):
    """Each UNet check names what it found (the tiny UNet unedited is read: see the test above)."""
    with pytest.raises(ModelLoadError, match=message):
        infer_unet_config(edit(unet_to_ldm(tiny_parts["unet"])))


def test_diffusers_folder_is_accepted(tmp_path, tiny_parts):
    """Mechanics: a folder saved by diffusers/transformers loads with local files only."""
    from diffusers import DDPMScheduler

    tiny_parts["unet"].save_pretrained(tmp_path / "unet")
    tiny_parts["taesd"].save_pretrained(tmp_path / "vae")
    tiny_parts["clip"].save_pretrained(tmp_path / "text_encoder")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(tmp_path / "scheduler")
    loaded = load_sd_components(tmp_path)
    assert type(loaded.vae).__name__ == "AutoencoderTiny"
    assert loaded.scheduler.config.num_train_timesteps == 100
    assert loaded.latent_scaling == 1.0
    assert loaded.identity.startswith(tmp_path.name + "@")


@pytest.mark.parametrize(
    "state, message",
    [
        ({"lora_unet_down.weight": torch.zeros(1)}, "no 'model.diffusion_model"),
        ({UNET_PREFIX + "x": torch.zeros(1), "conditioner.embedders.0.x": torch.zeros(1)}, "SDXL"),
        ({UNET_PREFIX + "x": torch.zeros(1), "cond_stage_model.model.x": torch.zeros(1)}, "SD2"),
        ({UNET_PREFIX + "x": torch.zeros(1), CLIP_PREFIX + "x": torch.zeros(1)}, "first_stage_model"),
    ],
)
def test_unknown_layouts_are_refused(tmp_path, state, message):
    """Mechanics: files that are not SD1.x checkpoints raise ModelLoadError naming the layout."""
    path = _write(tmp_path / "bad.safetensors", state)
    with pytest.raises(ModelLoadError, match=message):
        load_sd_components(path)


def test_bad_paths_are_refused(tmp_path):
    """Mechanics: missing files, pickled .ckpt files and folders without diffusers parts are refused."""
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_sd_components(tmp_path / "nope.safetensors")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_sd_components(ckpt)
    with pytest.raises(ModelLoadError, match="unet/config.json"):
        load_sd_components(tmp_path)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_sd_components(garbage)


def test_tiny_comfyui_checkpoint_loads_and_runs(tiny_checkpoint):
    """Mechanics: the random-weight SD1.5-layout ComfyUI checkpoint (one UNet level, CLIP-L, TAESD) converts and runs."""
    loaded = load_sd_components(tiny_checkpoint)
    cfg = loaded.unet.config
    assert list(cfg.block_out_channels) == [320] and cfg.cross_attention_dim == 768
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D"] and cfg.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert type(loaded.vae).__name__ == "AutoencoderTiny" and loaded.text_width == 768
    with torch.no_grad():
        ids = loaded.tokenizer(["a red apple"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = loaded.text_encoder(ids).last_hidden_state
        out = loaded.unet(torch.randn(1, 4, 8, 8), torch.tensor([999]), encoder_hidden_states=text).sample
    assert text.shape == (1, 77, 768) and out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_broken_diffusers_folder_names_the_fix(tmp_path):
    """Mechanics: a folder with the diffusers configs but no loadable weights raises ModelLoadError saying what to pass
    instead."""
    for part in ("unet", "vae", "text_encoder"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text('{"_class_name": "AutoencoderKL"}', encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"Cannot load the diffusers folder .*save_pretrained\(\).*single-file"):
        load_sd_components(tmp_path)
