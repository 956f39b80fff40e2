"""``memaudit extract``: sample the model, find cliques of near-identical generations, verify them
against the training set when given, write the run folder (``cliques`` holds the method)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memaudit import outputs, rundir
from memaudit.devices import resolve_device
from memaudit.errors import DataError, InputError
from memaudit.extraction.cliques import VERIFY_THRESHOLD, find_candidates, verify, write_run
from memaudit.imageset import ImageSet
from memaudit.inputs import as_image_set, describe_input, shape_mismatch
from memaudit.outputs import CACHE_DIR
from memaudit.sampling import discard_shards, generate_samples


@dataclass
class ExtractConfig:
    """The settings of an extraction (the options of ``memaudit extract``)."""

    model: Any  # a MODEL spec or path, a diffusers pipeline object or a callable (as for audits)
    out: Path
    n: int  # generations to sample
    train: Any = None  # a training set (spec, path, ImageSet or array) to verify candidates against
    threshold: float = 0.15  # tiled L2 ([0, 1] pixels) at or below which two generations are near-identical
    min_clique: int = 10  # generations a clique needs (the paper: 10)
    seed: int = 0
    batch_size: int = 256
    steps: int | None = None
    device: str = "auto"
    labels: str | None = None
    prompts: str | None = None
    trust_checkpoint: bool = False
    command: str | None = None


@rundir.claimed(("extract.json", "extract.html", "samples.npz"), "extract")
def run_extract(config: ExtractConfig) -> dict:
    """Carlini et al. (2023) section 4's generate-and-filter extraction (``memaudit extract``): sample
    ``n`` generations, report cliques of at least ``min_clique`` generations within tiled L2
    ``threshold`` of each other, and verify each against ``train`` when given. Writes extract.json,
    extract.html and samples.npz into ``out``; returns extract.json's content."""
    from memaudit.adapters import SamplerOptions, load_model_object

    model, out, n, train, threshold, min_clique = (config.model, config.out, config.n, config.train, config.threshold,
                                                   config.min_clique)
    seed, batch_size, steps, device, labels, prompts = (config.seed, config.batch_size, config.steps, config.device,
                                                        config.labels, config.prompts)
    trust_checkpoint, command = config.trust_checkpoint, config.command
    if n < 2:
        raise InputError(f"--n {n}: extraction compares generations with each other; give at least 2")
    if not 0.0 < threshold <= 1.0:
        raise InputError(f"--threshold {threshold}: expected a tiled L2 distance in (0, 1] ([0, 1] pixels)")
    if min_clique < 2:
        raise InputError(f"--min-clique {min_clique}: a clique needs at least 2 generations (the paper uses 10)")
    train_set = as_image_set(train, "--train", role="train") if train is not None else None
    device = resolve_device(device)
    placeholder = train_set or ImageSet(images=np.zeros((1, 1, 1, 1), np.uint8), ids=["-"], spec="(extract)")
    options = SamplerOptions(steps=steps, device=device, labels=labels, prompts=prompts, trust_checkpoint=trust_checkpoint)
    adapter = load_model_object(model, placeholder, options)
    out = Path(out)
    images, seeds = generate_samples(adapter, seed, n, batch_size, out / CACHE_DIR)  # reuse: as the model's fingerprint allows
    if not getattr(adapter, "reusable", True):
        discard_shards(out / CACHE_DIR, adapter.fingerprint())
    conditioning = adapter.conditioning(seeds.tolist())
    groups = next(iter(conditioning.values())) if conditioning else ["all"] * len(images)
    if train_set is not None and train_set.image_shape != images.shape[1:]:
        raise DataError(shape_mismatch(f"MODEL {describe_input(model)}", images.shape[1:], describe_input(train),
                                       train_set.image_shape))
    candidates = find_candidates(images, list(groups), threshold, min_clique)
    if train_set is not None:
        verify(candidates, images, train_set.images, train_set.ids)
        for candidate in candidates:
            j = candidate["verification"]["nearest_train_index"]
            candidate["verification"]["nearest_train_png"] = outputs.png_data_uri(train_set.images[j])
    document = {"schema_version": 1, "kind": "extract",
                "model": {"spec": describe_input(model), "fingerprint": adapter.fingerprint(), "settings": adapter.settings()},
                "n_samples": int(len(images)), "seed": seed, "threshold": threshold, "min_clique": min_clique,
                "grouping": next(iter(conditioning), "none"),
                "train": None if train_set is None else {"spec": describe_input(train), "n": len(train_set), "fingerprint": train_set.fingerprint},
                "verification_threshold": VERIFY_THRESHOLD if train_set is not None else None,
                "provenance": {"command": command, "device": device, "batch_size": batch_size,
                               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
    return write_run(out, images, seeds, list(groups), candidates, document)
