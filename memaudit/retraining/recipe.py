"""Retraining for EMM: the recipe and one measured point (the subsets and labels: ``subsets``).

A point is one model trained from scratch on the first |D| images of a nested subset with one
seed, then audited with the ordinary audit machinery (``memaudit.auditing.run_audit``: pixel nn-ratio, the
paper's criterion) at each saved snapshot; the highest ratio counts (Gu et al. 2023 evaluate
every snapshot and report the highest). Each point lives in its own folder named by the hash of
everything that determines it, so a finished point is read back, never trained again, and an
interrupted one resumes from its last training checkpoint and its finished sample shards.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from memaudit import distributed
from memaudit.denoisers.architectures import check_fits, check_precond_fits, check_preset_precond, resolve_architecture
from memaudit.adapters.edm import EDM_STEPS
from memaudit.data import ImageSet
from memaudit.devices import resolve_device
from memaudit.retraining.budget import check_budget, resolve_budget
from memaudit.retraining.search import Point
from memaudit.errors import InputError
from memaudit.storage import fingerprint_json, write_npz_atomic, write_text_atomic
from memaudit.retraining.subsets import (SUBSETS, Labeling, conform, first_classes, mix_counts, parse_labels, parse_mix,
                                         resize_set, size_unit)
from memaudit.retraining.training import TrainConfig, train_model

POINT_JSON = "point.json"
SUBSET_NPZ = "train.npz"
PARALLEL_MODES = ("points", "ddp")  # how torchrun's ranks share an EMM run
PRECONDS = ("edm", "vp", "ve", "ddpm")  # memaudit.retraining.training.OBJECTIVES


@dataclass
class EMMConfig:
    """Everything ``memaudit.retraining.run_emm`` needs: the training recipe, the search, the measurement."""

    train: str
    out: Path
    # recipe; the fields left at None take the --budget preset's values (memaudit.retraining.budget)
    budget: str = "default"  # quick, default or paper: the training budget T the answer is stated under
    precond: str | None = None  # edm, vp, ve (EDM's Table 1, Heun-sampled) or ddpm (diffusers UNet, DDIM-sampled)
    arch: str | None = None
    width: int | None = None
    depth: int | None = None
    attention: str | None = None
    time_embedding: str | None = None  # positional or fourier (None: the preset's)
    skips: str | None = None  # the paper's skip-connection mask, e.g. 1,0,1,1,1,1 (None: the preset's, all)
    classes: int | None = None  # inter-diversity: train on the first C classes only (None: all)
    mix: str | None = None  # intra-diversity: DATA:ALPHA, a share ALPHA of each subset from another set
    resolution: int | None = None  # resize the images to R x R before training (None: as they are)
    epochs: float | None = None  # training images seen = epochs x |D| (the paper fixes epochs, not steps)
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_steps: int | None = None
    ema_decay: float | None = None
    weight_decay: float = 0.0
    labels: str = "none"  # none, true, random:C or unique
    subset: str = "balanced"  # balanced (first |D|/C of each class) or random (a fixed nested permutation)
    # search
    epsilon: float = 0.1
    tolerance: int | None = None  # images; None: down to neighbouring sizes on the grid
    relative_tolerance: float = 1.25  # stop bisecting once upper <= this x lower (1: off); see docs/replication.md
    stop_passed: bool = True  # one seed: a point stops training at its first passing snapshot (measure_point)
    seeds: int = 1
    start: int | None = None
    max_size: int | None = None
    grid: tuple[int, ...] = ()  # sizes measured in any case, besides those the search visits
    # measurement
    n: int | None = None  # default budget: 250, one sampling batch; Wilson 95% half-width <= 0.04 near 0.9
    sample_steps: int | None = None  # None: EDM's 18 Heun steps (edm/vp/ve) or 50 DDIM steps (ddpm)
    sample_batch_size: int = 250
    snapshots: int | None = None  # EMA models saved evenly through training; the highest ratio counts
    extend: int | None = None  # double a point's training up to this many times while its ratio still rises (a larger T)
    converge_tolerance: float = 0.03  # "still rising": the second half of training raised the highest ratio by more
    checkpoint_every: int = 500
    device: str = "auto"
    threads: int | None = 1  # torch CPU threads (None: torch's default); see run_emm
    workers: int | None = None  # points trained at once in local processes (None: 2 on >= 2 cores); not under torchrun
    parallel: str = "points"  # under torchrun: points (each rank trains its own) or ddp (all ranks train each)
    sweep: str | None = None
    command: str | None = None

    def __post_init__(self) -> None:
        resolve_budget(self)

    def validate(self) -> None:
        """Raise ``InputError`` naming the first invalid setting (data-dependent checks: ``plan``)."""
        check_budget(self)
        check_precond_fits(self.architecture(), self.precond)
        check_preset_precond(self.arch, self.precond)
        parse_labels(self.labels)
        parse_mix(self.mix)
        checks = [
            (self.subset in SUBSETS, f"--subset {self.subset}: expected one of {', '.join(SUBSETS)}"),
            (self.parallel in PARALLEL_MODES, f"--parallel {self.parallel}: expected one of {', '.join(PARALLEL_MODES)}"),
            (0.0 < self.epsilon < 1.0, f"--epsilon {self.epsilon}: must be in (0, 1)"),
            (self.tolerance is None or self.tolerance >= 1, f"--tolerance {self.tolerance}: must be at least 1 image"),
            (self.relative_tolerance >= 1.0, f"--relative-tolerance {self.relative_tolerance}: must be at least 1 "
                                             "(1: bisect down to --tolerance)"),
            (self.seeds >= 1, f"--seeds {self.seeds}: must be at least 1"),
            (self.epochs > 0, f"--epochs {self.epochs}: must be positive"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be at least 1"),
            (self.learning_rate > 0, f"--lr {self.learning_rate}: must be positive"),
            (self.warmup_steps >= 0, f"--warmup {self.warmup_steps}: must be at least 0"),
            (0.0 <= self.ema_decay < 1.0, f"--ema {self.ema_decay}: must be in [0, 1)"),
            (self.weight_decay >= 0, f"--weight-decay {self.weight_decay}: must be at least 0"),
            (self.n >= 1, f"--n {self.n}: must be at least 1"),
            (self.precond in PRECONDS, f"--precond {self.precond}: expected one of {', '.join(PRECONDS)}"),
            (self.sample_steps is None or self.sample_steps >= (1 if self.precond == "ddpm" else 2),
             f"--sample-steps {self.sample_steps}: must be at least {1 if self.precond == 'ddpm' else 2}"),
            (self.classes is None or self.classes >= 1, f"--classes {self.classes}: must be at least 1"),
            (self.mix is None or self.labels == "none", f"--mix {self.mix}: mixed-in images have no labels; "
                                                         "use it with --labels none (as the paper's intra-diversity runs)"),
            (self.sample_batch_size >= 1, f"--sample-batch-size {self.sample_batch_size}: must be at least 1"),
            (self.snapshots >= 1, f"--snapshots {self.snapshots}: must be at least 1"),
            (self.extend >= 0, f"--extend {self.extend}: must be at least 0"),
            (0 <= self.converge_tolerance < 1, f"--converge-tolerance {self.converge_tolerance}: must be in [0, 1)"),
            (self.checkpoint_every >= 1, f"--checkpoint-every {self.checkpoint_every}: must be at least 1 step"),
            (self.resolution is None or self.resolution >= 1, f"--resolution {self.resolution}: must be at least 1"),
            (self.threads is None or self.threads >= 1, f"--threads {self.threads}: must be at least 1"),
            (self.workers is None or self.workers >= 1, f"--workers {self.workers}: must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise InputError(f"--out {self.out}: exists and is not a folder")

    def architecture(self):
        return resolve_architecture(self.arch, self.width, self.depth, self.attention, self.time_embedding, self.skips)

    @property
    def stop_at(self) -> float | None:
        """The ratio at which a point stops training (``measure_point``): the threshold with one seed
        and --stop-passed, else None (the full budget: with several seeds a size is decided on the
        mean, which a passing seed's further snapshots can still raise)."""
        return 1.0 - self.epsilon if self.stop_passed and self.seeds == 1 else None

    @property
    def steps_to_sample(self) -> int:
        """Sampler steps: as given, else EDM's 18 Heun steps or 50 DDIM steps."""
        if self.sample_steps is not None:
            return self.sample_steps
        return 50 if self.precond == "ddpm" else EDM_STEPS


@dataclass(frozen=True)
class Recipe:
    """The resolved recipe of one search (one sweep value): what each point trains and measures."""

    config: EMMConfig
    full: ImageSet
    labeling: Labeling
    unit: int
    audit: Callable  # memaudit.auditing.run_audit, passed in by run_emm
    other: ImageSet | None = None  # --mix: the other set, conformed to the training images

    def train_config(self, size: int, seed: int, extension: int = 0) -> TrainConfig:
        """The training of one point; ``extension`` k trains 2^k times as long, snapshots at the same
        spacing (the first run's steps / --snapshots), so each extension continues the one before."""
        c = self.config
        base = max(1, math.ceil(c.epochs * size / c.batch_size))
        steps = base * 2**extension
        snapshot_steps = tuple(sorted({round(base * i / c.snapshots) for i in range(1, c.snapshots * 2**extension)}
                                      - {0, steps}))
        return TrainConfig(steps=steps, batch_size=c.batch_size, learning_rate=c.learning_rate,
                           warmup_steps=c.warmup_steps, ema_decay=c.ema_decay, seed=seed,
                           arch=c.architecture(), weight_decay=c.weight_decay, ema_warmup=True,
                           checkpoint_every=c.checkpoint_every, snapshot_steps=snapshot_steps, precond=c.precond)

    def warmup_warning(self, smallest: int) -> str | None:
        """A line when the smallest size of the search trains fewer steps than the learning-rate
        warm-up (its learning rate never reaches --lr), else None."""
        c = self.config
        steps = self.train_config(smallest, 0).steps
        if steps >= c.warmup_steps:
            return None
        enough = math.floor((c.warmup_steps - 1) * c.batch_size / c.epochs) + 1  # fewest images with >= warm-up steps
        return (f"--epochs {c.epochs:g} with --batch-size {c.batch_size} trains |D| = {smallest} for {steps} step"
                f"{'s' if steps != 1 else ''}, fewer than --warmup {c.warmup_steps}: below about {enough} images the "
                "learning rate never reaches --lr; raise --epochs or lower --warmup")

    def settings(self) -> dict:
        """The recipe as emm.json records it."""
        c = self.config
        arch = c.architecture()
        sampling = ({"schedule": "ddpm-linear-vp", "prediction": "epsilon", "sampler": "ddim"} if c.precond == "ddpm" else
                    {"schedule": f"edm-table1-{c.precond}", "prediction": "denoiser", "sampler": "edm-heun"})
        return {"train": c.train, "train_fingerprint": self.full.fingerprint, "image_shape": list(self.full.image_shape),
                "precond": c.precond, "arch": c.arch, "architecture": asdict(arch), "time_embedding": arch.time_embedding,
                "skips": None if arch.skips is None else list(arch.skips), "classes": c.classes,
                "mix": None if self.other is None else {"data": parse_mix(c.mix)[0], "alpha": parse_mix(c.mix)[1],
                                                         "fingerprint": self.other.fingerprint},
                "resolution": c.resolution, "epochs": c.epochs,
                "batch_size": c.batch_size, "learning_rate": c.learning_rate, "warmup_steps": c.warmup_steps,
                "ema_decay": c.ema_decay, "ema_warmup": True, "weight_decay": c.weight_decay, "labels": c.labels, "subset": c.subset,
                **sampling, "n_samples": c.n, "sample_steps": c.steps_to_sample, "snapshots": c.snapshots,
                "extend": c.extend, "converge_tolerance": c.converge_tolerance}


def make_recipe(config: EMMConfig, full: ImageSet, audit: Callable) -> Recipe:
    """Check the recipe against the data and resolve it; ``audit`` is ``memaudit.auditing.run_audit``."""
    config.validate()
    full = first_classes(resize_set(full, config.resolution), config.classes)
    arch = config.architecture()
    check_fits(arch, *full.image_shape[:2])
    if config.precond != "ddpm" and full.image_shape[0] != full.image_shape[1]:
        raise InputError(f"--precond {config.precond}: the DDPM++/NCSN++ U-Net needs square images, {config.train} is "
                         f"{full.image_shape[0]}x{full.image_shape[1]}; use --resolution")
    other = None
    if config.mix is not None:
        from memaudit.data import load_image_set

        other = conform(load_image_set(parse_mix(config.mix)[0]), full)
    labeling = parse_labels(config.labels)
    labeling.assign(full, np.arange(min(1, len(full))))  # --labels true without labels: refused now, not at the first point
    return Recipe(config, full, labeling, size_unit(full, config.subset), audit, other)


# --- one point --------------------------------------------------------------------------------


def point_dir(recipe: Recipe, size: int, seed: int) -> Path:
    settings = {k: v for k, v in recipe.settings().items() if k != "train"}
    key = fingerprint_json({"recipe": settings, "size": size, "seed": seed, "threshold": 1.0 / 3.0})
    return recipe.config.out / "points" / f"n{size:05d}-seed{seed}-{key.partition(':')[2][:10]}"


def measure_point(recipe: Recipe, size: int, seed: int, stop_at: float | None = None) -> Point:
    """Train (or resume, or read back) the model of one (size, seed) and measure its memorization.

    ``stop_at`` (a ratio, the search's threshold; None: the full budget): train snapshot by snapshot
    and stop at the first audited snapshot whose ratio reaches it, without extending. Its verdict
    cannot change (more snapshots only raise the highest ratio), so the search spends no more on it;
    the point then records ``stopped_at_pass`` and its ratio is that of the first passing snapshot,
    not the highest over the full budget. The model at each snapshot is the one the full training
    saves there (training continues exactly), and the kept checkpoint lets a later call without
    ``stop_at`` train the point on to its full budget.

    Under torchrun outside ``distributed.local()`` every rank calls it: the ranks train the model
    together (data parallel) and audit it together; rank 0 writes the point."""
    from memaudit.auditing.config import AuditConfig

    world = distributed.current()
    folder = point_dir(recipe, size, seed)
    done = read_point(folder)
    if done is not None and not settles(done.info, stop_at):
        done = None  # stopped at a pass, and this call needs more (the full budget or a higher threshold)
    if world.all_agree(done is not None):
        return done
    folder.mkdir(parents=True, exist_ok=True)
    config = recipe.config
    started = (time.process_time(), time.perf_counter())

    # 1. The training set of this point: nested subset, labels, saved for `memaudit audit`.
    own, mixed = (size, 0) if recipe.other is None else mix_counts(size, parse_mix(config.mix)[1], recipe.unit)
    if recipe.other is not None and mixed > len(recipe.other):
        raise InputError(f"--mix {config.mix}: |D| = {size} needs {mixed} images from it, it holds {len(recipe.other)}")
    indices = SUBSETS[config.subset](recipe.full, own) if own else np.zeros(0, np.int64)
    labels, num_classes = recipe.labeling.assign(recipe.full, indices)
    images = recipe.full.images[indices]
    ids = [recipe.full.ids[i] for i in indices]
    if mixed:  # intra-diversity: the first images of the other set, so subsets stay nested in alpha x |D|
        images = np.concatenate([images, recipe.other.images[:mixed]])
        ids += recipe.other.ids[:mixed]
    arrays = {"images": images, "ids": np.array(ids)}
    if labels is not None:
        arrays["labels"] = labels
    if world.is_main:
        write_npz_atomic(folder / SUBSET_NPZ, **arrays)
    world.barrier()

    # 2. Train, resumably, and audit each snapshot against this training set; the highest ratio counts.
    #    While the ratio is still rising (recipe.converged) and --extend allows, train on to twice the
    #    steps (continuing from the kept final state) and audit the new snapshots, at the same spacing.
    #    With ``stop_at``, each snapshot is trained to and audited before the next, and a pass ends the point.
    device = resolve_device(config.device)
    snapshots: list[dict] = []
    audited: set[int] = set()
    stopped = False
    for round_ in range(config.extend + 1):
        train = recipe.train_config(size, seed, round_)
        description = f"training |D| = {size}, seed {seed}" + (f" (extension {round_})" if round_ else "")
        for step, path in _trained_snapshots(images, folder, train, device, labels, num_classes, description,
                                             keep_checkpoint=round_ < config.extend or stop_at is not None,
                                             one_at_a_time=stop_at is not None, skip=audited):
            audited.add(step)
            result = recipe.audit(AuditConfig(
                train=str(folder / SUBSET_NPZ), out=folder / "audits" / f"step-{step:07d}", model=str(path), n=config.n,
                seed=0, batch_size=config.sample_batch_size, steps=config.steps_to_sample, device=device,
                labels="train" if labels is not None else None, command=config.command))
            criterion = result.audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
            snapshots.append({"step": step, "model": _relative(path, config.out), "audit": _relative(result.out, config.out),
                              "memorization_ratio": criterion["fraction"], "memorized": criterion["memorized"],
                              "n": criterion["n"], "ci95": criterion["ci95"]})
            if stop_at is not None and criterion["fraction"] >= stop_at:
                stopped = True
                break
        # a point stopped at a pass is not judged for convergence: the guard is about failures
        convergence = None if stopped else converged(snapshots, config.converge_tolerance)
        if stopped or convergence is not False:
            break
    if world.is_main and not stopped:  # a stopped point keeps its state, to be trained on if ever asked
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    # Ties go to the earliest snapshot reaching the highest ratio, all listed, as memaudit.auditing.sweep does.
    highest = max(s["memorization_ratio"] for s in snapshots)
    tied = [s["step"] for s in snapshots if s["memorization_ratio"] == highest]
    best = next(s for s in snapshots if s["memorization_ratio"] == highest)
    record = {"size": size, "seed": seed, "memorization_ratio": best["memorization_ratio"], "ci95": best["ci95"],
              "memorized": best["memorized"], "n": best["n"], "model": best["model"], "audit": best["audit"],
              "step": best["step"], "tied_at": tied, "train_steps": snapshots[-1]["step"], "num_classes": num_classes,
              "converged": convergence, "extensions": round_, "stopped_at_pass": stop_at if stopped else None,
              "train_set": _relative(folder / SUBSET_NPZ, config.out), "snapshots": snapshots,
              # this call's cost (a resumed point: since it resumed); CPU time of this process, training and audits
              "cost": {"cpu_seconds": round(time.process_time() - started[0], 1),
                       "wall_seconds": round(time.perf_counter() - started[1], 1)}}
    if world.is_main:
        write_text_atomic(folder / POINT_JSON, json.dumps(record, indent=2))
    world.barrier()
    return _as_point(record)


def _trained_snapshots(images, folder: Path, train: TrainConfig, device: str, labels, num_classes, description: str, *,
                       keep_checkpoint: bool, one_at_a_time: bool, skip: set[int]):
    """(step, model folder) of each snapshot of ``train`` not in ``skip``, trained (or resumed) as they
    are needed: all in one training, or one at a time (each training continues the one before from the
    kept checkpoint, to the same weights), so that a caller may stop after any of them."""
    checkpoint, snapshot_dir = folder / "checkpoint.pt", folder / "snapshots"
    if not one_at_a_time:
        trained = train_model(images, snapshot_dir / f"step-{train.steps:07d}", train, device, labels=labels,
                              num_classes=num_classes, checkpoint=checkpoint, snapshot_dir=snapshot_dir,
                              keep_checkpoint=keep_checkpoint, description=description)
        yield from ((step, path) for step, path in trained.snapshots if step not in skip)
        return
    for step in [*train.snapshot_steps, train.steps]:
        if step in skip:
            continue
        path = snapshot_dir / f"step-{step:07d}"
        train_model(images, path, replace(train, steps=step, snapshot_steps=()), device, labels=labels,
                    num_classes=num_classes, checkpoint=checkpoint, keep_checkpoint=True,
                    description=f"{description}, to step {step}")
        yield step, path


def settles(record: dict, stop_at: float | None) -> bool:
    """Whether a finished point's record answers a call with ``stop_at``: a point trained to its full
    budget always does; one stopped at a pass only when its ratio reaches ``stop_at`` too."""
    if record.get("stopped_at_pass") is None:
        return True
    return stop_at is not None and record["memorization_ratio"] >= stop_at


def converged(snapshots: list[dict], tolerance: float) -> bool | None:
    """False while the ratio is still rising: the second half of the training raised the point's
    highest ratio (the one that counts) by more than ``tolerance``, and it is not already within
    ``tolerance`` of 1 (nothing left to rise). Halves, not the last two snapshots: a ratio that
    pauses between two snapshots and climbs again (0.848, 0.844, 0.924 seen) is still rising.
    None when no snapshot lies in the first half (nothing to compare)."""
    last = snapshots[-1] if snapshots else None
    first_half = [s["memorization_ratio"] for s in snapshots if 2 * s["step"] <= last["step"]] if last else []
    if not first_half:
        return None
    second_half = [s["memorization_ratio"] for s in snapshots if 2 * s["step"] > last["step"]]
    highest = max(second_half)
    return highest - max(first_half) <= tolerance or highest >= 1 - tolerance


def read_point(folder: Path) -> Point | None:
    try:
        return _as_point(json.loads((folder / POINT_JSON).read_text()))
    except (OSError, ValueError, KeyError):
        return None


def _as_point(record: dict) -> Point:
    return Point(record["size"], record["seed"], record["memorization_ratio"], record["memorized"], record["n"],
                 info=record)


def _relative(path: Path, root: Path) -> str:
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
