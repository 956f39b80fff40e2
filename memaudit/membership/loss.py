"""The loss attack: the denoising loss at one timestep (Matsumoto et al. 2023, "Membership inference
attacks against diffusion models"; Carlini et al. 2023, "Extracting training data from diffusion
models", section 6).

L(x_0) = mean_k ||eps_k - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_k, t)||^2; a member is
trained to a low loss, so the score is -L. Carlini et al. find the loss most informative at
small-to-middle noise and attack at t = 100 of 1000. Two estimators (``--loss-noise``):

- ``shared`` (the default): ``noises`` = 4 noises drawn from seeds 0..3, the same for every image.
  Every image is measured under the same noises (common random numbers), so the comparison between
  members and non-members carries no noise-draw variance of its own, and scores repeat exactly.
- ``per-image``: each image draws its own ``noises`` noises (default 1, as the authors' naive
  baselines: kong13661/PIA's ``NaiveAttacker`` draws ``torch.randn_like(x0)`` per image). Each
  draw comes from a generator seeded by the image's content digest, the draw number and the
  ``seed`` setting, so a score does not depend on the batch, the order or the other images.
"""

from __future__ import annotations

import hashlib

import numpy as np

from memaudit.errors import InputError

from .base import Attack, lp_sum, noise_batch

NOISE_MODES = ("shared", "per-image")


def image_keys(images: np.ndarray) -> np.ndarray:
    """A 63-bit content digest of each image (uint8 NHWC): what per-image noise is seeded from."""
    return np.array([int.from_bytes(hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()[:8], "little") >> 1
                     for image in images], dtype=np.int64)


def per_image_noise(keys: np.ndarray, draw: int, seed: int, shape: tuple[int, ...], device):
    """Noise number ``draw`` of each image: N(0, I) from a generator seeded by (image digest, draw, seed)."""
    import torch

    rows = []
    for key in keys:
        mixed = int.from_bytes(hashlib.sha256(f"{int(key)}:{int(draw)}:{int(seed)}".encode()).digest()[:8], "little") >> 1
        rows.append(torch.randn(shape, generator=torch.Generator("cpu").manual_seed(mixed)))
    return torch.stack(rows).to(device)


def noises_for(x0, conditions, settings: dict, draw: int):
    if settings.get("noise", "shared") == "per-image":
        if conditions.keys is None:
            raise InputError("--loss-noise per-image: the images' content digests are missing (score through run_mia)")
        return per_image_noise(conditions.keys, draw, int(settings.get("seed", 0)), tuple(x0.shape[1:]), x0.device)
    return noise_batch(tuple(x0.shape[1:]), draw, x0.device).expand_as(x0)


def score(predictor, x0, conditions, settings: dict) -> np.ndarray:
    t, draws = int(settings["timestep"]), int(settings["noises"])
    abar = float(predictor.alphas_cumprod[t])
    total = np.zeros(len(x0))
    for k in range(draws):
        eps = noises_for(x0, conditions, settings, k)
        x_t = abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps
        total += lp_sum(eps - predictor.eps(x_t, t, conditions), 2)
    return -total / draws


def settings_for(noise: str, overrides: dict) -> dict:
    """The loss attack's overrides under ``--loss-noise``: per-image draws one noise unless told otherwise."""
    if noise not in NOISE_MODES:
        raise InputError(f"--loss-noise {noise}: expected one of {', '.join(NOISE_MODES)}")
    if noise == "shared":
        return {"noise": "shared", **overrides}
    return {"noise": "per-image", "noises": 1, **overrides}


ATTACK = Attack("loss", "Matsumoto et al. 2023; Carlini et al. 2023 section 6", score,
                {"timestep": 100, "noises": 4, "noise": "shared", "seed": 0}, lambda s: int(s["noises"]),
                timestep_source="Carlini et al. 2023 section 6 (the loss at t = 100 of 1000)")
