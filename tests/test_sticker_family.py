"""The sticker generator inside ComfyUI (in-process): its MODEL, CLIP and VAE give what the library gives.

Mechanics on a seeded random generator file (these tests check the family's
wiring and the library's faithfulness to ComfyUI, not image quality): the
library's text encoder equals ComfyUI's BERT wrapper on the same prompts, the
library's VAE equals ComfyUI's, and the library's Euler sampler reproduces the
stock KSampler's latents for a seed. The shipped, trained generator is checked in
test_sticker_generator_server.py through the real server.
"""

from __future__ import annotations

import pytest
import torch
from fixtures_nodes import pack_submodule


@pytest.fixture(scope="session")
def random_generator_file(tmp_path_factory):
    from pmg_core.sticker_model.autoencoder import TinyAutoencoder
    from pmg_core.sticker_model.denoiser import UNET_CONFIG, StickerDenoiser
    from pmg_core.sticker_model.weights import save_sticker_model

    torch.manual_seed(0)
    autoencoder, denoiser = TinyAutoencoder(16), StickerDenoiser(**UNET_CONFIG)
    with torch.no_grad():  # a random output layer of zeros would hide a wrong sampler
        autoencoder.vae_scale.fill_(1.7)
        autoencoder.vae_shift.fill_(0.2)
    path = tmp_path_factory.mktemp("generator") / "random-sticker-generator.safetensors"
    save_sticker_model(path, autoencoder, denoiser, {"image_size": 64, "note": "random weights: mechanics only"})
    return path


@pytest.fixture(scope="session")
def family(pmg_pack, random_generator_file):
    return pack_submodule("nodes.sticker_family").load_sticker_family(random_generator_file)


@pytest.fixture(scope="session")
def library_generator(random_generator_file):
    from pmg_core.sticker_model.weights import load_sticker_model

    return load_sticker_model(random_generator_file)


@pytest.fixture(scope="session")
def minilm():
    from pmg_core.sticker_model.text_encoder import MiniLMTextEncoder

    return MiniLMTextEncoder()


def _comfy_encode(clip, text: str) -> torch.Tensor:
    return clip.encode_from_tokens(clip.tokenize(text))


PROMPTS = [
    "cat face",
    "",
    (
        "a cute emoji, sticker, white background, grinning cat with smiling eyes, happy, big smile, tears of joy, "
        "jumping with raised arms, wearing sunglasses, blushing cheeks, hand on chin"
    ),
]


@pytest.mark.parametrize("text", PROMPTS, ids=["short", "empty", "two-chunks"])
def test_library_text_encoder_equals_comfyui_bert_wrapper(family, minilm, text):
    _model, clip, _vae = family
    comfy_states = _comfy_encode(clip, text)
    library_states = minilm.encode([text]).embeddings
    assert comfy_states.shape == library_states.shape
    assert comfy_states.shape[1] % 32 == 0 and comfy_states.shape[2] == 384
    assert torch.allclose(comfy_states.float(), library_states, atol=1e-4), (comfy_states - library_states).abs().max()


def test_long_prompt_is_two_chunks(minilm):
    assert minilm.encode([PROMPTS[2]]).embeddings.shape[1] == 64
    assert minilm.encode(PROMPTS[:1] + PROMPTS[2:]).embeddings.shape == (2, 64, 384)


def test_library_vae_equals_comfyui_vae(family, library_generator):
    _model, _clip, vae = family
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    comfy_latents = vae.encode(images.permute(0, 2, 3, 1))
    library_latents = library_generator.autoencoder.encode(images)
    assert comfy_latents.shape == (2, 16, 8, 8)
    assert torch.allclose(comfy_latents, library_latents, atol=1e-4)
    comfy_images = vae.decode(library_latents).reshape(2, 64, 64, 3)
    assert torch.allclose(comfy_images, library_generator.autoencoder.decode(library_latents).permute(0, 2, 3, 1), atol=1e-4)


def test_library_sampler_reproduces_ksampler(family, library_generator, minilm):
    import comfy.sample

    from pmg_core.sticker_model.sampling import sample_euler

    model, clip, _vae = family
    cond = [[_comfy_encode(clip, "cat face"), {}]]
    uncond = [[_comfy_encode(clip, ""), {}]]
    empty = torch.zeros(2, 4, 8, 8)  # what EmptyLatentImage gives for 64x64; KSampler widens it to 16 channels
    latent = comfy.sample.fix_empty_latent_channels(model, empty)
    noise = comfy.sample.prepare_noise(latent, 7)
    comfy_out = comfy.sample.sample(model, noise, 6, 4.0, "euler", "normal", cond, uncond, latent, seed=7)

    def denoiser(x, t, context):
        return library_generator.denoiser(x, t, context)

    library_out = sample_euler(
        denoiser,
        minilm.encode(["cat face", "cat face"]).embeddings,
        minilm.encode([""]).embeddings,
        (2, 16, 8, 8),
        seed=7,
        steps=6,
        cfg=4.0,
    )
    assert comfy_out.shape == library_out.shape == (2, 16, 8, 8)
    assert torch.allclose(comfy_out, library_out, atol=1e-3), (comfy_out - library_out).abs().max()


def test_loader_node_lists_and_loads_a_generator(pmg_pack, random_generator_file):
    import shutil

    folder = pmg_pack.base.models / "pmg" / "generators"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(random_generator_file, folder / "random.safetensors")
    node = pmg_pack.nodes["PMGStickerGeneratorLoader"]
    assert "random.safetensors" in pack_submodule("nodes.comfy_paths").generator_choices()
    assert node.validate_inputs(generator="random.safetensors") is True
    model, clip, vae = node.execute(generator="random.safetensors").result
    assert model.model.latent_format.latent_channels == 16
    assert vae.latent_channels == 16
    assert _comfy_encode(clip, "cat face").shape == (1, 32, 384)


def test_the_packs_own_models_are_each_offered_where_they_belong(pmg_pack):
    """models/ ships a generator, a soft-prompt adapter, an image prompt projection and a judge, each in its
    kind's subfolder: each list offers only its kind, and no list offers the judge."""
    paths = pack_submodule("nodes.comfy_paths")
    generators, adapters = paths.generator_choices(), paths.adapter_choices()
    assert "pmg-sticker-generator.safetensors" in generators
    assert "pmg-sticker-adapter.safetensors" not in generators and "pmg-sticker-judge.safetensors" not in generators
    assert "pmg-sticker-adapter.safetensors" in adapters
    assert "pmg-sticker-generator.safetensors" not in adapters and "pmg-sticker-judge.safetensors" not in adapters
    assert paths.image_prompt_choices() == ["pmg-sticker-image-prompt.safetensors"]
    assert "pmg-sticker-image-prompt.safetensors" not in adapters and "pmg-sticker-image-prompt.safetensors" not in generators


def test_loader_node_names_a_missing_generator(pmg_pack):
    message = pmg_pack.nodes["PMGStickerGeneratorLoader"].validate_inputs(generator="nope.safetensors")
    assert isinstance(message, str) and "nope.safetensors" in message and "pmg train-generator" in message


def test_a_file_that_is_not_a_generator_is_refused(pmg_pack, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "adapter.safetensors"
    save_file({"bridge.weight": torch.zeros(2, 2)}, str(path), metadata={"format": "pmg-soft-prompt"})
    with pytest.raises(pmg_pack.errors.ModelLoadError, match="not a PMG sticker generator"):
        pack_submodule("nodes.sticker_family").load_sticker_family(path)
