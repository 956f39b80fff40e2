"""A complete user-code model for memaudit: ``memaudit audit adapters/example_user_model.py:build``.

memaudit imports this file, calls ``build`` with the arguments it names (any of ``train``,
``device``, ``steps``, ``options``) and samples the object it returns. The contract:

- ``sample(seeds, batch_size, conditioning=None)`` returns a uint8 numpy array
  (len(seeds), H, W, C) matching the training images; sample i must depend on seeds[i] alone
  (one random generator per seed), so results do not depend on the batch size;
- optional: ``image_shape`` (H, W, C), ``fingerprint()`` (a string that changes with the weights
  and settings; it keys the sample cache), ``settings()`` (a dict recorded in audit.json),
  ``conditioning(seeds)`` (e.g. {"prompts": [...]}) recorded with the samples.

This example is a real, if simple, generative model: independent per-pixel Gaussians fitted to the
training set. It cannot copy a training image, so it is a negative control (ratio about 0).
"""

from __future__ import annotations

import hashlib

import numpy as np


class PixelGaussianModel:
    def __init__(self, images: np.ndarray):
        pixels = images.astype(np.float64)
        self.mean, self.std = pixels.mean(axis=0), pixels.std(axis=0)
        self.image_shape = tuple(images.shape[1:])

    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(self.mean.tobytes() + self.std.tobytes()).hexdigest()

    def settings(self) -> dict:
        return {"model": "per-pixel gaussian"}

    def sample(self, seeds, batch_size, conditioning=None) -> np.ndarray:
        images = [self.mean + self.std * np.random.default_rng(int(seed)).standard_normal(self.mean.shape)
                  for seed in seeds]
        return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def build(train):
    """memaudit passes the training set (an ImageSet with .images uint8 NHWC)."""
    return PixelGaussianModel(train.images)
