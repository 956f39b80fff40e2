"""ImageSet: training images and audited samples as one uint8 NHWC array with an id per image.

Its own module, below ``memaudit.data`` and ``memaudit.formats``: the formats build image sets
and ``data`` loads them by spec, so both import it and neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from memaudit.storage import fingerprint_array


@dataclass
class ImageSet:
    """A set of same-shaped uint8 images (N, H, W, C) with a stable id per image."""

    images: np.ndarray
    ids: list[str]
    spec: str
    seeds: np.ndarray | None = None  # per-image generation seeds, when the source records them
    labels: np.ndarray | None = None
    captions: list[str] | None = None  # per-image text, for text-to-image models' prompts
    skipped: list[dict] | None = None  # unreadable files left out under --on-error skip: {"id", "reason"}
    _fingerprint: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_array(self.images)
        return self._fingerprint
