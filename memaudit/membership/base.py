"""What every membership-inference attack is: a named score with its paper's default settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


def _scan_by_loop(attack: "Attack"):
    def scan(predictor, x0, conditions, settings: dict, timesteps: list[int]) -> np.ndarray:
        return np.stack([attack.score(predictor, x0, conditions, {**settings, attack.timestep_key: t}) for t in timesteps])
    return scan


@dataclass(frozen=True)
class Attack:
    """``score(predictor, x0, conditions, settings)`` returns float64 scores, higher = more likely a member.

    ``defaults`` are the paper's settings (timesteps on the 1000-step DDPM schedule); ``queries``
    says how many noise-predictor calls one image costs under given settings. ``timestep_key``
    names the setting ``--timesteps`` scans (None: the attack has no timestep) and
    ``timestep_source`` where its default comes from. ``scan(predictor, x0, conditions, settings,
    timesteps)`` returns a [len(timesteps), B] array equal, row by row, to ``score`` with the
    timestep set to each value; attacks that can share queries across steps give their own.
    ``fit``: set for a learned attack, whose ``score``/``scan`` return per-image features and
    ``fit(member_features, nonmember_features, settings)`` trains a classifier on part of the
    member/non-member sets and scores the other part (see ``secmi_nns``).
    """

    name: str
    paper: str
    score: Callable[..., np.ndarray]
    defaults: dict[str, Any] = field(default_factory=dict)
    queries: Callable[[dict], int] = lambda settings: 1
    timestep_key: Optional[str] = "timestep"  # the setting --timesteps scans and the reconstruction starts from
    timestep_source: str = ""
    scan_function: Optional[Callable[..., np.ndarray]] = None
    fit: Optional[Callable[..., dict]] = None

    @property
    def learned(self) -> bool:
        return self.fit is not None

    def scan(self, predictor, x0, conditions, settings: dict, timesteps: list[int]) -> np.ndarray:
        return (self.scan_function or _scan_by_loop(self))(predictor, x0, conditions, settings, timesteps)


def noise_batch(shape: tuple[int, ...], seed: int, device):
    """One fixed N(0, I) draw of ``shape`` from its own seed: the same noise for every image and batch."""
    import torch

    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(int(seed))).to(device)


def lp_sum(difference, p: int) -> np.ndarray:
    """sum |d|^p over each image's elements (the authors' ``distance``), as float64 numpy."""
    return difference.abs().double().pow(p).flatten(1).sum(1).cpu().numpy()
