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


PROMPT_MODES = "train (training captions), instance:TEXT (one prompt, e.g. DreamBooth's) or a file with one prompt per line"
INSTANCE = "instance:"


class PromptFile:
    """The prompts of a text file, one per non-empty line, read lazily: one streaming pass counts
    them, digests the file and keeps the byte offset of every ``STRIDE``-th prompt; prompt k is then
    read by seeking to the nearest kept offset and reading at most ``STRIDE`` lines. Memory is
    ``8 / STRIDE`` bytes per prompt, whatever the file's length."""

    STRIDE = 1024

    def __init__(self, path: Path, source: str):
        import hashlib

        self.path, self.source = path, source
        digest, offsets, count, position = hashlib.sha256(), [], 0, 0
        with open(path, "rb") as handle:
            for line in handle:
                digest.update(line)
                if line.strip():
                    if count % self.STRIDE == 0:
                        offsets.append(position)
                    count += 1
                position += len(line)
        self.offsets = np.array(offsets, np.int64)
        self.count = count
        self.digest = "sha256:" + digest.hexdigest()

    def __len__(self) -> int:
        return self.count

    def lines(self, numbers: Sequence[int]) -> list[str]:
        """The prompts numbered ``numbers`` (0-based among the non-empty lines), in that order."""
        wanted = sorted(set(int(k) for k in numbers))
        found: dict[int, str] = {}
        with open(self.path, "rb") as handle:
            for block in sorted({k // self.STRIDE for k in wanted}):
                handle.seek(int(self.offsets[block]))
                k, last = block * self.STRIDE, max(w for w in wanted if w // self.STRIDE == block)
                while k <= last:
                    line = handle.readline()
                    if not line:  # the file shrank since it was indexed
                        raise ModelError(f"--prompts {self.source}: the file changed while in use; run again")
                    if not line.strip():
                        continue
                    if k in wanted:
                        try:
                            found[k] = line.decode("utf-8").strip()
                        except UnicodeDecodeError:
                            raise ModelError(f"--prompts {self.source}: prompt {k + 1} is not UTF-8 text") from None
                    k += 1
        return [found[int(k)] for k in numbers]


class PromptChooser:
    """Prompts per seed under ``--prompts``: a training caption drawn from the seed's own stream
    (``train``), one fixed prompt (``instance:TEXT``, a DreamBooth instance prompt), or prompt
    ``seed mod count`` of a file (``PromptFile``, read lazily). ``indices(seeds)`` says which caption
    (training row) or line each seed got: a function of the seed alone, whatever the batch."""

    def __init__(self, source: str | None, train: ImageSet, spec: str):
        if source is None:
            raise ModelError(f"{spec}: the model is text-to-image; give --prompts {PROMPT_MODES}")
        self.source, self.file, self.captions = source, None, None
        if source == "train":
            captions = getattr(train, "captions", None)
            if not captions or not any(captions):
                raise ModelError(f"{spec}: --prompts train needs a training set with captions (NAME.txt beside each "
                                 f"image, or metadata.jsonl), and {train.spec} has none; give --prompts instance:TEXT or FILE")
            self.captions = [c or "" for c in captions]
            self.mode = "train"
        elif source.startswith(INSTANCE):
            self.instance = source[len(INSTANCE):].strip()
            if not self.instance:
                raise ModelError(f"--prompts {source}: no prompt after instance:; e.g. --prompts \"instance:a photo of sks dog\"")
            self.mode = "instance"
        else:
            path = Path(source).expanduser()
            if not path.is_file():
                raise ModelError(f"--prompts {source}: no such file; expected {PROMPT_MODES}")
            self.file = PromptFile(path, source)
            if not len(self.file):
                raise ModelError(f"--prompts {source}: the file holds no prompts")
            self.mode = "file"

    def digest(self) -> str:
        """What the prompts are, by content (part of the model's fingerprint: another caption or
        prompt file under the same name must not reuse cached samples)."""
        from memaudit.storage import fingerprint_json

        if self.mode == "file":
            return self.file.digest
        return fingerprint_json(self.captions if self.mode == "train" else self.instance)

    def indices(self, seeds: Sequence[int]) -> list[int]:
        """Per seed: the training row whose caption it uses (train), the prompt's number in the file
        (file, 0-based), or 0 (instance)."""
        if self.mode == "train":
            return [_pick(s, len(self.captions)) for s in seeds]
        if self.mode == "file":
            return [int(s) % len(self.file) for s in seeds]
        return [0] * len(seeds)

    def __call__(self, seeds: Sequence[int]) -> list[str]:
        if self.mode == "train":
            return [self.captions[i] for i in self.indices(seeds)]
        if self.mode == "file":
            return self.file.lines(self.indices(seeds))
        return [self.instance] * len(seeds)
