"""The closed-form optimal denoiser of a finite training set, sampled with EDM's Heun sampler.

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
from memaudit.storage import fingerprint_json

from .base import Accepts, SamplerOptions, batches
from .edm import EDM_STEPS, RHO, SIGMA_MAX, SIGMA_MIN, edm_sigmas, heun_sample

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
        self.train = torch.from_numpy(flat).to(device=device, dtype=torch.float64) / 127.5 - 1.0
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
    """The ``optimal`` model: the training set's optimal denoiser, sampled deterministically."""

    accepts = Accepts(frozenset({"steps"}), "the optimal denoiser (unconditional, EDM's Heun sampler in float64)")

    def __init__(self, spec: str, train: ImageSet, options: SamplerOptions):
        self.spec = spec
        self.steps = options.steps or EDM_STEPS
        if self.steps < 2:
            from memaudit.errors import InputError

            raise InputError(f"--steps {self.steps}: the optimal model's Heun sampler needs at least 2 steps")
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
            "sampler": "edm-heun",
            "steps": self.steps,
            "model_evaluations": 2 * self.steps - 1,
            "sigma_min": SIGMA_MIN,
            "sigma_max": SIGMA_MAX,
            "rho": RHO,
        }

    def fingerprint(self) -> str:
        return fingerprint_json(self.settings())

    def conditioning(self, seeds: Sequence[int]) -> dict[str, list]:
        return {}  # unconditional

    def sample(self, seeds: Sequence[int], batch_size: int, conditioning: Any = None) -> np.ndarray:
        import torch

        sigmas = edm_sigmas(self.steps)
        out = []
        for chunk in batches(list(seeds), batch_size):
            # One generator per seed: sample i depends on seeds[i] only.
            noise = torch.stack([
                torch.randn(self._denoiser.dim, generator=torch.Generator().manual_seed(int(s)))
                for s in chunk
            ]).to(device=self.device, dtype=torch.float64)
            x = heun_sample(self._denoiser, noise, sigmas)
            pixels = (x * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)  # EDM's output quantisation
            out.append(pixels.cpu().numpy().reshape(len(chunk), *self.image_shape))
        return np.concatenate(out) if out else np.zeros((0, *self.image_shape), np.uint8)
