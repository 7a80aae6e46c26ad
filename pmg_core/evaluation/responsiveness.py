"""Does the generator follow its condition, and do its stickers look like emoji?

* **Responsiveness**: one sticker for the name of every held-out emoji (names
  the generator never trained on), judged by the category classifier; its
  accuracy is compared with the classifier's accuracy on the real held-out images.
* **Image quality**: a Fréchet distance between generated and real held-out
  stickers on LPIPS-AlexNet features (each layer's unit-normalised activations,
  spatially averaged: 1,152 values per image), beside the distance between two
  halves of the real images, with the same number of images on each side.
* **The autoencoder's ceiling**: the held-out emoji encoded and decoded by the
  generator's own autoencoder. No sticker can be sharper than its decoder draws,
  so the reconstruction LPIPS and Fréchet distance bound every generated figure.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..sticker_model.dataset import EmojiImage, image_tensor
from ..sticker_model.sampling import sample_euler
from ..metrics.lpips import LPIPS
from .judge import CategoryJudge, accuracy
from .stats import bootstrap_mean


@torch.no_grad()
def sample_latents_for_names(pipeline, names: list[str], seed: int, steps: int, cfg: float, batch: int = 64,
                             progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """The denoiser's latents of one sticker per name ``[N, C, h, w]``, prompts batched (each batch one seed, as in ComfyUI)."""
    encoder, generator = pipeline.encoder, pipeline.generator
    uncond = encoder.encode([""]).embeddings
    channels, side = generator.autoencoder.latent_channels, generator.image_size // 8
    out = []
    for start in range(0, len(names), batch):
        chunk = names[start : start + batch]
        cond = encoder.encode(chunk).embeddings
        out.append(sample_euler(generator.denoiser, cond, uncond, (len(chunk), channels, side, side), seed + start, steps, cfg))
        if progress is not None:
            progress(min(start + batch, len(names)), len(names))
    return torch.cat(out)


@torch.no_grad()
def decode_in_batches(autoencoder, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([autoencoder.decode(latents[i : i + batch]).float().cpu() for i in range(0, len(latents), batch)])


def generate_for_names(pipeline, names: list[str], seed: int, steps: int, cfg: float, batch: int = 64,
                       progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """One sticker per name ``[N, 3, 64, 64]`` (:func:`sample_latents_for_names`, decoded)."""
    latents = sample_latents_for_names(pipeline, names, seed, steps, cfg, batch, progress)
    return decode_in_batches(pipeline.generator.autoencoder, latents, batch)


def lpips_features(lpips: LPIPS, images: torch.Tensor) -> np.ndarray:
    """``[N, 1152]``: each AlexNet layer's unit-normalised activations averaged over space."""
    return torch.cat([layer.mean(dim=(2, 3)) for layer in lpips.features(images)], dim=1).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` and ``b``."""
    from scipy import linalg

    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@torch.no_grad()
def autoencoder_ceiling(autoencoder, lpips: LPIPS, real: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The real images through encode/decode ``[N, 3, H, W]``, and each one's LPIPS to its original ``[N]``."""
    device = next(autoencoder.parameters()).device
    rebuilt = torch.cat([autoencoder.decode(autoencoder.encode(real[i : i + batch].to(device))).float().cpu()
                         for i in range(0, len(real), batch)])
    return rebuilt, lpips.distance(rebuilt, real)


def reconstruction_report(autoencoder, lpips: LPIPS, real: torch.Tensor, real_features: np.ndarray, halves,
                          seed: int = 0) -> dict:
    """The autoencoder's ceiling on ``real``: LPIPS (AlexNet), SSIM and L1 to the originals, and the Fréchet distance.

    SSIM and L1 stand beside LPIPS because a decoder trained with a perceptual loss is partly
    trained on what LPIPS measures: a gain only there would be the metric, not the pictures.
    """
    from ..metrics.ssim import ssim

    rebuilt, distance = autoencoder_ceiling(autoencoder, lpips, real)
    half_a, half_b = halves
    return {
        "reconstruction_lpips": bootstrap_mean(distance.tolist(), seed).to_dict(),
        "reconstruction_ssim": bootstrap_mean(ssim(rebuilt, real).tolist(), seed).to_dict(),
        "reconstruction_l1": bootstrap_mean((rebuilt - real).abs().mean(dim=(1, 2, 3)).tolist(), seed).to_dict(),
        "frechet_reconstructed_vs_real": frechet_distance(lpips_features(lpips, rebuilt)[half_a], real_features[half_b]),
    }


def responsiveness_report(pipeline, judge: CategoryJudge, lpips: LPIPS, held_out: list[EmojiImage], seed: int = 0,
                          steps: int = 20, cfg: float = 5.0, progress: Callable[[int, int], None] | None = None,
                          latents: torch.Tensor | None = None) -> dict:
    """Judge accuracy on generated vs real held-out emoji, and the Fréchet distances; plus the images and latents.

    ``latents`` (the same denoiser's, e.g. of another file that only differs in its decoder) skip the sampling.
    """
    real = image_tensor(held_out, 64)
    labels = torch.tensor([image.category_index for image in held_out])
    if latents is None:
        latents = sample_latents_for_names(pipeline, [image.name for image in held_out], seed, steps, cfg, progress=progress)
    generated = decode_in_batches(pipeline.generator.autoencoder, latents)
    real_accuracy, generated_accuracy = accuracy(judge, real, labels), accuracy(judge, generated, labels)
    order = np.random.default_rng(seed).permutation(len(held_out))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2 :]
    real_features, generated_features = lpips_features(lpips, real), lpips_features(lpips, generated)
    return {
        "held_out_images": len(held_out),
        "judge_accuracy_real": real_accuracy,
        "judge_accuracy_generated": generated_accuracy,
        "ratio": generated_accuracy / real_accuracy if real_accuracy else float("nan"),
        "chance": 1 / len(torch.unique(labels)),
        "frechet_generated_vs_real": frechet_distance(generated_features[half_a], real_features[half_b]),
        "frechet_real_halves": frechet_distance(real_features[half_a], real_features[half_b]),
        **reconstruction_report(pipeline.generator.autoencoder, lpips, real, real_features, (half_a, half_b), seed),
        "images": generated,
        "real": real,
        "latents": latents,
    }
