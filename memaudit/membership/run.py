"""Score image sets with the attacks and write a membership-inference run folder.

A run folder holds ``mia.json`` (per attack: settings, AUC with its interval, TPR at FPR 1% and
0.1% with the non-member count behind each, the ROC), ``scores.csv`` (``image,set,attack,score,
p_value``) and ``mia.html``. Each (attack, set) score vector is cached in ``scores/`` under a key
covering the model fingerprint, the images, their conditions, the attack, its settings and the
format version, so an interrupted run resumes and a changed input is never reused.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memaudit import progress
from memaudit import roc as metrics
from memaudit.storage import fingerprint_array, fingerprint_json, write_bytes_atomic, write_text_atomic

from .attacks import get_attack
from .predictor import Conditions

FORMAT_VERSION = 2  # 2: the loss attack's noise mode and seed in its settings
MIA_JSON, SCORES_CSV, MIA_HTML = "mia.json", "scores.csv", "mia.html"
RECONSTRUCTION_SEED = 0  # the fixed noise that noises a member before the model reconstructs it


@dataclass
class ScoredSet:
    """One image set to score: which role it plays (member, nonmember, query), its images, ids, conditions."""

    role: str
    images: np.ndarray
    ids: list[str]
    conditions: Conditions

    def fingerprint(self) -> str:
        labels = None if self.conditions.labels is None else fingerprint_array(np.asarray(self.conditions.labels, np.int64))
        return fingerprint_json({"images": fingerprint_array(self.images), "labels": labels,
                                 "captions": self.conditions.captions})


def score_set(predictor, model_fingerprint: str, scored: ScoredSet, attack_name: str, settings: dict,
              batch_size: int, cache_dir: Path | None, timesteps: list[int] | None = None) -> np.ndarray:
    """float64 scores of every image of ``scored`` under one attack (cached by content when ``cache_dir``):
    [N], or [len(timesteps), N] with one row per step when ``timesteps`` is given (``Attack.scan``)."""
    attack = get_attack(attack_name)
    key = fingerprint_json({"model": model_fingerprint, "set": scored.fingerprint(), "attack": attack_name,
                            "settings": settings, "timesteps": timesteps, "format": FORMAT_VERSION}).split(":")[1][:24]
    kind = "scan" if timesteps is not None else "scores"
    path = None if cache_dir is None else Path(cache_dir) / f"{attack_name}-{scored.role}-{kind}-{key}.npy"
    if path is not None and path.is_file():
        return np.load(path)
    out = []
    label = f"{attack_name} on {scored.role}s" + (f" at {len(timesteps)} steps" if timesteps is not None else "")
    with progress.task(label, total=len(scored.images)) as advance:
        for start in range(0, len(scored.images), batch_size):
            rows = slice(start, start + batch_size)
            x0 = predictor.encode(scored.images[rows])
            conditions = scored.conditions.take(rows)
            if timesteps is None:
                out.append(np.asarray(attack.score(predictor, x0, conditions, settings), np.float64))
            else:  # one row per step (learned attacks: features, [T, B, ...])
                out.append(np.asarray(attack.scan(predictor, x0, conditions, settings, timesteps), np.float64))
            advance(len(scored.images[rows]))
    empty = np.zeros(0) if timesteps is None else np.zeros((len(timesteps), 0))
    scores = np.concatenate(out, axis=0 if timesteps is None else 1) if out else empty
    if path is not None:
        buffer = io.BytesIO()
        np.save(buffer, scores)
        write_bytes_atomic(path, buffer.getvalue())
    return scores


def reconstruct(predictor, images: np.ndarray, conditions: Conditions, timestep: int) -> np.ndarray:
    """The model's one-step reconstruction of each image from step ``timestep``:
    x_t = sqrt(abar) x_0 + sqrt(1 - abar) n (a fixed noise n), x_0' = (x_t - sqrt(1 - abar) eps_theta(x_t, t)) / sqrt(abar)."""
    from .base import noise_batch

    x0 = predictor.encode(images)
    abar = float(predictor.alphas_cumprod[int(timestep)])
    noise = noise_batch(tuple(x0.shape[1:]), RECONSTRUCTION_SEED, x0.device).expand_as(x0)
    x_t = abar ** 0.5 * x0 + (1 - abar) ** 0.5 * noise
    estimate = (x_t - (1 - abar) ** 0.5 * predictor.eps(x_t, int(timestep), conditions)) / abar ** 0.5
    return predictor.decode(estimate)


def evaluate(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """Per attack, ``metrics.summary`` of its member against its non-member scores."""
    return {name: metrics.summary(by_role["member"], by_role["nonmember"])
            for name, by_role in scores.items() if "member" in by_role and "nonmember" in by_role}


def write_scores_csv(run_dir: Path, sets: list[ScoredSet], scores: dict[str, dict[str, np.ndarray]],
                     p_values: dict[str, np.ndarray], held: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    """scores.csv: one row per image and attack; ``p_value`` for query images only. ``held``: for a
    learned attack, the rows of each set it scored (the images its classifier did not train on)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("image", "set", "attack", "score", "p_value"))
    for name, by_role in scores.items():
        for scored in sets:
            if scored.role not in by_role:
                continue
            values = by_role[scored.role]
            rows = (held or {}).get(name, {}).get(scored.role, np.arange(len(scored.ids)))
            for i, (row, value) in enumerate(zip(rows, values)):
                p = f"{p_values[name][i]:.6g}" if scored.role == "query" else ""
                writer.writerow((scored.ids[row], scored.role, name, repr(float(value)), p))
    write_text_atomic(Path(run_dir) / SCORES_CSV, buffer.getvalue())
