"""EDM's deterministic sampler (Karras et al. 2022), as Gu et al. (2023) sample every model."""

from __future__ import annotations

import numpy as np

# EDM's deterministic sampler settings used by Gu et al. (2023): 18 steps, 35 evaluations.
EDM_STEPS = 18
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


def edm_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO) -> np.ndarray:
    """EDM's noise levels (Karras et al. 2022, eq. 5), with a final 0 appended."""
    if steps < 2:
        raise ValueError("the Heun sampler needs at least 2 steps")
    ramp = np.arange(steps) / (steps - 1)
    inv = sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return np.append(inv**rho, 0.0)


def heun_sample(denoise, noise, sigmas: np.ndarray):
    """EDM's deterministic 2nd-order sampler (Karras et al. 2022, Algorithm 1, no churn)."""
    x = noise * sigmas[0]
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        d_cur = (x - denoise(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if i < len(sigmas) - 2:
            d_next = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x
