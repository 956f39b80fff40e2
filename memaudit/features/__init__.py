"""Feature spaces: where nearest neighbours are searched (``--space``, repeatable).

Each space maps a uint8 NHWC batch to float32 vectors (design.md's one feature-space signature)
and says which metric and criteria apply. Spaces register in ``SPACES`` by the name before the
first ':'; ``pixel-N`` is the pixel space after resizing to N x N.

- ``pixel``, ``pixel-N``: flattened pixels, L2 (the paper's space);
- ``clip:MODEL@WEIGHTS`` or ``clip:MODEL:TAG``: an open_clip image encoder, cosine;
- ``dinov2:MODEL@WEIGHTS``: a timm DINOv2 ViT, cosine;
- ``sscd:FILE``: a TorchScript SSCD copy-detection model, cosine (weights are the user's;
  licence CC-BY-NC).
Weights are never downloaded: a missing file is a clear error saying how to get it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from memaudit.errors import InputError

from . import encoders, pixel


@dataclass
class FeatureSpace:
    """One space: an extractor, its metric, and what identifies its output for caching."""

    name: str
    metric: str  # "l2" or "cosine" (features L2-normalised, searched by inner product)
    extract: Callable[[np.ndarray], np.ndarray]  # uint8 NHWC -> float32 (B, D)
    digest: str  # weights + preprocessing: part of the feature cache key
    batch_size: int = 256
    thresholds: dict[str, float] = field(default_factory=dict)  # per-criterion defaults in this space
    settings: dict = field(default_factory=dict)
    raw_pixels: bool = False  # the native pixel space: the uint8 images are searched as they are

    @property
    def search_metric(self) -> str:
        """The ``memaudit.search.knn`` metric: L2, or inner product on the normalised features."""
        return "l2" if self.metric == "l2" else "ip"


_PIXEL_N = re.compile(r"^pixel-(\d+)$")


def _pixel_space(spec: str, argument: str | None, device: str) -> FeatureSpace:
    match = _PIXEL_N.match(spec)
    size = int(match.group(1)) if match else None
    return pixel.make_space(spec, size)


SPACES: dict[str, Callable[[str, str | None, str], FeatureSpace]] = {
    "pixel": _pixel_space,
    "clip": encoders.make_clip_space,
    "dinov2": encoders.make_dinov2_space,
    "sscd": encoders.make_sscd_space,
}
VALID_SPACES = "pixel, pixel-N, clip:MODEL@WEIGHTS, clip:MODEL:TAG, dinov2:MODEL@WEIGHTS, sscd:FILE"


def get_space(spec: str, device: str = "cpu") -> FeatureSpace:
    """The feature space a ``--space`` value names, or ``InputError`` listing the valid forms."""
    if _PIXEL_N.match(spec) or spec == "pixel":
        return _pixel_space(spec, None, device)
    name, sep, argument = spec.partition(":")
    if name not in SPACES or not sep or not argument:
        raise InputError(f"--space {spec}: unknown feature space; valid spaces are {VALID_SPACES}")
    return SPACES[name](spec, argument, device)


__all__ = ["FeatureSpace", "SPACES", "get_space", "VALID_SPACES"]
