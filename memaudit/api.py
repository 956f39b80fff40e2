"""The Python API: everything the CLI does, as functions."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memaudit import __version__, distributed, outputs, progress, rundir, verdict
from memaudit.config import AuditConfig
from memaudit.criteria import CRITERIA
from memaudit.data import ImageSet, load_image_set
from memaudit.devices import resolve_device
from memaudit.errors import DataError, InputError
from memaudit.features import get_space
from memaudit.inputs import (as_image_set, check_option_types, check_option_values, check_options, config_fields,
                             describe_value)
from memaudit.measure import SearchOptions, measure_space
from memaudit.result import AuditResult, RunResult, read_run
from memaudit.sampling import discard_shards, generate_samples, generate_shards, has_shards
from memaudit.storage import image_digests

SCHEMA_VERSION = 1
CACHE_DIR = ".cache"


def run_audit(config: AuditConfig) -> AuditResult:
    """Sample (or load) images, find their nearest training images, apply the criterion, write the run.

    Under torchrun every rank calls it: the ranks share the sampling, feature extraction and search
    (``memaudit.distributed``), every rank returns the same result, and rank 0 writes the run."""
    config.validate()
    world = distributed.current()
    world.check_shared_folder(config.out, "--out")
    # The folder is ours alone for the run (a second writer is refused), marked running first and
    # complete last: a run that dies part-way leaves a folder that says so.
    with rundir.claim(config.out, _manifest_inputs(config), config.command) as run:
        result = _run_audit(config)
        run.complete(list(OUTPUT_FILES))
        world.barrier()
    return result


def _search_options(config: AuditConfig) -> SearchOptions:
    return SearchOptions(config.index, config.exact_limit, config.nlist, config.m, config.nbits, config.nprobe,
                         config.ef, config.target_recall)


OUTPUT_FILES = (outputs.AUDIT_JSON, outputs.NEIGHBORS_CSV, outputs.SAMPLES_NPZ, outputs.REPORT_HTML)


def _manifest_inputs(config: AuditConfig) -> dict:
    """The settings of a run, JSON-ready, for its manifest (objects given to the Python API by
    description: an array by its shape, a model object by its type)."""
    inputs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "command"}
    return {key: list(value) if isinstance(value, tuple) else
            value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else _describe(value)
            for key, value in inputs.items()}


def _describe(value) -> str | None:
    """How an input is named in audit.json and messages: a path as given, an object by its kind."""
    from memaudit.adapters.objects import describe_model

    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, (ImageSet, np.ndarray)):
        return describe_value(value)
    return describe_model(value)


def _run_audit(config: AuditConfig) -> AuditResult:
    """The audit itself (or a snapshot sweep), in a folder ``run_audit`` has claimed."""
    from memaudit.reports import write_report

    world = distributed.current()
    if isinstance(config.model, (str, Path)):
        from memaudit.adapters.snapshots import is_snapshot_folder, list_snapshots
        from memaudit.sweep import run_sweep

        folder = Path(config.model).expanduser()
        if is_snapshot_folder(folder):
            config.out.mkdir(parents=True, exist_ok=True)
            return run_sweep(config, list_snapshots(folder))
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 1. The training set (decoded once into the store by rank 0, then memory-mapped by every rank).
    with world.main_first():
        train = as_image_set(config.train, "--train", options=config.load_options(), role="train")
    if len(train) < 2:
        raise DataError(f"--train {_describe(config.train)}: holds {len(train)} image; the nn-ratio criterion needs at least 2 "
                        "training images (the nearest and the second nearest)")
    # Feature spaces and the holdout are checked before any sampling: a missing weights file
    # should not surface after an hour of generation.
    spaces = [get_space(spec, resolve_device(config.device)) for spec in config.space_list()]
    holdout = _load_holdout(config, train)
    timings["load_train_s"] = time.perf_counter() - started

    # 2. The samples: generated from the model in resumable shards, or given; written to
    #    samples.npz and memory-mapped from it (each rank reads the rows it works on).
    config.out.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    samples = _given_samples(config, train) if config.samples is not None else _generated_samples(config, train)
    images, seeds = samples.images, samples.seeds
    timings["samples_s"] = time.perf_counter() - tick

    # 3. Nearest training images in each feature space (pixel first: the paper's), the criteria,
    #    calibration against the holdout, quality.
    tick = time.perf_counter()
    results = {}
    scratch = config.out / CACHE_DIR / SAMPLE_FEATURES
    for space in spaces:
        results[space.name] = measure_space(space, images, train, holdout, config.thresholds(space.name),
                                            _search_options(config),
                                            config.criterion_settings(), scratch=scratch)
    timings["search_s"] = time.perf_counter() - tick
    pixel = results["pixel"]
    verdicts = pixel.verdicts["nn-ratio"]
    if world.is_main:
        outputs.write_neighbors(config.out, [(name, r.l2, r.indices, r.verdicts["nn-ratio"])
                                             for name, r in results.items()], seeds)
        outputs.write_verdicts(config.out, {name: r.verdicts for name, r in results.items()}, seeds)

    # 4. The verdict (memaudit.verdict): exact copies, the criteria allowed to speak, the gate.
    criterion = pixel.summary["criteria"]["nn-ratio"]
    space_summaries = {name: r.summary for name, r in results.items()}
    with world.main_first():
        train_groups = verdict.digest_groups(verdict.training_digests(train))
    copies = verdict.find_copies(pixel.l2, pixel.indices, _sample_digests(images), train_groups,
                                 verdict.copy_radius(train.image_shape))
    duplicate_groups = verdict.training_duplicates(train_groups)
    flags = {(name, c): v.memorized for name, r in results.items() for c, v in r.verdicts.items()}
    headline, gate = verdict.decide(space_summaries, flags, copies, seeds, train.ids, train.image_shape,
                                    config.target_fpr, config.fail_above, duplicate_groups)
    order = verdict.evidence_order(len(images), copies, flags, space_summaries, verdicts.scores)

    # 5. audit.json, then the report rendered from it alone.
    timings["total_s"] = time.perf_counter() - started
    space_summaries["pixel"]["per_sample"] = _per_sample(seeds, pixel.l2, pixel.indices, verdicts, pixel.verdicts,
                                                        train.ids)
    audit = {
        "schema_version": SCHEMA_VERSION,
        "memorization_ratio": criterion["fraction"],
        "n_samples": int(len(images)),
        "train": {"spec": _describe(config.train), "n": len(train), "fingerprint": train.fingerprint,
                  "image_shape": list(train.image_shape), "skipped": train.skipped or []},
        "preprocessing": {"resize": config.resize, "image_size": config.load_options().size, "on_error": config.on_error},
        "holdout": None if holdout is None else {"spec": _describe(config.holdout), "n": len(holdout), "fingerprint": holdout.fingerprint},
        "model": samples.model_info,
        "seeds": None if config.samples is not None else {"first": config.seed, "count": config.n},
        "spaces": space_summaries,
        "findings": _findings(images, seeds, samples.conditions, train, results, config.top,
                              (samples.model_info.get("safety_checker") or {}).get("flagged_seeds"),
                              order, copies, space_summaries),
        "headline": headline,
        "gate": gate,
        "warnings": [*samples.model_info.get("warnings", []), *_duplicate_warnings(duplicate_groups, train, pixel)],
        "report": {"redact": config.redact},
        "provenance": _provenance(config, samples.device, timings),
    }
    if config.mia_members is not None and world.is_main:  # optional: membership inference on the same model
        audit["mia"] = _mia_section(config)
    if world.is_main:
        outputs.write_audit(config.out, audit)
        write_report(config.out, redact=config.redact)
    world.barrier()  # the run is complete on disk before any rank returns
    if world.is_main:
        shutil.rmtree(scratch, ignore_errors=True)  # the samples' features of a distributed run: this run's only
    return AuditResult(config.out, audit)


SAFETY_BATCH = 64  # images per batch of a pipeline's safety checker
SAMPLE_FEATURES = "sample-features"  # under the run's cache: samples' features the ranks share during a run


def _publish_samples(out: Path, images, seeds: np.ndarray, conditions: dict) -> np.ndarray:
    """samples.npz written by rank 0 (``images``: an array, or ``RowBlocks`` streamed one shard at
    a time), then its images memory-mapped on every rank: no rank holds the samples whole."""
    world = distributed.current()
    if world.is_main:
        outputs.write_samples(out, images, seeds, conditions)
    world.barrier()
    return outputs.mapped_samples(out)


@dataclass
class _Samples:
    images: np.ndarray
    seeds: np.ndarray
    conditions: dict
    model_info: dict
    device: str | None


def _given_samples(config: AuditConfig, train: ImageSet) -> _Samples:
    """Images generated elsewhere (--samples), with their seeds when the file records them."""
    with distributed.current().main_first():
        given = as_image_set(config.samples, "--samples", options=config.load_options(), role="sample")
    _check_same_shape(given, train, f"--samples {_describe(config.samples)}")
    seeds = given.seeds if given.seeds is not None else np.full(len(given), -1, np.int64)
    model_info = {"spec": None, "fingerprint": None, "samples": _describe(config.samples),
                  "samples_fingerprint": given.fingerprint}
    return _Samples(_publish_samples(config.out, given.images, seeds, {}), seeds, {}, model_info, None)


def _generated_samples(config: AuditConfig, train: ImageSet) -> _Samples:
    """Samples of MODEL for seeds seed..seed+n-1, from finished shards where a rerun finds them."""
    from memaudit.adapters import SamplerOptions
    from memaudit.adapters.seeding import describe_seeding

    device = resolve_device(config.device)
    options = SamplerOptions(
        steps=config.steps, device=device, labels=config.labels, prompts=config.prompts, guidance=config.guidance,
        scheduler=config.scheduler, dtype=config.dtype, trust_checkpoint=config.trust_checkpoint,
        code_path=config.code_path, factory=config.factory, variant=config.variant, safety_checker=config.safety_checker,
        seeding=config.seeding, sampler_options=dict(config.sampler_options))
    adapter = load_model_object(config.model, train, options)
    name = f"MODEL {_describe(config.model)}"
    if adapter.image_shape is not None and tuple(adapter.image_shape) != train.image_shape:
        raise DataError(_shape_mismatch(name, adapter.image_shape, train.spec, train.image_shape))
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
        raise DataError(_shape_mismatch(name, shards.image_shape(), train.spec, train.image_shape))
    images = _publish_samples(config.out, shards.rows(), seeds, conditions)
    if not getattr(adapter, "reusable", True) and world.is_main:
        discard_shards(config.out / CACHE_DIR, adapter.fingerprint())  # never reusable: do not let them pile up
    settings = adapter.settings()
    model_info = {"spec": _describe(config.model), "fingerprint": adapter.fingerprint(), "settings": settings,
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
    return _Samples(images, seeds, conditions, model_info, device)


def load_model_object(model, train: ImageSet, options):
    """The adapter of MODEL: a spec or path (``adapters.load_model``) or a Python object
    (``adapters.objects``: a diffusers pipeline object, a callable); options it cannot use refused."""
    from memaudit.adapters import load_model
    from memaudit.adapters.base import refuse_inapplicable
    from memaudit.adapters.objects import adapt_object

    if isinstance(model, (str, Path)):
        return load_model(str(model), train, options)
    adapter = adapt_object(model, train, options)
    refuse_inapplicable(adapter, options)
    return adapter


def _sample_digests(images) -> np.ndarray:
    """Each sample's digest (``verdict.image_digest_array``), each rank hashing its row range."""
    world = distributed.current()
    start, stop = world.row_range(len(images))
    return world.concat_rows(verdict.image_digest_array(images[start:stop]))


def _duplicate_warnings(groups: list[list[int]], train: ImageSet, pixel) -> list[str]:
    """What the training set's duplicates do to the paper's criterion, for audit.json's warnings."""
    warnings = []
    if groups:
        shown = "; ".join(", ".join(train.ids[r] for r in rows) for rows in groups[:3])
        warnings.append(
            f"the training set holds {len(groups)} group{'s' if len(groups) != 1 else ''} of byte-identical images "
            f"({sum(len(g) for g in groups)} images: {shown}{'; ...' if len(groups) > 3 else ''}); the paper's nn-ratio "
            "cannot flag a copy of any of them (d1 = d2 = 0, a ratio of 0/0): such copies are found by the exact-copy "
            "rule, and the duplicate-aware ratio (nn-ratio-dedup) is shown beside the paper's")
    near = pixel.summary["duplicates"]["samples_whose_nn1_is_duplicated"]
    if near:
        warnings.append(f"the nearest training image of {near} sample{'s' if near != 1 else ''} has a near-duplicate in "
                        "the training set: the paper's nn-ratio reads such a sample as not memorized even when it "
                        "copies it; see nn-ratio-dedup")
    return warnings


def render_report(run_dir: Path, redact: str | None = None) -> Path:
    """Re-render report.html of a finished run from its audit.json (``redact``: none, blur, omit;
    default: the choice recorded in audit.json)."""
    from memaudit.reports import write_report

    with rundir.amended(Path(run_dir), (outputs.REPORT_HTML,)):  # the run's lock while the page is rewritten
        return write_report(Path(run_dir), redact=redact)


@rundir.claimed(("compare.json", "compare.html"), "compare")
def compare_runs(run_dirs: list[Path], out: Path, allow_mismatch: bool = False) -> Path:
    """Write compare.json and compare.html for several finished audits; see ``memaudit.compare``."""
    from memaudit.compare import write_comparison

    return write_comparison([Path(d) for d in run_dirs], Path(out), allow_mismatch=allow_mismatch)


def run_emm(config):
    """Estimate Effective Model Memorization by retraining on nested subsets (``memaudit.emm.run``);
    ``config`` is a ``memaudit.emm.recipe.EMMConfig``. Returns an ``EMMResult`` (emm.json, emm.html)."""
    from memaudit.emm.run import run_emm as _run_emm

    return _run_emm(config, run_audit)


def _check_same_shape(samples: ImageSet, train: ImageSet, name: str) -> None:
    if samples.image_shape != train.image_shape:
        raise DataError(_shape_mismatch(name, samples.image_shape, train.spec, train.image_shape))


def _shape_mismatch(name, shape, train_spec, train_shape) -> str:
    fmt = lambda s: "x".join(str(v) for v in s)  # noqa: E731
    return (f"{name}: images are {fmt(shape)} (HxWxC) but the training set {train_spec} is {fmt(train_shape)}; "
            "samples and training images must have the same size and channels")


def _findings(images, seeds, conditions, train: ImageSet, results: dict, top: int,
              flagged_seeds: list[int] | None, order: np.ndarray, copies: list, spaces: dict) -> list[dict]:
    """Samples to show, each with an inline thumbnail, the training images its score refers to, and
    its nearest training image in every other space: first the ``top`` samples of ``order`` (the
    strongest evidence first: copies, then flagged samples, by the paper's pixel nn ratio), then,
    for every other space and criterion, up to ``top`` of the samples it flags, copies first, then
    most memorized. ``space`` and ``criterion`` say which list a finding belongs to; ``score`` is
    its score there; ``flagged_by`` every space/criterion that flags the sample; ``copy`` the
    training images it copies (``verdict.find_copies``). ``flagged_seeds``: samples a pipeline's
    safety checker flagged, marked as such."""
    safety_flagged = set(flagged_seeds or [])
    copy_of = {i: {"exact": exact, "train_ids": [train.ids[r] for r in rows]} for i, exact, rows in copies}
    pixel = results["pixel"]
    verdicts = pixel.verdicts["nn-ratio"]
    flagged_by = [[f"{name}/{c}" for name, r in results.items() for c, v in r.verdicts.items() if v.memorized[i]]
                  for i in range(len(images))]

    def neighbour(result, i, rank, index=None):
        """Training image ``index`` (default: the rank-th neighbour) with its L2 distance to sample i;
        computed directly when the search did not return it (tiled-l2's nearest can lie beyond)."""
        column = rank
        if index is not None:
            hits = np.nonzero(result.indices[i] == index)[0]
            column = int(hits[0]) if len(hits) else None
        index = int(result.indices[i, rank]) if index is None else index
        distance = (float(result.l2[i, column]) if column is not None else
                    float(np.sqrt(((images[i].astype(np.float64) - train.images[index]) ** 2).sum())))
        return {"rank": rank + 1, "index": int(index), "id": train.ids[index],
                "label": None if train.labels is None else int(train.labels[index]),
                "caption": None if train.captions is None else train.captions[index],
                "distance": distance, "image": outputs.png_data_uri(train.images[index])}

    def finding(i, space, verdict, neighbors):
        return {
            "sample": int(i), "seed": None if seeds[i] < 0 else int(seeds[i]),
            "image": outputs.png_data_uri(images[i]),
            "label": conditions["labels"][i] if "labels" in conditions else None,
            "prompt": conditions["prompts"][i] if "prompts" in conditions else None,
            "safety_flagged": int(seeds[i]) in safety_flagged if flagged_seeds is not None else None,
            "space": space, "criterion": verdict.criterion,
            "ratio": float(verdicts.scores[i]), "score": float(verdict.scores[i]),
            "threshold": float(verdict.threshold), "memorized": bool(verdict.memorized[i]),
            "flagged_by": flagged_by[i],
            "source_duplicated": bool(pixel.duplicates[i, 1:].any()),
            "copy": copy_of.get(int(i)),
            "speaks": spaces[space]["criteria"][verdict.criterion]["standing"]["speaks"],
            "neighbors": neighbors,
            "other_spaces": {name: {**neighbour(r, i, 0), "memorized": {c: bool(v.memorized[i]) for c, v in r.verdicts.items()}}
                             for name, r in results.items() if name != "pixel"},
        }

    findings = [finding(i, "pixel", verdicts, [neighbour(pixel, i, 0), neighbour(pixel, i, 1)]) for i in order[:top]]
    copied = np.zeros(len(images), bool)
    copied[list(copy_of)] = True
    for name, result in results.items():
        for criterion, verdict in result.verdicts.items():
            if (name, criterion) == ("pixel", "nn-ratio") or not verdict.memorized.any():
                continue
            flagged = np.nonzero(verdict.memorized)[0]
            key = verdict.scores[flagged] if CRITERIA[criterion].memorized_below else -verdict.scores[flagged]
            for i in flagged[np.lexsort((flagged, key, ~copied[flagged]))][:top]:
                findings.append(finding(i, name, verdict, [neighbour(result, i, 0, index=int(verdict.nn[i]))]))
    return findings


def index_training_set(data: str, space_specs: list[str], device: str = "auto", index: str | None = None,
                       nlist: int | None = None, m: int | None = None, nbits: int | None = None) -> list[dict]:
    """Fill the feature caches of a training set ahead of audits (``memaudit index``), and with
    ``index`` (ivf-pq, ivf, hnsw) build its approximate index in each space, which audits with the
    same ``--index`` and parameters then load: one row per space saying where its features (and
    index) are and whether they were already there."""
    from memaudit.features.cache import cache_key, cache_path, cached_features
    from memaudit.errors import InputError
    from memaudit.search import Approximate, persist_index

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


@rundir.claimed(("dedup.json",), "dedup")
def find_training_duplicates(data: str, space_spec: str = "pixel", threshold: float | None = None,
                             device: str = "auto", out: Path | None = None) -> dict:
    """Exact and near-duplicate clusters of a training set (``memaudit dedup``); written to
    ``out/dedup.json`` when ``out`` is given. ``threshold`` is an RMS pixel difference in [0, 1]
    for pixel spaces, a cosine similarity for embedding spaces."""
    from memaudit.dedup import applied_threshold, find_duplicates, radius
    from memaudit.features.cache import features_of
    from memaudit.storage import write_json_atomic

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


def _load_holdout(config: AuditConfig, train: ImageSet) -> ImageSet | None:
    if config.holdout is None:
        return None
    with distributed.current().main_first():
        holdout = as_image_set(config.holdout, "--holdout", options=config.load_options(), role="holdout")
    _check_same_shape(holdout, train, f"--holdout {_describe(config.holdout)}")
    seen = set(image_digests(train.images))
    overlap = sum(digest in seen for digest in image_digests(holdout.images))
    if overlap:
        raise DataError(f"--holdout {_describe(config.holdout)}: {overlap} of its {len(holdout)} images are training images; "
                        "a holdout must hold images the model never saw, or its false-positive rates are inflated")
    return holdout


def _per_sample(seeds, distances, indices, verdicts, all_verdicts: dict, ids: list[str]) -> dict:
    """Every sample's neighbours and verdict, columnar, for the report's full table; then each other
    pixel criterion's score and verdict. Training images are named by their ``ids``, as everywhere
    on the page (neighbors.csv keeps the 0-based rows)."""
    others = [v for name, v in all_verdicts.items() if name != "nn-ratio"]
    rows = [
        [i, None if seeds[i] < 0 else int(seeds[i]), ids[indices[i, 0]], round(float(distances[i, 0]), 4),
         ids[indices[i, 1]], round(float(distances[i, 1]), 4), round(float(verdicts.scores[i]), 6),
         bool(verdicts.memorized[i])]
        + [value for v in others for value in (round(float(v.scores[i]), 6), bool(v.memorized[i]))]
        for i in range(len(seeds))
    ]
    columns = ["sample", "seed", "nn1", "d1", "nn2", "d2", "ratio", "memorized"]
    columns += [column for v in others for column in (v.criterion, f"{v.criterion} memorized")]
    return {"columns": columns, "rows": rows}


def _provenance(config: AuditConfig, device: str | None, timings: dict) -> dict:
    import torch

    return {
        "memaudit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": config.command,
        "device": device,
        **distributed.current().describe(),
        "batch_size": config.batch_size,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def _mia_section(config: AuditConfig) -> dict:
    """The audit's MIA section: ``memaudit mia`` run into ``OUT/mia/``, summarised (AUC, TPR at low FPR)."""
    from memaudit.mia.audit import MiaConfig

    document = run_mia(MiaConfig(model=config.model, out=Path(config.out) / "mia", members=config.mia_members,
                                 nonmembers=config.mia_nonmembers, device=config.device,
                                 trust_checkpoint=config.trust_checkpoint, code_path=config.code_path,
                                 factory=config.factory, command=config.command))
    return {"run_dir": "mia", "members": _describe(config.mia_members), "nonmembers": _describe(config.mia_nonmembers),
            "best_attack": document["best_attack"], "verdict": document.get("verdict"),
            "attacks": {name: {key: a.get(key) for key in ("paper", "settings", "auc", "auc_ci95", "tpr_at_fpr")}
                        for name, a in document["attacks"].items()}}


@rundir.claimed(("mia.json", "scores.csv", "mia.html"), "mia")
def run_mia(config):
    """Membership inference (``memaudit mia``): score ``config.members`` against ``config.nonmembers``
    (and ``config.query`` images of unknown status) with each attack of ``memaudit.mia``; write
    mia.json, scores.csv and mia.html into ``config.out``. Returns mia.json's content."""
    from memaudit.adapters import SamplerOptions
    from memaudit.errors import InputError
    from memaudit.mia.audit import run, scored_set

    if config.query is None and (config.members is None or config.nonmembers is None):
        raise InputError("mia: give --members DATA and --nonmembers DATA (ground truth), or --query DATA with "
                         "--nonmembers DATA (p-values)")
    if config.query is not None and config.nonmembers is None:
        raise InputError("--query: p-values need --nonmembers DATA, images known to be outside the training set")
    if config.limit is not None and config.limit < 1:
        raise InputError(f"--limit {config.limit}: expected a positive number of images per set")
    from memaudit.mia import attack_settings

    for name in config.attacks:  # every name and setting checked before any work
        attack_settings(name, config.settings.get(name, {}))
    sets, shape = [], None
    for role, spec in (("member", config.members), ("nonmember", config.nonmembers), ("query", config.query)):
        if spec is None:
            continue
        image_set = as_image_set(spec, f"--{role}s" if role != "query" else "--query", role=role)
        if shape is not None and image_set.image_shape != shape:
            raise DataError(f"{_describe(spec)}: images of shape {image_set.image_shape}, the other sets' are {shape}")
        shape = image_set.image_shape
        sets.append(scored_set(role, image_set, config.limit))
    device = resolve_device(config.device)
    options = SamplerOptions(device=device, trust_checkpoint=config.trust_checkpoint, code_path=config.code_path,
                             factory=config.factory)
    adapter = _model_to_query(config.model, options)  # each image is scored under its own label or caption
    if adapter.image_shape is not None and tuple(adapter.image_shape) != shape:
        raise DataError(_shape_mismatch(f"MODEL {_describe(config.model)}", adapter.image_shape, sets[0].role, shape))
    described = {name: _describe(getattr(config, name)) for name in ("model", "members", "nonmembers", "query")}
    return run(dataclasses.replace(config, **described), adapter, sets, device)  # mia.json names objects by kind


def _model_to_query(model, options):
    """A model loaded to be queried (``adapters.load_model_to_query``), also from a Python object."""
    from memaudit.adapters import load_model_to_query
    from memaudit.adapters.base import refuse_inapplicable
    from memaudit.adapters.objects import adapt_object

    if isinstance(model, (str, Path)):
        return load_model_to_query(str(model), options)
    placeholder = ImageSet(images=np.zeros((1, 1, 1, 1), np.uint8), ids=["-"], spec="(queried)", captions=["-"])
    adapter = adapt_object(model, placeholder, dataclasses.replace(options, labels="uniform", prompts="train"))
    refuse_inapplicable(adapter, options)
    return adapter


@rundir.claimed(("extract.json", "extract.html", "samples.npz"), "extract")
def run_extract(model: str, out: Path, n: int, *, train: str | None = None, threshold: float = 0.15,
                min_clique: int = 10, seed: int = 0, batch_size: int = 256, steps: int | None = None,
                device: str = "auto", labels: str | None = None, prompts: str | None = None,
                trust_checkpoint: bool = False, command: str | None = None) -> dict:
    """Carlini et al. (2023) section 4's generate-and-filter extraction (``memaudit extract``): sample
    ``n`` generations, report cliques of at least ``min_clique`` generations within tiled L2
    ``threshold`` of each other, and verify each against ``train`` when given. Writes extract.json,
    extract.html and samples.npz into ``out``; returns extract.json's content."""
    from memaudit.adapters import SamplerOptions
    from memaudit.detect.extract import VERIFY_THRESHOLD, find_candidates, verify, write_run
    from memaudit.errors import InputError

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
        raise DataError(_shape_mismatch(f"MODEL {_describe(model)}", images.shape[1:], _describe(train),
                                        train_set.image_shape))
    candidates = find_candidates(images, list(groups), threshold, min_clique)
    if train_set is not None:
        verify(candidates, images, train_set.images, train_set.ids)
        for candidate in candidates:
            j = candidate["verification"]["nearest_train_index"]
            candidate["verification"]["nearest_train_png"] = outputs.png_data_uri(train_set.images[j])
    document = {"schema_version": 1, "kind": "extract",
                "model": {"spec": _describe(model), "fingerprint": adapter.fingerprint(), "settings": adapter.settings()},
                "n_samples": int(len(images)), "seed": seed, "threshold": threshold, "min_clique": min_clique,
                "grouping": next(iter(conditioning), "none"),
                "train": None if train_set is None else {"spec": _describe(train), "n": len(train_set), "fingerprint": train_set.fingerprint},
                "verification_threshold": VERIFY_THRESHOLD if train_set is not None else None,
                "provenance": {"command": command, "device": device, "batch_size": batch_size,
                               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
    return write_run(out, images, seeds, list(groups), candidates, document)


@rundir.claimed(("detect.json", "detect.html"), "detect")
def run_detect(pipeline: str, prompts: str, out: Path | None = None, *, detector: str = "text-noise-norm",
               steps: int | None = None, guidance: float | None = None, generations: int | None = None,
               first_steps: int | None = None, gamma_norm: float | None = None,
               gamma_alignment: float | None = None, seed: int = 0, batch_size: int = 64, device: str = "auto",
               trust_checkpoint: bool = False, command: str | None = None) -> dict:
    """Training-data-free detection of memorized prompts (``memaudit detect``): each prompt's score
    under ``detector`` (see memaudit.detect.detectors; default Wen et al. ICLR 2024's text-conditional
    noise magnitude), and the AUC of memorized against novel prompts when the prompt file labels
    them. Settings left None take the detector's paper defaults; one it does not have is refused.
    Writes detect.json and detect.html into ``out`` when given; returns detect.json's content."""
    from memaudit.adapters import SamplerOptions, load_model_to_query
    from memaudit.detect.detectors import get_detector
    from memaudit.detect.wen import read_prompts
    from memaudit.errors import ModelError
    from memaudit.mia import metrics

    chosen = get_detector(detector)
    settings = chosen.settings({"steps": steps, "guidance": guidance, "generations": generations,
                                "first_steps": first_steps, "gamma_norm": gamma_norm,
                                "gamma_alignment": gamma_alignment})
    if "first_steps" in settings:
        settings["first_steps"] = min(settings["first_steps"], settings["steps"])
    texts, labels = read_prompts(prompts)
    device = resolve_device(device)
    adapter = load_model_to_query(pipeline, SamplerOptions(device=device, trust_checkpoint=trust_checkpoint))
    if getattr(adapter, "family", None) != "text-to-image":
        raise ModelError(f"{pipeline}: detect needs a text-to-image pipeline (a prompt-taking diffusers pipeline)")
    columns = chosen.run(adapter.pipeline, texts, seed=seed, device=device, batch_size=batch_size, **settings)
    scores = columns["score"]
    rows = [{"prompt": p, "label": {1: "memorized", 0: "novel", None: None}[lab],
             **{name: float(values[i]) for name, values in columns.items()}}
            for i, (p, lab) in enumerate(zip(texts, labels))]
    document = {"schema_version": 1, "kind": "detect", "model": {"spec": pipeline, "fingerprint": adapter.fingerprint()},
                "detector": chosen.name, "method": chosen.method, "settings": {**settings, "seed": seed},
                "columns": [name for name in columns if name != "score"], "prompts": rows, "evaluation": None,
                "provenance": {"command": command, "device": device,
                               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
    memorized = [s for s, lab in zip(scores, labels) if lab == 1]
    novel = [s for s, lab in zip(scores, labels) if lab == 0]
    if memorized and novel:
        document["evaluation"] = {k: v for k, v in metrics.summary(memorized, novel).items() if k != "roc"}
        for name in document["columns"]:  # each part of the score on its own
            document["evaluation"]["auc_" + name] = metrics.auc(
                [r[name] for r in rows if r["label"] == "memorized"], [r[name] for r in rows if r["label"] == "novel"])
    if out is not None:
        from memaudit.reports import write_detect_page
        from memaudit.storage import write_json_atomic

        Path(out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out) / "detect.json", document)
        write_detect_page(Path(out))
    return document


# --- the Python API that takes objects (exported from ``memaudit``) --------------------------------
#
# Each entry point takes paths or Python objects, keyword options named as the config's fields
# (checked: an unknown one is an error listing the valid ones), ``out=None`` to keep the run in
# memory (it runs in a temporary folder that is removed afterwards; nothing is left behind but
# the content-keyed feature caches of $MEMAUDIT_CACHE) and ``progress`` (None: as set for the
# process, True/False: bars on/off for this call).

_AUDIT_TAKEN = ("train", "out", "model", "samples", "command")


def audit(model=None, *, train, samples=None, out=None, progress: bool | None = None, **options) -> AuditResult:
    """Audit ``model`` (or given ``samples``) against ``train``: ``memaudit audit`` from Python.

    ``model``: a MODEL spec or path as the CLI takes it, a diffusers pipeline object, an object
    with ``sample(seeds, batch_size, conditioning=None)``, or a callable ``sample(seeds) -> uint8
    (N, H, W, C)`` (sample i a function of ``seeds[i]`` alone). Objects without ``fingerprint()``
    are sampled afresh on every call. ``train``, ``samples`` (and the ``holdout``,
    ``mia_members``, ``mia_nonmembers`` options): a spec or path, an ``ImageSet``, or a uint8 NHWC
    numpy array. ``out``: the run folder (as ``--out``), or None to keep the run in memory
    (``AuditResult.save(folder)`` writes it later). ``options``: the fields of ``AuditConfig``
    (``n``, ``seed``, ``batch_size``, ``steps``, ``spaces``, ``threshold``, ...)."""
    check_options(options, config_fields(AuditConfig, _AUDIT_TAKEN), "memaudit.audit")
    check_option_types(AuditConfig, options, "memaudit.audit")

    call = ", ".join([*([] if model is None else [_describe(model)]), f"train={_describe(train)}",
                      *([] if samples is None else [f"samples={_describe(samples)}"]),
                      *(f"{key}={_describe(value) if isinstance(value, (np.ndarray, ImageSet)) else repr(value)}"
                        for key, value in options.items())])

    def config(folder: Path) -> AuditConfig:
        return AuditConfig(train=train, out=folder, model=model, samples=samples, **options,
                           command=f"memaudit.audit({call})")  # provenance: how the run was asked for

    with _progress_as(progress):
        if out is not None:
            return run_audit(config(Path(out).expanduser()))
        with _scratch_folder() as folder:
            result = run_audit(config(folder / "run"))
            files, manifest = read_run(result.out)
        return AuditResult(None, result.audit, files=files, manifest=manifest)


def compare(runs, *, out=None, allow_mismatch: bool = False) -> RunResult:
    """Compare finished audits (``memaudit compare``): ``runs`` are run folders or ``AuditResult``s
    (those kept in memory included), two or more, in the order to plot. ``out``: the folder for
    compare.json and compare.html, or None to keep them in memory."""
    runs = list(runs)
    if len(runs) < 2:
        raise InputError(f"runs: compare needs at least two audits, got {len(runs)}")
    in_memory = out is None or any(isinstance(run, AuditResult) and run.out is None for run in runs)
    with (_scratch_folder() if in_memory else contextlib.nullcontext(None)) as scratch:
        folders = []
        for number, run in enumerate(runs, 1):
            if isinstance(run, AuditResult):
                folders.append(Path(run.out) if run.out is not None else run.save(scratch / f"run-{number}"))
            elif isinstance(run, (str, Path)):
                folders.append(Path(run).expanduser())
            else:
                raise InputError(f"runs[{number - 1}]: expected a run folder or an AuditResult, got {type(run).__name__}")
        target = Path(out).expanduser() if out is not None else scratch / "compare"
        compare_runs(folders, target, allow_mismatch=allow_mismatch)
        return _run_result("compare", target, keep=out is not None)


def mia(model, *, members=None, nonmembers=None, query=None, out=None, progress: bool | None = None,
        **options) -> RunResult:
    """Membership inference (``memaudit mia``) on ``model``: a MODEL spec or path, or a diffusers
    pipeline object. ``members``, ``nonmembers``, ``query``: specs or paths, ``ImageSet``s (with
    ``labels`` for class-conditional models) or uint8 NHWC arrays. ``options``: the fields of
    ``memaudit.mia.audit.MiaConfig`` (``attacks``, ``settings``, ``batch_size``, ``limit``, ``device``, ...)."""
    from memaudit.mia.audit import MiaConfig

    taken = ("model", "out", "members", "nonmembers", "query", "command")
    check_options(options, config_fields(MiaConfig, taken), "memaudit.mia")
    check_option_types(MiaConfig, options, "memaudit.mia")
    with _progress_as(progress), _run_folder(out, "mia") as target:
        run_mia(MiaConfig(model=model, out=target, members=members, nonmembers=nonmembers, query=query, **options))
        return _run_result("mia", target, keep=out is not None, skip=("scores",))


_EXTRACT_OPTIONS = {"threshold": 0.15, "min_clique": 10, "seed": 0, "batch_size": 256, "steps": None, "device": "auto",
                    "labels": None, "prompts": None, "trust_checkpoint": False}


def extract(model, *, n: int, train=None, out=None, progress: bool | None = None, **options) -> RunResult:
    """Generate-and-filter extraction (``memaudit extract``; Carlini et al. 2023 section 4) from
    ``model`` (a MODEL spec or path, a diffusers pipeline object or a callable, as for ``audit``),
    verified against ``train`` (a spec, path, ``ImageSet`` or array) when given. ``options``:
    threshold, min_clique, seed, batch_size, steps, device, labels, prompts, trust_checkpoint."""
    check_options(options, _EXTRACT_OPTIONS, "memaudit.extract")
    check_option_values(_EXTRACT_OPTIONS, options, "memaudit.extract")
    with _progress_as(progress), _run_folder(out, "extract") as target:
        run_extract(model, target, n, train=train, **options)
        return _run_result("extract", target, keep=out is not None)


def emm(train, *, out=None, progress: bool | None = None, **options) -> RunResult:
    """Effective Model Memorization (``memaudit emm``; Gu et al. 2023): retrain on nested subsets
    of ``train`` (a spec or path) and search the largest size that memorizes. ``out``: the run
    folder (resumable), or None to keep emm.json and emm.html in memory (the trained points are
    removed). ``options``: the fields of ``memaudit.emm.recipe.EMMConfig`` (``budget``: quick, default
    or paper, the training budget T the answer is stated under; ``precond``, ``arch``, ``epochs``,
    ``grid``, ``n``, ...: those of T left out take the budget's values)."""
    from memaudit.emm.files import EMM_HTML, EMM_JSON
    from memaudit.emm.recipe import EMMConfig

    check_options(options, config_fields(EMMConfig, ("train", "out", "command")), "memaudit.emm")
    check_option_types(EMMConfig, options, "memaudit.emm")
    if not isinstance(train, (str, Path)):
        raise InputError(f"train: emm retrains on subsets of a training set named by a spec or path (digits, a folder, "
                         f"an .npz with labels), got {type(train).__name__}; save an array with np.savez(path, images=..., labels=...)")
    if "grid" in options:
        options["grid"] = tuple(options["grid"])
    with _progress_as(progress), _run_folder(out, "emm") as target:
        run_emm(EMMConfig(train=str(train), out=target, **options))
        if out is not None:
            return _run_result("emm", target, keep=True)
        files = {name: (target / name).read_bytes() for name in (EMM_JSON, EMM_HTML)}  # not the trained points
        return RunResult("emm", json.loads(files[EMM_JSON]), files=files)


@contextlib.contextmanager
def _progress_as(enabled: bool | None):
    """Progress bars on or off for one call (None: as they are), restored afterwards."""
    if enabled is None:
        yield
        return
    before = getattr(progress, "_enabled", True)
    progress.set_enabled(bool(enabled))
    try:
        yield
    finally:
        progress.set_enabled(before)


@contextlib.contextmanager
def _scratch_folder():
    """A temporary folder for runs kept in memory, removed afterwards whatever happens. Under
    torchrun the ranks share a run folder, which a private temporary folder is not."""
    import shutil
    import tempfile

    if distributed.current().distributed:
        raise InputError("out=None: under torchrun the ranks share the run folder; give out=FOLDER on a shared filesystem")
    folder = Path(tempfile.mkdtemp(prefix="memaudit-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _run_folder(out, kind: str):
    """The folder a run writes: ``out``, or for a run kept in memory one in a temporary folder."""
    if out is not None:
        yield Path(out).expanduser()
        return
    with _scratch_folder() as scratch:
        yield scratch / kind


def _run_result(kind: str, folder: Path, keep: bool, skip: tuple[str, ...] = ()) -> RunResult:
    document = json.loads((folder / f"{kind}.json").read_text(encoding="utf-8"))
    if keep:
        return RunResult(kind, document, out=folder)
    files, _ = read_run(folder)
    files = {name: data for name, data in files.items() if name.split("/")[0] not in skip}
    return RunResult(kind, document, files=files)
