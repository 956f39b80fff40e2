"""Asthana and Belagiannis (ICLR 2026, "Detecting and mitigating memorization in diffusion models
through anisotropy of the log-probability", arXiv 2601.20642): norm-based detectors assume an
isotropic log-density, which holds at high noise; at low noise a memorized prompt's guidance
vector aligns with the unconditional score. Their metric adds the two, both read at pure noise
x_T with two forward passes each (conditional and unconditional), no sampling step:

    score = gamma_norm * || eps(x_T, t_first, e_p) - eps(x_T, t_first, e_empty) ||_2
          + gamma_alignment * mean over pixels of cos_channels(eps_u, eps_p - eps_u) at (x_T, t_low)

with t_first the first and t_low the third-to-last timestep of the ``steps``-step DDIM schedule,
eps_u = eps(x_T, t_low, e_empty), eps_p = eps(x_T, t_low, e_p), and the cosine taken across latent
channels at each pixel and averaged over pixels, as the authors' code does (``local_model/pipe.py``,
mode ``x,c|x``, no normalisation). Defaults are theirs for epsilon-prediction Stable Diffusion 1.4
(``detect_eval.py``, ``run_detection.sh``): gamma_norm 1, gamma_alignment 2, 50 steps, 1 generation.
Both terms are averaged over generations before they are added.
"""

from __future__ import annotations

import numpy as np

from memaudit import progress
from memaudit.detection.conditioning import TextConditionalModel

DEFAULTS = {"steps": 50, "generations": 1, "gamma_norm": 1.0, "gamma_alignment": 2.0}


def norm_and_alignment(pipeline, prompts: list[str], *, steps: int = 50, generations: int = 1, seed: int = 0,
                       device: str = "cpu", batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two (len(prompts), generations) arrays: the guidance norm at t_first and the alignment at t_low."""
    import torch

    model = TextConditionalModel(pipeline, steps, device)
    timesteps = model.timesteps
    t_first, t_low = timesteps[0], timesteps[-3 if len(timesteps) >= 3 else -1]
    empty = model.embed([""])[0]
    noises = model.noises(generations, seed)
    jobs = [(p, g) for p in range(len(prompts)) for g in range(generations)]
    norms, alignments = np.zeros((len(prompts), generations)), np.zeros((len(prompts), generations))
    with progress.task("detect: norm and alignment at x_T", total=len(jobs)) as advance:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            states = torch.cat([empty[None].expand(len(chunk), -1, -1), model.embed([prompts[p] for p, _ in chunk])])
            x = noises[[g for _, g in chunk]].to(device)
            with torch.inference_mode():
                eps_u, eps_p = model.eps(torch.cat([x, x]), t_first, states).chunk(2)
                norm = (eps_p - eps_u).flatten(1).norm(dim=1)
                low_u, low_p = model.eps(torch.cat([x, x]), t_low, states).chunk(2)
                alignment = torch.nn.functional.cosine_similarity(low_u, low_p - low_u, dim=1).flatten(1).mean(dim=1)
            for row, (p, g) in enumerate(chunk):
                norms[p, g], alignments[p, g] = float(norm[row]), float(alignment[row])
            advance(len(chunk))
    return norms, alignments


def score(pipeline, prompts: list[str], *, seed: int, device: str, batch_size: int, steps: int, generations: int,
          gamma_norm: float, gamma_alignment: float) -> dict[str, np.ndarray]:
    """Per prompt: ``score`` = gamma_norm * norm + gamma_alignment * alignment, and both terms."""
    norms, alignments = norm_and_alignment(pipeline, prompts, steps=steps, generations=generations, seed=seed,
                                           device=device, batch_size=batch_size)
    norm, alignment = norms.mean(axis=1), alignments.mean(axis=1)
    return {"score": gamma_norm * norm + gamma_alignment * alignment, "norm": norm, "alignment": alignment}
