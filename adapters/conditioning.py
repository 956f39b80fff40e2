"""What a conditional model is asked for, per seed: class labels and text prompts.

Each sample's condition is drawn from its own seed (never from its batch), so conditional
samples keep the batch-size and sharding invariance of unconditional ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from memaudit.data import ImageSet
from memaudit.errors import ModelError

LABEL_MODES = "train, uniform or a class index"
_STREAM = 0x6C61626C  # separates the condition's random stream from the seed's noise stream


def _pick(seed: int, n: int) -> int:
    return int(np.random.default_rng([int(seed), _STREAM]).integers(n))


class LabelChooser:
    """Class labels per seed under ``--labels``: a training image's label, uniform, or one class."""

    def __init__(self, mode: str | None, num_classes: int, train: ImageSet, spec: str):
        if mode is None:
            raise ModelError(f"{spec}: the model is class-conditional ({num_classes} classes); give --labels {LABEL_MODES}")
        self.mode, self.num_classes = mode, num_classes
        if mode == "train":
            if train.labels is None:
                raise ModelError(f"{spec}: --labels train needs a training set with labels, and {train.spec} has none; "
                                 f"use --labels uniform or a class index")
            out_of_range = train.labels[(train.labels < 0) | (train.labels >= num_classes)]
            if len(out_of_range):
                raise ModelError(f"{spec}: training label {int(out_of_range[0])} is out of range for a model "
                                 f"of {num_classes} classes (0..{num_classes - 1})")
            self.train_labels = train.labels
        elif mode != "uniform":
            try:
                self.fixed = int(mode)
            except ValueError:
                raise ModelError(f"--labels {mode}: expected {LABEL_MODES}") from None
            if not 0 <= self.fixed < num_classes:
                raise ModelError(f"--labels {mode}: out of range; the model has classes 0..{num_classes - 1}")

    @property
    def draw_range(self) -> int:
        """How many values a per-seed draw chooses among: a training image (``train``), else a class."""
        return len(self.train_labels) if self.mode == "train" else self.num_classes

    def from_draws(self, draws: np.ndarray) -> np.ndarray:
        """Labels from per-seed draws in ``range(draw_range)`` (EDM seeding draws them with ``randint``
        from each seed's generator, as generate.py does; a fixed class overrides the draw, as its --class)."""
        draws = np.asarray(draws, np.int64)
        if self.mode == "train":
            return self.train_labels[draws].astype(np.int64)
        if self.mode == "uniform":
            return draws
        return np.full(len(draws), self.fixed, np.int64)

    def __call__(self, seeds: Sequence[int]) -> np.ndarray:
        """Labels drawn from memaudit's own per-seed stream (the ``legacy`` seeding)."""
        if self.mode == "train":
            return np.array([self.train_labels[_pick(s, len(self.train_labels))] for s in seeds], np.int64)
        if self.mode == "uniform":
            return np.array([_pick(s, self.num_classes) for s in seeds], np.int64)
        return np.full(len(seeds), self.fixed, np.int64)


class PromptChooser:
    """Prompts per seed under ``--prompts``: a training caption drawn by seed, or a file's lines in turn."""

    def __init__(self, source: str | None, train: ImageSet, spec: str):
        if source is None:
            raise ModelError(f"{spec}: the model is text-to-image; give --prompts train (training captions) or --prompts FILE")
        if source == "train":
            captions = getattr(train, "captions", None)
            if not captions or not any(captions):
                raise ModelError(f"{spec}: --prompts train needs a training set with captions, and {train.spec} has none; "
                                 "give --prompts FILE (one prompt per line)")
            self.prompts, self.by_seed = [c or "" for c in captions], True
        else:
            path = Path(source)
            if not path.is_file():
                raise ModelError(f"--prompts {source}: no such file; expected train or a text file with one prompt per line")
            self.prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            if not self.prompts:
                raise ModelError(f"--prompts {source}: the file holds no prompts")
            self.by_seed = False
        self.source = source

    def __call__(self, seeds: Sequence[int]) -> list[str]:
        if self.by_seed:
            return [self.prompts[_pick(s, len(self.prompts))] for s in seeds]
        return [self.prompts[int(s) % len(self.prompts)] for s in seeds]
