"""PIA, the Proximal Initialization Attack (Kong et al., ICLR 2024).

The model's own output at t = 0, eps_0 = eps_theta(x_0, 0), stands in for the noise ("proximal
initialization"); x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_0 is the deterministic point at
step t, and the statistic is || eps_0 - eps_theta(x_t, t) ||_4^4 (the authors' ``lp=4`` distance,
summed over elements). Members give a small distance; the score is its negative. Two queries per
image, no randomness. Default t = 200 of 1000, the authors' DDPM setting.
"""

from __future__ import annotations

import numpy as np

from .base import Attack, lp_sum


def score(predictor, x0, conditions, settings: dict) -> np.ndarray:
    t = int(settings["timestep"])
    abar = float(predictor.alphas_cumprod[t])
    eps0 = predictor.eps(x0, 0, conditions)
    x_t = abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps0
    return -lp_sum(eps0 - predictor.eps(x_t, t, conditions), int(settings["p"]))


ATTACK = Attack("pia", "Kong et al., ICLR 2024 (PIA)", score, {"timestep": 200, "p": 4}, lambda s: 2)
