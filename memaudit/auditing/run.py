"""The audit (``memaudit audit``): load the training set, sample the model (or load given
samples), measure every feature space, decide, and write the run folder; a folder of training
snapshots is audited snapshot by snapshot (``sweep``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from memaudit import distributed, outputs, rundir, verdict
from memaudit.auditing.base import audit_base, check_base
from memaudit.auditing.config import AuditConfig
from memaudit.auditing.findings import collect_findings, duplicate_warnings, per_sample_table
from memaudit.auditing.provenance import manifest_inputs, provenance
from memaudit.auditing.samples import generated_samples, given_samples
from memaudit.auditing.sweep import run_sweep
from memaudit.data import ImageSet
from memaudit.devices import resolve_device
from memaudit.errors import DataError
from memaudit.features import get_space
from memaudit.inputs import as_image_set, check_same_shape, describe_input
from memaudit.measure import SearchOptions, measure_space
from memaudit.membership import MiaConfig, run_mia
from memaudit.outputs import CACHE_DIR
from memaudit.result import AuditResult
from memaudit.storage import image_digests

SCHEMA_VERSION = 1


def run_audit(config: AuditConfig) -> AuditResult:
    """Sample (or load) images, find their nearest training images, apply the criterion, write the run.

    Under torchrun every rank calls it: the ranks share the sampling, feature extraction and search
    (``memaudit.distributed``), every rank returns the same result, and rank 0 writes the run."""
    config.validate()
    world = distributed.current()
    world.check_shared_folder(config.out, "--out")
    # The folder is ours alone for the run (a second writer is refused), marked running first and
    # complete last: a run that dies part-way leaves a folder that says so.
    with rundir.claim(config.out, manifest_inputs(config), config.command) as run:
        result = _run_audit(config)
        run.complete(list(OUTPUT_FILES))
        world.barrier()
    return result


def _search_options(config: AuditConfig) -> SearchOptions:
    return SearchOptions(config.index, config.exact_limit, config.nlist, config.m, config.nbits, config.nprobe,
                         config.ef, config.target_recall)


OUTPUT_FILES = (outputs.AUDIT_JSON, outputs.NEIGHBORS_CSV, outputs.SAMPLES_NPZ, outputs.REPORT_HTML)


def _run_audit(config: AuditConfig) -> AuditResult:
    """The audit itself (or a snapshot sweep), in a folder ``run_audit`` has claimed."""
    from memaudit.reports import write_report

    world = distributed.current()
    if isinstance(config.model, (str, Path)):
        from memaudit.adapters.snapshots import is_snapshot_folder, list_snapshots

        folder = Path(config.model).expanduser()
        if is_snapshot_folder(folder):
            if config.base is not None:
                raise DataError(f"--base: {folder} is a folder of snapshots; compare one fine-tuned model with its base")
            config.out.mkdir(parents=True, exist_ok=True)
            return run_sweep(config, list_snapshots(folder), run_audit)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    # 1. The training set (decoded once into the store by rank 0, then memory-mapped by every rank).
    with world.main_first():
        train = as_image_set(config.train, "--train", options=config.load_options(), role="train")
    if len(train) < 2:
        raise DataError(f"--train {describe_input(config.train)}: holds {len(train)} image; the nn-ratio criterion needs at least 2 "
                        "training images (the nearest and the second nearest)")
    # Feature spaces and the holdout are checked before any sampling: a missing weights file
    # should not surface after an hour of generation.
    spaces = [get_space(spec, resolve_device(config.device)) for spec in config.space_list()]
    holdout = _load_holdout(config, train)
    if config.base is not None:
        check_base(config)
    timings["load_train_s"] = time.perf_counter() - started

    # 2. The samples: generated from the model in resumable shards, or given; written to
    #    samples.npz and memory-mapped from it (each rank reads the rows it works on).
    config.out.mkdir(parents=True, exist_ok=True)
    tick = time.perf_counter()
    samples = given_samples(config, train) if config.samples is not None else generated_samples(config, train)
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
    space_summaries["pixel"]["per_sample"] = per_sample_table(seeds, pixel.l2, pixel.indices, verdicts, pixel.verdicts,
                                                              train.ids, samples.conditions)
    audit = {
        "schema_version": SCHEMA_VERSION,
        "memorization_ratio": criterion["fraction"],
        "n_samples": int(len(images)),
        "train": {"spec": describe_input(config.train), "n": len(train), "fingerprint": train.fingerprint,
                  "image_shape": list(train.image_shape), "skipped": train.skipped or []},
        "preprocessing": {"resize": config.resize, "image_size": config.load_options().size, "on_error": config.on_error},
        "holdout": None if holdout is None else {"spec": describe_input(config.holdout), "n": len(holdout), "fingerprint": holdout.fingerprint},
        "model": samples.model_info,
        "seeds": None if config.samples is not None else {"first": config.seed, "count": config.n},
        "spaces": space_summaries,
        "findings": collect_findings(images, seeds, samples.conditions, train, results, config.top,
                                     (samples.model_info.get("safety_checker") or {}).get("flagged_seeds"),
                                     order, copies, space_summaries),
        "headline": headline,
        "gate": gate,
        "warnings": [*samples.model_info.get("warnings", []), *duplicate_warnings(duplicate_groups, train, pixel)],
        "report": {"redact": config.redact},
        "provenance": provenance(config, samples.device, timings),
    }
    if config.base is not None:  # the base sampled alike and audited beside: context, never the verdict
        comparison = audit_base(config, audit, images, train, samples.conditions, run_audit)
        if world.is_main:
            audit["base_comparison"] = comparison
    if config.mia_members is not None and world.is_main:  # optional: membership inference on the same model
        audit["mia"] = _mia_section(config)
    if world.is_main:
        outputs.write_audit(config.out, audit)
        write_report(config.out, redact=config.redact)
    world.barrier()  # the run is complete on disk before any rank returns
    if world.is_main:
        shutil.rmtree(scratch, ignore_errors=True)  # the samples' features of a distributed run: this run's only
    return AuditResult(config.out, audit)


SAMPLE_FEATURES = "sample-features"  # under the run's cache: samples' features the ranks share during a run


def _sample_digests(images) -> np.ndarray:
    """Each sample's digest (``verdict.image_digest_array``), each rank hashing its row range."""
    world = distributed.current()
    start, stop = world.row_range(len(images))
    return world.concat_rows(verdict.image_digest_array(images[start:stop]))


def _load_holdout(config: AuditConfig, train: ImageSet) -> ImageSet | None:
    if config.holdout is None:
        return None
    with distributed.current().main_first():
        holdout = as_image_set(config.holdout, "--holdout", options=config.load_options(), role="holdout")
    check_same_shape(holdout, train, f"--holdout {describe_input(config.holdout)}")
    seen = set(image_digests(train.images))
    overlap = sum(digest in seen for digest in image_digests(holdout.images))
    if overlap:
        raise DataError(f"--holdout {describe_input(config.holdout)}: {overlap} of its {len(holdout)} images are training images; "
                        "a holdout must hold images the model never saw, or its false-positive rates are inflated")
    return holdout


def _mia_section(config: AuditConfig) -> dict:
    """The audit's MIA section: ``memaudit mia`` run into ``OUT/mia/``, summarised (AUC, TPR at low FPR)."""
    document = run_mia(MiaConfig(model=config.model, out=Path(config.out) / "mia", members=config.mia_members,
                                 nonmembers=config.mia_nonmembers, device=config.device,
                                 trust_checkpoint=config.trust_checkpoint, code_path=config.code_path,
                                 factory=config.factory, command=config.command))
    return {"run_dir": "mia", "members": describe_input(config.mia_members), "nonmembers": describe_input(config.mia_nonmembers),
            "best_attack": document["best_attack"], "verdict": document.get("verdict"),
            "attacks": {name: {key: a.get(key) for key in ("paper", "settings", "auc", "auc_ci95", "tpr_at_fpr")}
                        for name, a in document["attacks"].items()}}
