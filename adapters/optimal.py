"""The closed-form optimal denoiser of a finite training set, sampled with EDM's sampler.

For a training set {y_i}, the minimiser of the denoising objective is (Gu et al. 2023, eq. 3;
Karras et al. 2022, appendix B.3)

    D*(x; sigma) = sum_i softmax_i(-|x - y_i|^2 / (2 sigma^2)) y_i

Sampling the probability-flow ODE with it lands on training images: a model that memorizes
completely, needing no training. memaudit uses it as its positive control.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from memaudit.data import ImageSet
from memaudit.errors import ModelError
from memaudit.storage import fingerprint_json

from .base import Accepts, SamplerOptions, batches
from .edm import edm_sample, edm_settings, to_pixels
from .seeding import check_seeding, draw, generator_device

_BLOCK_ELEMENTS = 2**24  # training rows x pixels per block of the softmax


class OptimalDenoiser:
    """D*(x; sigma) over a training set, computed in blocks with a streaming softmax."""

    def __init__(self, train_images: np.ndarray, device: str = "cpu"):
        import torch

        self.device = device
        flat = train_images.reshape(len(train_images), -1)
        self.dim = flat.shape[1]
        # float64: at sigma = 0.002 the softmax logits are |x - y|^2 / 8e-6, so distance errors
        # of float32 size would reorder near neighbours.
        # (a writable float64 copy: the images are often a read-only memory map, which torch warns of)
        self.train = torch.from_numpy(np.array(flat, dtype=np.float64)).to(device=device) / 127.5 - 1.0
        self.train_sq = (self.train * self.train).sum(1)
        self.block = max(1, _BLOCK_ELEMENTS // self.dim)

    def __call__(self, x, sigma: float):
        import torch

        x_sq = (x * x).sum(1, keepdim=True)
        running_max = torch.full((len(x), 1), -torch.inf, dtype=x.dtype, device=x.device)
        weight_sum = torch.zeros((len(x), 1), dtype=x.dtype, device=x.device)
        weighted = torch.zeros_like(x)
        for start in range(0, len(self.train), self.block):
            y = self.train[start:start + self.block]
            sq_dist = (x_sq - 2.0 * x @ y.T + self.train_sq[start:start + self.block]).clamp_min(0)
            logits = -sq_dist / (2.0 * sigma * sigma)
            new_max = torch.maximum(running_max, logits.max(1, keepdim=True).values)
            rescale = torch.exp(running_max - new_max)
            weights = torch.exp(logits - new_max)
            weight_sum = weight_sum * rescale + weights.sum(1, keepdim=True)
            weighted = weighted * rescale + weights @ y
            running_max = new_max
        return weighted / weight_sum


class OptimalAdapter:
    """The ``optimal`` model: the training set's optimal denoiser, sampled with EDM's sampler from
    EDM-seeded noise, as DiffMemorize's ``generate_optim.py`` samples its ``OptimEDM``."""

    accepts = Accepts(frozenset({"steps", "seeding", "sampler_options"}),
                      "the optimal denoiser (unconditional, EDM's sampler in float64)")

    def __init__(self, spec: str, train: ImageSet, options: SamplerOptions):
        self.spec = spec
        self.seeding = check_seeding(options.seeding)
        # OptimEDM supports every noise level (sigma_min 0, sigma_max inf) and rounds none.
        self.edm = edm_settings(options.steps, options.sampler_options, "the optimal model")
        if self.edm.stochastic and self.seeding != "edm":
            raise ModelError(f"--sampler-option S_churn {self.edm.S_churn}: stochastic sampling draws its noise "
                             "from each seed's generator and needs --seeding edm")
        self.steps = self.edm.steps
        self.device = options.device
        self._train = train
        self._denoiser = OptimalDenoiser(train.images, options.device)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._train.image_shape

    def settings(self) -> dict[str, Any]:
        return {
            "adapter": "optimal",
            "train_fingerprint": self._train.fingerprint,
            "sampler": "edm-heun" if not self.edm.stochastic else "edm-stochastic",
            "model_evaluations": 2 * self.edm.steps - 1,
            **self.edm.record(),
            "seeding": self.seeding,
            "noise_device": generator_device(self.device) if self.seeding == "edm" else "cpu",
        }

    def fingerprint(self) -> str:
        return fingerprint_json(self.settings())

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        return {}  # unconditional

    def _denoise(self, x, sigma):
        """D*(x; sigma) on NCHW images; the training rows are stored pixel-major (HWC) and the
        distances do not depend on the order of the coordinates."""
        batch = x.permute(0, 2, 3, 1).reshape(len(x), -1)
        return self._denoiser(batch, float(sigma)).reshape(x.permute(0, 2, 3, 1).shape).permute(0, 3, 1, 2)

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        import torch

        height, width, channels = self.image_shape
        out = []
        for chunk in batches(list(seeds), batch_size):
            # One generator per seed: sample i depends on seeds[i] only.
            seed_draw = draw(self.seeding, chunk, (channels, height, width), self.device, legacy_pixel_major=True)
            x = edm_sample(self._denoise, seed_draw.latents, self.edm, randn_like=seed_draw.randn_like)
            out.append(to_pixels(x))
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.uint8)
