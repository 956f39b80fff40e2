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
from typing import Callable

from memaudit.errors import InputError

from . import encoders, pixel
from .space import FeatureSpace


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
