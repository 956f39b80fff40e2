"""SecMI_stat, step-wise error comparison (Duan et al., ICML 2023, "Are diffusion models vulnerable
to membership inference attacks?").

x_0 is carried to step t = t_sec - k by deterministic DDIM inversion in steps of k (from step 0,
eps queried at the current step), then one more inversion step to t + k and one DDIM denoising step
back to t; the statistic is the squared L2 error ||x_t - x_t'||^2 (small for members, so the score
is its negative). Defaults t_sec = 100, k = 10, as the authors' ``secmia.py`` (``--t_sec 100 --k 10``),
which compares at step t_sec - k; t_sec / k + 1 queries per image. ``--timesteps`` scans t_sec
(multiples of k) along one inversion chain, as kong13661/PIA's ``SecMIAttacker`` does.
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


def error_maps(predictor, x0, conditions, t_secs: list[int], k: int) -> list:
    """x_t - x_t' (t = t_sec - k) for each t_sec of ``t_secs`` (multiples of k), along one inversion chain."""
    wanted, maps = set(int(t) for t in t_secs), {}
    x, t = x0, 0
    while t + k <= max(wanted):
        forward = ddim_step(predictor, x, t, t + k, conditions)  # the chain's next point is the comparison's x_{t+k}
        if t + k in wanted:
            maps[t + k] = x - ddim_step(predictor, forward, t + k, t, conditions)
        x, t = forward, t + k
    return [maps[int(t)] for t in t_secs]


def score(predictor, x0, conditions, settings: dict) -> np.ndarray:
    return -lp_sum(error_maps(predictor, x0, conditions, [int(settings["t_sec"])], int(settings["k"]))[0], 2)


def scan(predictor, x0, conditions, settings: dict, timesteps: list[int]) -> np.ndarray:
    return np.stack([-lp_sum(m, 2) for m in error_maps(predictor, x0, conditions, timesteps, int(settings["k"]))])


ATTACK = Attack("secmi", "Duan et al., ICML 2023 (SecMI_stat)", score, {"t_sec": 100, "k": 10},
                lambda s: int(s["t_sec"]) // int(s["k"]) + 1, timestep_key="t_sec",
                timestep_source="Duan et al. 2023 and their secmia.py (--t_sec 100 --k 10)", scan_function=scan)
