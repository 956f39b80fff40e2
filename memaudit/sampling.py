"""Seeded generation in resumable shards.

Samples are drawn for seeds ``first_seed .. first_seed + n - 1``, one RNG per seed, and stored
in shards of ``SHARD_SIZE`` seeds under a folder named by the model's fingerprint. A shard is
written atomically once complete, so an interrupted run loses at most the shard in progress and a
rerun with the same model and seeds picks up where it stopped. Shard boundaries do not depend on
the batch size, and neither do the samples.

A shard is reused only when its key (``shard_key``: the model fingerprint, the seeds and the
conditioning actually drawn for them) is the one the current run computes: a rerun whose labels
or prompts differ (another training subset for ``--labels train``, an edited prompts file)
generates again instead of pairing old images with new labels.

Under torchrun the unfinished shards are spread over the ranks (``memaudit.units``); each rank
writes its shards into the run folder, which all ranks share. ``generate_shards`` returns the
finished shards on disk (``SampleShards``, read one shard at a time: an audit streams them into
its samples file and memory-maps that); ``generate_samples`` reads them all into memory. Either
way a run on N ranks has the images a single process has.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from memaudit import distributed, progress, units
from memaudit.errors import DataError
from memaudit.storage import RowBlocks, fingerprint_json, npz_member_memmap, write_npz_atomic, write_text_atomic

SHARD_SIZE = 256
KEY_VERSION = 2  # bumped when what a shard key covers changes: older shards are then generated again


def shard_key(model_fingerprint: str, seeds: np.ndarray, conditions: dict) -> str:
    """The key of one shard: everything its images depend on. The one place it is built; a setting
    that changes the samples and is not in the adapter's fingerprint belongs here."""
    return fingerprint_json({
        "version": KEY_VERSION,
        "model": model_fingerprint,  # weights and sampler settings (the adapter's fingerprint)
        "seeds": [int(seeds[0]), len(seeds)] if len(seeds) else [],
        "conditions": _jsonable(conditions),  # labels / prompts actually drawn for these seeds
    })


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def shard_ranges(first_seed: int, n: int, shard_size: int = SHARD_SIZE) -> list[tuple[int, int]]:
    """(first seed, count) of each shard covering ``n`` seeds from ``first_seed``."""
    return [(first_seed + start, min(shard_size, n - start)) for start in range(0, n, shard_size)]


def _load_shard(path: Path, seeds: np.ndarray, key: str, images: bool = True) -> np.ndarray | bool | None:
    """A finished shard's images (``images=False``: True, without reading them), or None when it is
    absent or its key (weights, seeds, conditioning) is not ``key``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as shard:
            if str(shard["key"]) != key or not np.array_equal(shard["seeds"], seeds):
                return None
            return shard["images"] if images else "images" in shard.files
    except (OSError, ValueError, KeyError):
        return None  # unreadable: generate it again


def _shard_dir(cache_dir: Path, fingerprint: str) -> Path:
    return Path(cache_dir) / "samples" / fingerprint.partition(":")[2][:24]


def has_shards(cache_dir: Path, fingerprint: str) -> bool:
    """Whether an earlier run left finished shards of the model with this fingerprint."""
    return any(_shard_dir(cache_dir, fingerprint).glob("seeds-*.npz"))


def sampling_plan(adapter, n: int, to_generate: int, batch_size: int, ranks: int = 1) -> str:
    """The line printed before sampling: how many images (of ``n``; ``to_generate`` by all
    ``ranks`` together), steps, batch size and device."""
    settings = adapter.settings()
    steps = settings.get("steps")
    steps_text = f"{steps} steps" if steps is not None else "the model's own number of steps"
    device = getattr(adapter, "device", None) or settings.get("device") or "the model's own device"
    cached = f" ({n - to_generate} of {n} already in the cache)" if to_generate < n else ""
    spread = f" over {ranks} ranks" if ranks > 1 else ""
    return (f"sampling {to_generate} images{cached}{spread} with {steps_text}, batch {batch_size}, on {device}; "
            "the time estimate follows the first batch")


@dataclass(frozen=True)
class SampleShards:
    """Finished sample shards on disk, in seed order: ``n`` images read one shard at a time."""

    paths: tuple[Path, ...]
    ranges: tuple[tuple[int, int], ...]  # (first seed, count) of each shard
    keys: tuple[str, ...]

    @property
    def n(self) -> int:
        return sum(count for _, count in self.ranges)

    def seeds(self) -> np.ndarray:
        return np.concatenate([np.arange(start, start + count, dtype=np.int64) for start, count in self.ranges]
                              ) if self.ranges else np.zeros(0, np.int64)

    def read(self, position: int) -> np.ndarray:
        """The images of shard ``position``; DataError when it is missing or not the one expected."""
        start, count = self.ranges[position]
        shard = _load_shard(self.paths[position], np.arange(start, start + count, dtype=np.int64), self.keys[position])
        if shard is None:  # written by another rank, yet not here: the run folder is not shared
            raise DataError(f"{self.paths[position]}: a finished sample shard is missing or unreadable on rank "
                            f"{distributed.current().rank}; every rank must see the same run folder (--out on a "
                            "shared filesystem)")
        return shard

    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of the images, read from the first shard's header."""
        first = npz_member_memmap(self.paths[0], "images") if self.paths else None
        return tuple(first.shape[1:]) if first is not None else tuple(self.read(0).shape[1:])

    def blocks(self) -> Iterator[np.ndarray]:
        """Each shard's images in turn (one in memory at a time)."""
        return (self.read(position) for position in range(len(self.paths)))

    def rows(self) -> RowBlocks:
        """The images as row blocks, for a file written block by block."""
        return RowBlocks(self.n, self.blocks)

    def load(self) -> np.ndarray:
        """All the images, in memory."""
        return np.concatenate(list(self.blocks()))


def generate_samples(adapter, first_seed: int, n: int, batch_size: int, cache_dir: Path,
                     shard_size: int = SHARD_SIZE, reuse: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W, C) uint8 in memory and their seeds: ``generate_shards`` read whole."""
    shards = generate_shards(adapter, first_seed, n, batch_size, cache_dir, shard_size, reuse)
    return shards.load(), shards.seeds()


def generate_shards(adapter, first_seed: int, n: int, batch_size: int, cache_dir: Path,
                     shard_size: int = SHARD_SIZE, reuse: bool | None = None) -> SampleShards:
    """The finished shards of seeds ``first_seed .. first_seed + n - 1`` (generated by the ranks
    together), reusing finished shards from ``cache_dir`` whose key matches (``reuse=False``: none; every shard is generated and written again). By default a
    model reuses shards when its fingerprint covers all its samples depend on
    (``fingerprint_trusted``; user code without ``fingerprint()`` does not)."""
    if reuse is None:
        reuse = getattr(adapter, "fingerprint_trusted", True)
    fingerprint = adapter.fingerprint()
    shard_dir = _shard_dir(cache_dir, fingerprint)
    shard_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(shard_dir / "model.json", json.dumps({"fingerprint": fingerprint, **adapter.settings()}, indent=2))

    ranges = shard_ranges(first_seed, n, shard_size)
    paths = [shard_dir / f"seeds-{start}-{count}.npz" for start, count in ranges]

    def seeds_of(position: int) -> np.ndarray:
        start, count = ranges[position]
        return np.arange(start, start + count, dtype=np.int64)

    keys = [shard_key(fingerprint, seeds_of(p), adapter.conditioning(seeds_of(p).tolist())) for p in range(len(ranges))]

    def finished(position: int) -> bool:
        return reuse and bool(_load_shard(paths[position], seeds_of(position), keys[position], images=False))

    work = units.plan(len(ranges), finished, costs=[count for _, count in ranges])
    world = distributed.current()
    total = sum(ranges[p][1] for p in work.mine)
    description = "generating samples" + (f" (rank {world.rank} of {world.size})" if world.distributed else "")
    pending = sum(ranges[p][1] for p in work.pending)  # all ranks together
    if pending:
        progress.say(sampling_plan(adapter, n, pending, batch_size, world.size))
    started = time.monotonic()
    first_batch = True
    with progress.task(description, total=total) as advance:
        for position in work.mine:
            seeds = seeds_of(position)
            parts = []
            for batch_start in range(0, len(seeds), batch_size):
                batch_seeds = seeds[batch_start:batch_start + batch_size]
                with progress.batch(advance, len(batch_seeds)):  # the sampler's steps move the bar
                    parts.append(adapter.sample(batch_seeds.tolist(), batch_size))
                if first_batch and total > len(batch_seeds):
                    seconds = time.monotonic() - started
                    progress.say(f"first batch of {len(batch_seeds)} took {seconds:.1f} s: about "
                                 f"{progress.duration(seconds * total / len(batch_seeds))} for all {total}"
                                 + (" of this rank" if world.distributed else ""))
                first_batch = False
            write_npz_atomic(paths[position], images=np.concatenate(parts), seeds=seeds,
                             fingerprint=np.array(fingerprint), key=np.array(keys[position]))
    units.finish()
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:  # written by another rank, yet not here: the run folder is not shared
        raise DataError(f"{missing[0]}: a finished sample shard is missing on rank {world.rank}; "
                        "every rank must see the same run folder (--out on a shared filesystem)")
    return SampleShards(tuple(paths), tuple(ranges), tuple(keys))


def discard_shards(cache_dir: Path, fingerprint: str) -> None:
    """Remove the shards of the model with this fingerprint: those of a model that can never be
    reused (a Python object without ``fingerprint()``), which would only pile up."""
    import shutil

    shutil.rmtree(_shard_dir(cache_dir, fingerprint), ignore_errors=True)
