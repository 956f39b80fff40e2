"""SecMI_stat, step-wise error comparison (Duan et al., ICML 2023, "Are diffusion models vulnerable
to membership inference attacks?").

x_0 is carried to step t = t_sec - k by deterministic DDIM inversion in steps of k (from step 0,
eps queried at the current step), then one more inversion step to t + k and one DDIM denoising step
back to t; the statistic is the squared L2 error ||x_t - x_t'||^2 (small for members, so the score
is its negative). Defaults t_sec = 100, k = 10, as the authors' ``secmia.py`` (``--t_sec 100 --k 10``),
which compares at step t_sec - k; t_sec / k + 1 queries per image.
"""

from __future__ import annotations

import numpy as np

from .base import Attack, lp_sum


def ddim_step(predictor, x, t_from: int, t_to: int, conditions):
    """One deterministic DDIM move from step t_from to t_to (either direction), eps queried at t_from."""
    a_from, a_to = float(predictor.alphas_cumprod[t_from]), float(predictor.alphas_cumprod[t_to])
    eps = predictor.eps(x, t_from, conditions)
    x0 = (x - (1.0 - a_from) ** 0.5 * eps) / a_from ** 0.5
    return a_to ** 0.5 * x0 + (1.0 - a_to) ** 0.5 * eps


def score(predictor, x0, conditions, settings: dict) -> np.ndarray:
    t_sec, k = int(settings["t_sec"]), int(settings["k"])
    x, t = x0, 0
    for target in range(k, t_sec, k):  # inversion 0 -> k -> ... -> t_sec - k
        x, t = ddim_step(predictor, x, t, target, conditions), target
    forward = ddim_step(predictor, x, t, t + k, conditions)
    back = ddim_step(predictor, forward, t + k, t, conditions)
    return -lp_sum(x - back, 2)


ATTACK = Attack("secmi", "Duan et al., ICML 2023 (SecMI_stat)", score, {"t_sec": 100, "k": 10},
                lambda s: int(s["t_sec"]) // int(s["k"]) + 1, timestep_key="t_sec")
