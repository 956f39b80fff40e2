"""FeatureSpace: one space's extractor, metric and cache identity (the registry is the package's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


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
