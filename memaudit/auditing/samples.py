"""The audit's samples: generated from the model in resumable shards, or given (``--samples``);
written to samples.npz and memory-mapped from it on every rank."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memaudit import distributed, outputs, progress
from memaudit.auditing.config import AuditConfig
from memaudit.data import ImageSet
from memaudit.devices import resolve_device
from memaudit.errors import DataError
from memaudit.inputs import as_image_set, check_same_shape, describe_input, shape_mismatch
from memaudit.outputs import CACHE_DIR
from memaudit.sampling import discard_shards, generate_shards, has_shards


SAFETY_BATCH = 64  # images per batch of a pipeline's safety checker


def _publish_samples(out: Path, images, seeds: np.ndarray, conditions: dict) -> np.ndarray:
    """samples.npz written by rank 0 (``images``: an array, or ``RowBlocks`` streamed one shard at
    a time), then its images memory-mapped on every rank: no rank holds the samples whole."""
    world = distributed.current()
    if world.is_main:
        outputs.write_samples(out, images, seeds, conditions)
    world.barrier()
    return outputs.mapped_samples(out)


@dataclass
class Samples:
    images: np.ndarray
    seeds: np.ndarray
    conditions: dict
    model_info: dict
    device: str | None


def given_samples(config: AuditConfig, train: ImageSet) -> Samples:
    """Images generated elsewhere (--samples), with their seeds when the file records them."""
    with distributed.current().main_first():
        given = as_image_set(config.samples, "--samples", options=config.load_options(), role="sample")
    check_same_shape(given, train, f"--samples {describe_input(config.samples)}")
    seeds = given.seeds if given.seeds is not None else np.full(len(given), -1, np.int64)
    model_info = {"spec": None, "fingerprint": None, "samples": describe_input(config.samples),
                  "samples_fingerprint": given.fingerprint}
    return Samples(_publish_samples(config.out, given.images, seeds, {}), seeds, {}, model_info, None)


def generated_samples(config: AuditConfig, train: ImageSet) -> Samples:
    """Samples of MODEL for seeds seed..seed+n-1, from finished shards where a rerun finds them."""
    from memaudit.adapters import SamplerOptions, load_model_object
    from memaudit.adapters.seeding import describe_seeding

    device = resolve_device(config.device)
    options = SamplerOptions(
        steps=config.steps, device=device, labels=config.labels, prompts=config.prompts, guidance=config.guidance,
        scheduler=config.scheduler, dtype=config.dtype, trust_checkpoint=config.trust_checkpoint,
        code_path=config.code_path, factory=config.factory, variant=config.variant, safety_checker=config.safety_checker,
        seeding=config.seeding, sampler_options=dict(config.sampler_options), loras=tuple(config.loras),
        embeddings=tuple(config.embeddings), base=config.base)
    adapter = load_model_object(config.model, train, options)
    name = f"MODEL {describe_input(config.model)}"
    if adapter.image_shape is not None and tuple(adapter.image_shape) != train.image_shape:
        raise DataError(shape_mismatch(name, adapter.image_shape, train.spec, train.image_shape))
    # A model whose fingerprint cannot cover all it depends on (user code without fingerprint())
    # could have changed behind an unchanged key: its earlier samples are reused only on --resume,
    # and those of a Python object without fingerprint() never (``reusable``: adapters.objects).
    trusted = getattr(adapter, "fingerprint_trusted", True)
    reuse = trusted or (config.resume and getattr(adapter, "reusable", True))
    if not trusted and not config.resume and has_shards(config.out / CACHE_DIR, adapter.fingerprint()):
        progress.note(f"{name}: the model defines no fingerprint(), so samples of earlier runs in "
                      f"{config.out} are not reused; generating afresh (--resume reuses them; define fingerprint() to key them)")
    world = distributed.current()
    shards = generate_shards(adapter, config.seed, config.n, config.batch_size, config.out / CACHE_DIR, reuse=reuse)
    seeds = shards.seeds()
    conditions = adapter.conditioning(seeds.tolist())
    if shards.image_shape() != train.image_shape:
        if world.is_main and not getattr(adapter, "reusable", True):
            discard_shards(config.out / CACHE_DIR, adapter.fingerprint())
        raise DataError(shape_mismatch(name, shards.image_shape(), train.spec, train.image_shape))
    images = _publish_samples(config.out, shards.rows(), seeds, conditions)
    if not getattr(adapter, "reusable", True) and world.is_main:
        discard_shards(config.out / CACHE_DIR, adapter.fingerprint())  # never reusable: do not let them pile up
    settings = adapter.settings()
    model_info = {"spec": describe_input(config.model), "fingerprint": adapter.fingerprint(), "settings": settings,
                  "seeding": describe_seeding(settings)}
    dataset_kwargs = getattr(adapter, "dataset_kwargs", None)
    if dataset_kwargs:  # what an EDM snapshot says it was trained on, checked against --train
        model_info["dataset_kwargs"] = {str(k): v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                                        for k, v in dataset_kwargs.items()}
    model_info["warnings"] = list(getattr(adapter, "warnings", []))
    start, stop = world.batch_range(len(images), SAFETY_BATCH)  # each rank classifies its rows
    flags = getattr(adapter, "safety_flags", lambda images, batch_size: None)(images[start:stop], SAFETY_BATCH)
    if flags is not None:  # the checker only classified: the samples are audited as the model drew them
        flags = world.concat_rows(np.asarray(flags, dtype=bool))
        model_info["safety_checker"] = {"flagged": int(flags.sum()), "flagged_seeds": seeds[flags].tolist()}
    return Samples(images, seeds, conditions, model_info, device)
