"""Jeon, Kim and No (ICML 2025, "Understanding and mitigating memorization in generative models
via sharpness of probability landscapes", arXiv 2412.04140): memorized prompts sit on sharp peaks
of the conditional log-density, which shows already at the starting noise as a large product of
the Hessian difference with the score difference.

With the score s(x, e) = -eps(x, t, e) / sqrt(1 - abar_t) at the first DDIM timestep t and x = x_T,
the score difference Delta = s(x, e_p) - s(x, e_empty) and the Hessians of the log-density
H(x, e) = d s(x, e) / dx, the score is

    || H(x_T, e_p) Delta - H(x_T, e_empty) Delta ||_2,

averaged over ``generations`` starting noises (generation g from seed ``seed + g``). The two
Hessian-vector products are Jacobian-vector products of the U-Net, as in the authors' code
(``local_model/pipe.py``, detection branch, epsilon-prediction models), which averages over 1 or 4
generations (``run_detection.sh``); 4 here, as Wen et al.'s default. No sampling step is taken.
"""

from __future__ import annotations

import numpy as np

from memaudit import progress
from memaudit.detection.conditioning import TextConditionalModel

DEFAULTS = {"steps": 50, "generations": 4}


def hessian_score_products(pipeline, prompts: list[str], *, steps: int = 50, generations: int = 4, seed: int = 0,
                           device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """(len(prompts), generations) values of ||(H_p - H_empty) Delta|| at each starting noise."""
    import torch

    model = TextConditionalModel(pipeline, steps, device)
    t = model.timesteps[0]
    scale = float((1 - model.scheduler.alphas_cumprod[int(t)]).sqrt())
    empty = model.embed([""])[0]
    noises = model.noises(generations, seed)
    jobs = [(p, g) for p in range(len(prompts)) for g in range(generations)]
    out = np.zeros((len(prompts), generations))
    with progress.task("detect: Hessian-score products at x_T", total=len(jobs)) as advance:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            states = torch.cat([empty[None].expand(len(chunk), -1, -1), model.embed([prompts[p] for p, _ in chunk])])
            x = noises[[g for _, g in chunk]].to(device)

            def scores(y):  # (s(y, e_empty), s(y, e_p)) stacked along the batch
                return -model.eps(torch.cat([y, y]), t, states) / scale

            with torch.no_grad():
                s_empty, s_text = scores(x).chunk(2)
            # Forward-mode AD through attention needs SDPA's composite (math) kernel.
            with torch.no_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
                _, products = torch.func.jvp(scores, (x,), (s_text - s_empty,))
            h_empty, h_text = products.chunk(2)
            values = (h_text - h_empty).flatten(1).norm(dim=1).double().cpu().numpy()
            for row, (p, g) in enumerate(chunk):
                out[p, g] = values[row]
            advance(len(chunk))
    return out


def score(pipeline, prompts: list[str], *, seed: int, device: str, batch_size: int, steps: int,
          generations: int) -> dict[str, np.ndarray]:
    """Per prompt: ``score``, the product's norm averaged over generations."""
    values = hessian_score_products(pipeline, prompts, steps=steps, generations=generations, seed=seed, device=device,
                                    batch_size=batch_size)
    return {"score": values.mean(axis=1)}
