"""The registry of training-data-free detectors of memorized prompts (``memaudit detect
--detector NAME``), each named after what it computes. Every detector scores each prompt from
the U-Net's conditional and unconditional noise predictions at seeded starting noises; higher =
more likely memorized. A detector returns ``score`` per prompt and may add columns (per-prompt
parts of its score) that detect.json reports beside it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from memaudit.detection import asthana, jeon, wen
from memaudit.errors import InputError


@dataclass(frozen=True)
class Detector:
    name: str
    method: str  # what it computes and where it comes from, one line
    defaults: dict  # the paper's settings
    run: Callable[..., dict[str, np.ndarray]]  # (pipeline, prompts, seed=, device=, batch_size=, **settings)

    def settings(self, given: dict) -> dict:
        """The defaults with what the user set; a setting this detector does not have is refused."""
        given = {k: v for k, v in given.items() if v is not None}
        extra = sorted(set(given) - set(self.defaults))
        if extra:
            flags = ", ".join("--" + k.replace("_", "-") for k in extra)
            raise InputError(f"--detector {self.name}: does not take {flags}; it takes "
                             + ", ".join("--" + k.replace("_", "-") for k in self.defaults))
        for key, value in given.items():
            if key in ("steps", "generations", "first_steps") and value < 1:
                raise InputError(f"--{key.replace('_', '-')} {value}: expected a positive integer")
        return {**self.defaults, **given}


DETECTORS = {d.name: d for d in (
    Detector("text-noise-norm", "Wen et al., ICLR 2024: mean ||eps(x_t, prompt) - eps(x_t, empty)||_2 over the first "
             "steps of the guided DDIM trajectory", wen.DEFAULTS, wen.score),
    Detector("hessian-score-difference-norm", "Jeon et al., ICML 2025: ||(H(x_T, prompt) - H(x_T, empty)) "
             "(s(x_T, prompt) - s(x_T, empty))||_2 at the starting noise", jeon.DEFAULTS, jeon.score),
    Detector("norm-plus-alignment", "Asthana & Belagiannis, ICLR 2026: gamma_norm ||eps_p - eps_u|| at the first "
             "timestep + gamma_alignment cos(eps_u, eps_p - eps_u) at a low timestep, both at the starting noise",
             asthana.DEFAULTS, asthana.score),
)}


def get_detector(name: str) -> Detector:
    if name not in DETECTORS:
        raise InputError(f"--detector {name}: unknown; expected one of {', '.join(DETECTORS)}")
    return DETECTORS[name]
