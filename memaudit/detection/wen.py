"""Wen et al. (ICLR 2024, "Detecting, explaining, and mitigating memorization in diffusion models"):
a memorized prompt pulls the sampler hard towards its training image, so the text-conditional part
of the noise prediction is large from the very first steps.

For prompt p, generation g and sampling step t (DDIM, classifier-free guidance w):
d_t = || eps(x_t, e_p) - eps(x_t, e_empty) ||_2, the trajectory following the guided prediction
eps(x_t, e_empty) + w (eps(x_t, e_p) - eps(x_t, e_empty)). The detection score is d_t averaged over
the first ``first_steps`` steps and over ``generations`` starting noises; higher = more likely
memorized. Defaults are the authors' (``detect_mem.py`` and their analysis notebook): 50 DDIM steps,
guidance 7.5, 4 generations per prompt, all 50 steps averaged. Generation g starts from the noise of
seed ``seed + g`` for every prompt, so prompts are compared on the same noises.
"""

from __future__ import annotations

import numpy as np

from memaudit import progress
from memaudit.detection.conditioning import TextConditionalModel

DEFAULTS = {"steps": 50, "guidance": 7.5, "generations": 4, "first_steps": 50}


def text_noise_magnitudes(pipeline, prompts: list[str], *, steps: int = 50, guidance: float = 7.5,
                          generations: int = 4, first_steps: int = 50, seed: int = 0, device: str = "cpu",
                          batch_size: int = 64) -> np.ndarray:
    """(len(prompts), generations, first_steps) values of d_t; only the first ``first_steps`` steps are run."""
    import torch

    model = TextConditionalModel(pipeline, steps, device)
    first_steps = min(first_steps, steps)
    empty = model.embed([""])[0]
    noises = model.noises(generations, seed)
    jobs = [(p, g) for p in range(len(prompts)) for g in range(generations)]
    out = np.zeros((len(prompts), generations, first_steps))
    with progress.task("detect: first sampling steps", total=len(jobs)) as advance:
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            text = model.embed([prompts[p] for p, _ in chunk])
            states = torch.cat([empty[None].expand(len(chunk), -1, -1), text])
            x = noises[[g for _, g in chunk]].to(device)
            for i, t in enumerate(model.timesteps[:first_steps]):
                with torch.inference_mode():
                    eps_uncond, eps_text = model.eps(torch.cat([x, x]), t, states).chunk(2)
                direction = eps_text - eps_uncond
                norms = direction.flatten(1).norm(dim=1).double().cpu().numpy()
                for row, (p, g) in enumerate(chunk):
                    out[p, g, i] = norms[row]
                x = model.scheduler.step(eps_uncond + guidance * direction, t, x).prev_sample
            advance(len(chunk))
    return out


def score(pipeline, prompts: list[str], *, seed: int, device: str, batch_size: int, steps: int, guidance: float,
          generations: int, first_steps: int) -> dict[str, np.ndarray]:
    """Per prompt: ``score`` (d_t averaged over steps and generations) and ``first_step`` (d at x_T alone)."""
    magnitudes = text_noise_magnitudes(pipeline, prompts, steps=steps, guidance=guidance, generations=generations,
                                       first_steps=first_steps, seed=seed, device=device, batch_size=batch_size)
    return {"score": magnitudes.mean(axis=(1, 2)), "first_step": magnitudes[:, :, 0].mean(axis=1)}


def read_prompts(path) -> tuple[list[str], list[int | None]]:
    """Prompts, one per line, optionally labelled after a tab: ``PROMPT<TAB>memorized`` or ``novel``
    (also 1 / 0); blank lines skipped. Labels are None where a line has none."""
    from pathlib import Path

    from memaudit.errors import InputError

    source = Path(path)
    expected = "expected a text file with one prompt per line (optionally PROMPT<TAB>memorized|novel)"
    if source.is_dir():
        raise InputError(f"--prompts {path}: a folder, not a file; {expected}")
    if not source.is_file():
        raise InputError(f"--prompts {path}: no such file; {expected}")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--prompts {path}: not UTF-8 text; {expected}") from None
    prompts, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        text, tab, label = line.partition("\t")
        value = None
        if tab:
            value = {"memorized": 1, "1": 1, "novel": 0, "0": 0}.get(label.strip().lower())
            if value is None:
                raise InputError(f"--prompts {path}: line {number} has label {label.strip()!r}; expected memorized or novel")
        prompts.append(text.strip())
        labels.append(value)
    if not prompts:
        raise InputError(f"--prompts {path}: the file holds no prompts")
    return prompts, labels
