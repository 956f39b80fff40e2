"""EDM's sampler (Karras et al. 2022, Algorithm 2; deterministic Algorithm 1 when S_churn = 0), as
Gu et al. (2023) sample every model.

``edm_sample`` follows the arithmetic of EDM's ``generate.py`` ``edm_sampler`` step for step
(float64 state, the network's supported sigma range and ``round_sigma``, the churn noise drawn
from each seed's own generator), so that given the same initial noise it returns the same
images. It is a function of (denoiser, noise, settings) alone: any network in EDM's convention
can be sampled with it (the ``optimal`` model, EDM snapshots, networks memaudit trains)::

    seed_draw = seeding.draw("edm", seeds, (C, H, W), device)          # generate.py's noise per seed
    settings = EDMSettings(steps=18).for_network(net)
    x = edm_sample(lambda x, sigma: net(x, sigma, None), seed_draw.latents, settings,
                   net.round_sigma, seed_draw.randn_like)
    images = to_pixels(x)                                             # uint8 NHWC
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

from memaudit import progress
from memaudit.errors import InputError

# EDM's deterministic sampler settings used by Gu et al. (2023): 18 steps, 35 evaluations.
EDM_STEPS = 18
SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0


@dataclass(frozen=True)
class EDMSettings:
    """EDM ``generate.py``'s sampler options, under the names it gives them."""

    steps: int = EDM_STEPS
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX
    rho: float = RHO
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0

    @property
    def stochastic(self) -> bool:
        return self.S_churn > 0

    def for_network(self, net) -> "EDMSettings":
        """The noise range clipped to what the network supports, as ``edm_sampler`` does
        (``max(sigma_min, net.sigma_min)``, ``min(sigma_max, net.sigma_max)``; VE networks: 0.02)."""
        low = getattr(net, "sigma_min", 0.0)
        high = getattr(net, "sigma_max", math.inf)
        return dataclasses.replace(self, sigma_min=max(self.sigma_min, float(low)),
                                   sigma_max=min(self.sigma_max, float(high)))

    def record(self) -> dict:
        """JSON-ready settings (infinity as the string "inf")."""
        return {key: ("inf" if value == math.inf else value) for key, value in dataclasses.asdict(self).items()}


# --sampler-option KEY=VALUE: EDM generate.py's option names, each with its valid range.
SAMPLER_OPTIONS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "sigma_min": ("a positive noise level", lambda v: 0 < v < math.inf),
    "sigma_max": ("a positive noise level", lambda v: 0 < v < math.inf),
    "rho": ("a positive time step exponent", lambda v: 0 < v < math.inf),
    "S_churn": ("a stochasticity strength >= 0", lambda v: 0 <= v < math.inf),
    "S_min": ("a noise level >= 0", lambda v: 0 <= v),
    "S_max": ("a noise level >= 0 (inf allowed)", lambda v: 0 <= v),
    "S_noise": ("a finite noise inflation", lambda v: math.isfinite(v)),
}


def parse_sampler_options(items: list[str]) -> dict[str, float]:
    """``["S_churn=40", "sigma_min=0.02"]`` to ``{"S_churn": 40.0, "sigma_min": 0.02}``; names as in
    EDM's generate.py (case-insensitive)."""
    by_lower = {name.lower(): name for name in SAMPLER_OPTIONS}
    valid = ", ".join(SAMPLER_OPTIONS)
    parsed: dict[str, float] = {}
    for item in items:
        key, sep, text = item.partition("=")
        name = by_lower.get(key.strip().lower())
        if not sep or name is None:
            raise InputError(f"--sampler-option {item}: expected KEY=VALUE with KEY one of {valid}")
        try:
            value = float(text)
        except ValueError:
            raise InputError(f"--sampler-option {item}: {text!r} is not a number") from None
        what, valid_value = SAMPLER_OPTIONS[name]
        if not valid_value(value):
            raise InputError(f"--sampler-option {item}: {name} must be {what}")
        parsed[name] = value
    return parsed


def edm_settings(steps: int | None, options: dict[str, float], what: str) -> EDMSettings:
    """The sampler settings of ``--steps`` and ``--sampler-option``s; ``what`` names the model in errors."""
    settings = EDMSettings(steps=steps or EDM_STEPS, **options)
    if settings.steps < 2:
        raise InputError(f"--steps {settings.steps}: {what}'s EDM sampler needs at least 2 steps")
    if settings.sigma_min >= settings.sigma_max:
        raise InputError(f"--sampler-option: sigma_min {settings.sigma_min} must be below sigma_max {settings.sigma_max}")
    return settings


def _identity_round(sigma):
    import torch

    return torch.as_tensor(sigma)


def edm_time_steps(settings: EDMSettings, round_sigma=None, device="cpu"):
    """EDM's noise levels t_0 > ... > t_{N-1}, then t_N = 0 (Karras et al. 2022, eq. 5), in float64,
    computed as ``edm_sampler`` does; ``settings`` already clipped to the network (``for_network``)."""
    import torch

    round_sigma = round_sigma or _identity_round
    s = settings
    step_indices = torch.arange(s.steps, dtype=torch.float64, device=device)
    t_steps = (s.sigma_max ** (1 / s.rho) + step_indices / (s.steps - 1)
               * (s.sigma_min ** (1 / s.rho) - s.sigma_max ** (1 / s.rho))) ** s.rho
    return torch.cat([round_sigma(t_steps), torch.zeros_like(t_steps[:1])])


def edm_sigmas(steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO):
    """EDM's noise levels with a final 0 appended, as a numpy array."""
    if steps < 2:
        raise ValueError("the Heun sampler needs at least 2 steps")
    settings = EDMSettings(steps=steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    return edm_time_steps(settings).numpy()


def edm_sample(denoise, latents, settings: EDMSettings, round_sigma=None, randn_like=None):
    """Karras et al. (2022) Algorithm 2 (Heun, with churn when ``S_churn > 0``), as EDM's
    ``edm_sampler``: ``denoise(x, sigma)`` takes float64 x and a 0-d float64 sigma, returns D(x; sigma);
    ``latents`` is the unit-variance initial noise; ``randn_like`` draws the churn noise (each
    sample from its own seed's generator). Returns float64 images in about [-1, 1]."""
    import torch

    round_sigma = round_sigma or _identity_round
    t_steps = edm_time_steps(settings, round_sigma, latents.device)
    x_next = latents.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        # Increase noise temporarily. EDM draws the churn noise at every step, even where gamma is
        # 0, so a stochastic run must draw it at every step to stay on EDM's random stream; with no
        # churn at all the draw adds exactly 0 and is skipped.
        gamma = min(settings.S_churn / settings.steps, math.sqrt(2) - 1) if settings.S_min <= t_cur <= settings.S_max else 0
        t_hat = round_sigma(t_cur + gamma * t_cur)
        if settings.stochastic:
            if randn_like is None:
                raise ValueError("a stochastic EDM sampler (S_churn > 0) needs randn_like")
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * settings.S_noise * randn_like(x_cur)
        else:
            x_hat = x_cur
        # Euler step.
        denoised = denoise(x_hat, t_hat).to(torch.float64)
        d_cur = (x_hat - denoised) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        # 2nd order correction.
        if i < settings.steps - 1:
            denoised = denoise(x_next, t_next).to(torch.float64)
            d_prime = (x_next - denoised) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        progress.denoising_step(i + 1, settings.steps)
    return x_next


def to_pixels(images):
    """EDM's output quantisation: ``(x * 127.5 + 128).clip(0, 255).to(uint8)``, NCHW -> NHWC numpy."""
    import torch

    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

