"""Pixel spaces: the flattened uint8 image (the paper's), or the image resized to N x N first."""

from __future__ import annotations

import numpy as np

from memaudit.errors import InputError
from memaudit.features.space import FeatureSpace


def _resize(batch: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = []
    for image in batch:
        pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        resized = np.asarray(pil.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)
        out.append(resized.reshape(size, size, -1))
    return np.stack(out)


def make_space(spec: str, size: int | None):
    if size is not None and not 1 <= size <= 4096:
        raise InputError(f"--space {spec}: the size must be from 1 to 4096")

    def extract(batch: np.ndarray) -> np.ndarray:
        batch = batch if size is None else _resize(batch, size)
        return batch.reshape(len(batch), -1).astype(np.float32)

    return FeatureSpace(name=spec, metric="l2", extract=extract, digest=f"pixel:{size or 'native'}:box",
                        batch_size=4096, thresholds={"nn-ratio": 1.0 / 3.0, "tiled-l2": 0.15},
                        settings={"resize": size}, raw_pixels=size is None)
