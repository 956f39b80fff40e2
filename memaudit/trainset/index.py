"""``memaudit index``: a training set's features (and approximate index) computed ahead of audits."""

from __future__ import annotations

from dataclasses import dataclass, field

from memaudit import distributed
from memaudit.data import load_image_set
from memaudit.devices import resolve_device
from memaudit.errors import InputError
from memaudit.features import get_space
from memaudit.features.cache import cache_key, cache_path, cached_features
from memaudit.search import Approximate, persist_index


@dataclass
class IndexConfig:
    """The settings of ``memaudit index``."""

    data: str  # the training set's spec or path
    spaces: list[str] = field(default_factory=lambda: ["pixel"])  # feature spaces, as --space names them
    device: str = "auto"
    index: str | None = None  # also build this approximate index: ivf-pq, ivf or hnsw
    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None


def run_index(config: IndexConfig) -> list[dict]:
    """Fill the feature caches of a training set ahead of audits (``memaudit index``), and with
    ``index`` (ivf-pq, ivf, hnsw) build its approximate index in each space, which audits with the
    same ``--index`` and parameters then load: one row per space saying where its features (and
    index) are and whether they were already there."""
    data, space_specs, device, index = config.data, config.spaces, config.device, config.index
    nlist, m, nbits = config.nlist, config.m, config.nbits
    if index is None and any(v is not None for v in (nlist, m, nbits)):
        raise InputError("--nlist/--m/--nbits: index parameters need --index ivf-pq, ivf or hnsw")
    with distributed.current().main_first():
        train = load_image_set(data)
    spaces = [get_space(spec, resolve_device(device)) for spec in dict.fromkeys(space_specs)]
    rows = []
    for space in spaces:
        if space.raw_pixels:  # native pixels are searched as they are: nothing to precompute
            features = train.images.reshape(len(train), -1)
            row = {"space": space.name, "n": len(train), "dimension": int(features.shape[1]), "cached": None,
                   "path": None}
        else:
            features, was_cached = cached_features(space, train.images, train.fingerprint)
            row = {"space": space.name, "n": len(features), "dimension": int(features.shape[1]),
                   "cached": was_cached, "path": str(cache_path(train.fingerprint, space))}
        if index is not None:
            row["index"] = persist_index(features, index, space.search_metric,
                                         Approximate(nlist=nlist, m=m, nbits=nbits,
                                                     vectors_key=cache_key(train.fingerprint, space)))
        rows.append(row)
    return rows
