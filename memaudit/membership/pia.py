"""PIA, the Proximal Initialization Attack (Kong et al., ICLR 2024).

The model's own output at t = 0, eps_0 = eps_theta(x_0, 0), stands in for the noise ("proximal
initialization"); x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps_0 is the deterministic point at
step t, and the statistic is || eps_0 - eps_theta(x_t, t) ||_4^4 (the authors' ``lp=4`` distance,
summed over elements). Members give a small distance; the score is its negative. Two queries per
image, no randomness. Default t = 200 of 1000, the step of the paper's DDPM results; the authors'
``attack.py`` prints one AUC per step of t = 10, 20, ..., 300 (``attack_num=30, interval=10``):
``--timesteps 10:300:10`` gives that scan (eps_0 computed once, one more query per step).
"""

from __future__ import annotations

import numpy as np

from .base import Attack, lp_sum


def _distance(predictor, x0, eps0, t: int, conditions, p: int) -> np.ndarray:
    abar = float(predictor.alphas_cumprod[t])
    x_t = abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps0
    return -lp_sum(eps0 - predictor.eps(x_t, t, conditions), p)


def score(predictor, x0, conditions, settings: dict) -> np.ndarray:
    eps0 = predictor.eps(x0, 0, conditions)
    return _distance(predictor, x0, eps0, int(settings["timestep"]), conditions, int(settings["p"]))


def scan(predictor, x0, conditions, settings: dict, timesteps: list[int]) -> np.ndarray:
    eps0 = predictor.eps(x0, 0, conditions)
    return np.stack([_distance(predictor, x0, eps0, int(t), conditions, int(settings["p"])) for t in timesteps])


ATTACK = Attack("pia", "Kong et al., ICLR 2024 (PIA)", score, {"timestep": 200, "p": 4}, lambda s: 2,
                timestep_source="Kong et al. 2024, the step of their DDPM results; their attack.py scans 10..300 "
                                "(attack_num=30, interval=10)", scan_function=scan)
