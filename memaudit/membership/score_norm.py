"""The score-norm attack of SimA (Rao et al. 2025, "Score-based membership inference on diffusion
models"): one query, the size of the predicted noise at the clean image, ||eps_theta(x_0, t)||_4^4
(the authors' ``SimA`` distance). Near a training image the learned denoiser points at that image,
so the predicted noise is small for members; the score is its negative.

The authors scan t = 0, 10, ..., 200 and report the best step per data set (an oracle choice);
memaudit fixes t = 100, the middle of that range, so the reported AUC is not selected on the
evaluation data. ``--setting score-norm.timestep=T`` changes it; ``--timesteps 0:200:10`` gives
the authors' scan, its best step marked as chosen on the evaluated data.
"""

from __future__ import annotations

import numpy as np

from .base import Attack, lp_sum


def score(predictor, x0, conditions, settings: dict) -> np.ndarray:
    return -lp_sum(predictor.eps(x0, int(settings["timestep"]), conditions), int(settings["p"]))


ATTACK = Attack("score-norm", "Rao et al. 2025 (SimA)", score, {"timestep": 100, "p": 4}, lambda s: 1,
                timestep_source="memaudit's choice, the middle of SimA's scan of 0..200 (the authors report the "
                                "best step per data set, an oracle choice)")
