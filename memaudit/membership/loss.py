"""The loss attack: the denoising loss at one timestep (Matsumoto et al. 2023, "Membership inference
attacks against diffusion models"; Carlini et al. 2023, "Extracting training data from diffusion
models", section 6).

For a fixed set of noises eps_k, L(x_0) = mean_k ||eps_k - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_k, t)||^2;
a member is trained to a low loss, so the score is -L. Carlini et al. find the loss most
informative at small-to-middle noise and attack at t = 100 of 1000; the noises are seeded
(seed 0..n-1, the same for every image) so that scores repeat exactly.
"""

from __future__ import annotations

import numpy as np

from .base import Attack, lp_sum, noise_batch


def score(predictor, x0, conditions, settings: dict) -> np.ndarray:
    t, draws = int(settings["timestep"]), int(settings["noises"])
    abar = float(predictor.alphas_cumprod[t])
    total = np.zeros(len(x0))
    for k in range(draws):
        eps = noise_batch(tuple(x0.shape[1:]), k, x0.device).expand_as(x0)
        x_t = abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps
        total += lp_sum(eps - predictor.eps(x_t, t, conditions), 2)
    return -total / draws


ATTACK = Attack("loss", "Matsumoto et al. 2023; Carlini et al. 2023 section 6", score,
                {"timestep": 100, "noises": 4}, lambda s: int(s["noises"]))
