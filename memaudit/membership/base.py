"""What every membership-inference attack is: a named score with its paper's default settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Attack:
    """``score(predictor, x0, conditions, settings)`` returns float64 scores, higher = more likely a member.

    ``defaults`` are the paper's settings (timesteps on the 1000-step DDPM schedule); ``queries``
    says how many noise-predictor calls one image costs under given settings.
    """

    name: str
    paper: str
    score: Callable[..., np.ndarray]
    defaults: dict[str, Any] = field(default_factory=dict)
    queries: Callable[[dict], int] = lambda settings: 1
    timestep_key: str = "timestep"  # the setting whose x_t the report's reconstruction starts from


def noise_batch(shape: tuple[int, ...], seed: int, device):
    """One fixed N(0, I) draw of ``shape`` from its own seed: the same noise for every image and batch."""
    import torch

    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed))).to(device)


def lp_sum(difference, p: int) -> np.ndarray:
    """sum |d|^p over each image's elements (the authors' ``distance``), as float64 numpy."""
    return difference.abs().double().pow(p).flatten(1).sum(1).cpu().numpy()
