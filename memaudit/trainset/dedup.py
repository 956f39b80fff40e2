"""``memaudit dedup``: exact and near-duplicate clusters of a training set (``memaudit.duplicates``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memaudit import distributed, rundir
from memaudit.data import load_image_set
from memaudit.devices import resolve_device
from memaudit.duplicates import applied_threshold, find_duplicates, radius
from memaudit.features import get_space
from memaudit.features.cache import features_of
from memaudit.storage import write_json_atomic


@dataclass
class DedupConfig:
    """The settings of ``memaudit dedup``."""

    data: str  # the training set's spec or path
    space: str = "pixel"
    threshold: float | None = None  # RMS pixel difference in [0, 1] (pixel spaces), cosine similarity (embeddings)
    device: str = "auto"
    out: Path | None = None  # the folder for dedup.json, if any


@rundir.claimed(("dedup.json",), "dedup")
def run_dedup(config: DedupConfig) -> dict:
    """Exact and near-duplicate clusters of a training set (``memaudit dedup``); written to
    ``out/dedup.json`` when ``out`` is given. ``threshold`` is an RMS pixel difference in [0, 1]
    for pixel spaces, a cosine similarity for embedding spaces."""
    data, space_spec, threshold, device, out = config.data, config.space, config.threshold, config.device, config.out
    with distributed.current().main_first():
        train = load_image_set(data)
    space = get_space(space_spec, resolve_device(device))
    applied_threshold(space.metric, threshold)  # a limit outside the space's range: refused before any work
    features = features_of(space, train.images, train.fingerprint)
    report = find_duplicates(train.images, features, space.metric,
                             radius(space.metric, int(np.prod(features.shape[1:])), threshold))
    result = {"train": {"spec": data, "n": len(train), "fingerprint": train.fingerprint}, "space": space.name,
              "threshold": applied_threshold(space.metric, threshold),  # the limit applied, default included
              "threshold_kind": "rms pixel difference" if space.metric == "l2" else "cosine similarity",
              **report.as_dict(train.ids)}
    if out is not None and distributed.current().is_main:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out) / "dedup.json", result)
    return result
