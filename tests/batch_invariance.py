"""What memaudit promises about a sample's dependence on its seed, written once for every adapter.

- Exact: the seed's random draws (starting noise, sampler noise, label or prompt) and, for one
  batch shape, the bytes (same seeds, same batch size -> identical samples; a sample drawn alone
  does not depend on the others or their order).
- Within one grey level: the same seeds in batches of another size. A network's float32 sums run
  through kernels chosen per batch shape on CPU (oneDNN/MKL blocking), which round differently, so
  a pixel near a rounding boundary can move by one level (README, "Seeds and batches").
"""

from __future__ import annotations

import numpy as np

ONE_GREY_LEVEL = 1


def max_grey_level_difference(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0


def assert_seed_invariance(model, seeds, batch_sizes, reference_batch: int | None = None) -> np.ndarray:
    """Check the promise on ``model`` for ``seeds``; returns the samples drawn in one batch."""
    seeds = list(seeds)
    reference = model.sample(seeds, batch_size=reference_batch or len(seeds))
    np.testing.assert_array_equal(model.sample(seeds, batch_size=reference_batch or len(seeds)), reference)
    alone = model.sample(seeds, batch_size=1)
    np.testing.assert_array_equal(model.sample(seeds[::-1], batch_size=1)[::-1], alone)  # order-free, exact
    for batch_size in (1, *batch_sizes):
        other = alone if batch_size == 1 else model.sample(seeds, batch_size=batch_size)
        assert max_grey_level_difference(other, reference) <= ONE_GREY_LEVEL, f"batch size {batch_size}"
    return reference
