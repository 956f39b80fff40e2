"""An EMM run: one search per sweep value, written to emm.json and emm.html.

``--sweep key=v1,v2,...`` runs the search once per value of one recipe setting (keys register in
``SWEEP_KEYS``); without it there is one search. Points are stored by content under
``OUT/points/``, so searches that share a recipe share points, and a rerun skips every finished
point: the whole run resumes where it stopped.

Under torchrun the ranks share the trainings: each round of the search probes as many sizes as the
ranks can train at once (``--seeds`` points per size), the round's unfinished points go to the
ranks largest first, each rank trains and audits its points on its own GPU, and every rank then
reads all points back from ``OUT/points/``, so all ranks take the same next step. With
``--parallel ddp`` the ranks instead train each point together, with data parallelism.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memaudit import __version__, distributed, progress, rundir, units
from memaudit.auditing import run_audit
from memaudit.data import load_image_set
from memaudit.outputs import EMM_HTML, EMM_JSON
from memaudit.retraining.budget import judge
from memaudit.retraining.search import SearchResult, search_emm
from memaudit.retraining.workers import PointPool, default_workers
from memaudit.errors import InputError
from memaudit.retraining.recipe import EMMConfig, Recipe, make_recipe, measure_point, point_dir, read_point, settles
from memaudit.storage import write_json_atomic

SCHEMA_VERSION = 2  # 2: the answer under T (emm.budget, still_rising, advice); no "not-converged" status


def _int(text: str) -> int:
    return int(text)


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


# sweep key -> (EMMConfig field, parser of one value)
SWEEP_KEYS: dict[str, tuple[str, Callable[[str], object]]] = {
    "arch": ("arch", str),
    "width": ("width", _int),
    "depth": ("depth", _int),
    "attention": ("attention", lambda v: v.replace("+", ",")),  # 16+8 inside a sweep list
    "labels": ("labels", str),
    "resolution": ("resolution", _optional_int),
    "weight-decay": ("weight_decay", float),
    "epochs": ("epochs", float),
    "batch-size": ("batch_size", _int),
    "lr": ("learning_rate", float),
    "ema": ("ema_decay", float),
    "subset": ("subset", str),
    "precond": ("precond", str),
    "time-embedding": ("time_embedding", str),
    "skips": ("skips", lambda v: v.replace("+", ",")),  # 1+0+1+... inside a sweep list
    "classes": ("classes", _optional_int),
    "mix": ("mix", str),
}


@dataclass(frozen=True)
class Sweep:
    key: str
    values: tuple[str, ...]

    def configs(self, base: EMMConfig) -> list[EMMConfig]:
        field_name, parse = SWEEP_KEYS[self.key]
        return [dataclasses.replace(base, **{field_name: parse(v)}, sweep=None) for v in self.values]


def parse_sweep(text: str) -> Sweep:
    key, sep, values = text.partition("=")
    if key not in SWEEP_KEYS:
        raise InputError(f"--sweep {text}: unknown key {key!r}; valid keys are {', '.join(SWEEP_KEYS)}")
    items = tuple(v.strip() for v in values.split(",") if v.strip()) if sep else ()
    if not items:
        raise InputError(f"--sweep {text}: expected KEY=V1,V2,... with at least one value")
    if len(set(items)) != len(items):
        raise InputError(f"--sweep {text}: a value is repeated")
    _, parse = SWEEP_KEYS[key]
    for item in items:
        try:
            parse(item)
        except ValueError:
            raise InputError(f"--sweep {text}: {item!r} is not a valid value for {key}") from None
    return Sweep(key, items)


@dataclass
class EMMResult:
    """A finished EMM run: its folder and the content of its emm.json."""

    out: Path
    emm: dict

    @property
    def page(self) -> Path:
        return self.out / EMM_HTML


def run_emm(config: EMMConfig, audit: Callable | None = None) -> EMMResult:
    """Search EMM for each sweep value (or once); write emm.json and emm.html to ``config.out``.
    ``audit`` audits each trained point: ``memaudit.auditing.run_audit`` unless given."""
    audit = audit or run_audit
    config.validate()
    with torch_threads(config.threads):
        return _run_emm(config, audit)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Torch's CPU threads set to ``threads`` (None: left alone) for the block, restored after.
    The tiny U-Nets gain nothing from intra-op threads, and on a busy CPU a second thread waits at
    every op's barrier: measured on this project's shared 2-core machine at load 9, a training step
    took 0.33 s on one thread and 6.7 s on two (docs/replication.md)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@rundir.claimed((EMM_JSON, EMM_HTML), "emm")  # one writer, refused at once; failed with its reason on error
def _run_emm(config: EMMConfig, audit: Callable) -> EMMResult:
    from memaudit.reports import write_emm_page

    world = distributed.current()
    sweep = parse_sweep(config.sweep) if config.sweep else None
    with world.main_first():
        full = load_image_set(config.train)
    configs = sweep.configs(config) if sweep else [config]
    recipes = [make_recipe(c, full, audit) for c in configs]  # every value checked before any training
    bounds = [_size_range(r) for r in recipes]
    for line in dict.fromkeys(filter(None, (r.warmup_warning(low) for r, (_, low, _) in zip(recipes, bounds)))):
        progress.warning(line)  # a setting that makes no sense: said before any training
    config.out.mkdir(parents=True, exist_ok=True)
    world.check_shared_folder(config.out, "--out")
    # points in parallel: under torchrun one size per free group of --seeds ranks and round, trained
    # there first; on one machine as many points at once as --workers, one process each
    parallel_points = world.distributed and config.parallel == "points"
    workers = 1 if world.distributed else (config.workers or default_workers())
    pool = PointPool(workers, config.threads, config.out) if workers > 1 else None
    width = max(1, (world.size if parallel_points else workers) // config.seeds)

    searches = []
    for index, (recipe, (start, low, high)) in enumerate(zip(recipes, bounds)):
        label = None if sweep is None else f"{sweep.key}={sweep.values[index]}"
        if parallel_points:
            prefetch = lambda sizes, r=recipe: train_points(r, sizes)  # noqa: E731
        elif pool is not None:
            prefetch = lambda sizes, r=recipe: pool.run(measure_point, unfinished_points(r, sizes))  # noqa: E731
        else:
            prefetch = None
        result = search_emm(lambda size, r=recipe: [measure_point(r, size, seed, r.config.stop_at)
                                                    for seed in range(r.config.seeds)],
                            threshold=1.0 - config.epsilon, start=start, min_size=low, max_size=high,
                            unit=recipe.unit, tolerance=recipe.config.tolerance or recipe.unit,
                            relative_tolerance=recipe.config.relative_tolerance, grid=recipe.config.grid,
                            width=width, ahead=1 if pool is not None else None, prefetch=prefetch)
        searches.append(_search_json(label, None if sweep is None else sweep.values[index], recipe, result,
                                     (start, low, high)))
        _write(config, sweep, searches, workers)  # emm.json grows search by search
    emm = _write(config, sweep, searches, workers)
    if world.is_main:
        write_emm_page(config.out)
    world.barrier()
    return EMMResult(config.out, emm)


def unfinished_points(recipe: Recipe, sizes: list[int]) -> list[tuple]:
    """measure_point's arguments for every seed's point at ``sizes`` not finished yet, largest first
    (the longest training starts first)."""
    stop_at = recipe.config.stop_at
    jobs = [(recipe, size, seed, stop_at) for size in sorted(sizes, reverse=True)
            for seed in range(recipe.config.seeds)]
    return [job for job in jobs if not _finished(*job)]


def train_points(recipe: Recipe, sizes: list[int]) -> None:
    """Train and audit every seed's point at ``sizes``, shared out among the ranks (the largest
    first), each rank on its own; returns when all ranks are done (a collective)."""
    jobs = [(size, seed) for size in sizes for seed in range(recipe.config.seeds)]
    stop_at = recipe.config.stop_at
    work = units.plan(len(jobs), lambda j: _finished(recipe, *jobs[j], stop_at), costs=[size for size, _ in jobs])
    with distributed.local():
        for job in work.mine:
            measure_point(recipe, *jobs[job], stop_at)
    units.finish()


def _finished(recipe: Recipe, size: int, seed: int, stop_at: float | None) -> bool:
    point = read_point(point_dir(recipe, size, seed))
    return point is not None and settles(point.info, stop_at)


def _size_range(recipe: Recipe) -> tuple[int, int, int]:
    """(start, smallest, largest) size of the search, on the recipe's grid; InputError when out of range."""
    c, unit, available = recipe.config, recipe.unit, len(recipe.full)
    low = max(unit, 2)
    low = -(-low // unit) * unit
    high = c.max_size if c.max_size is not None else available - available % unit
    if high > available:
        raise InputError(f"--max-size {high}: larger than the training set {c.train} ({available} images)")
    # From the small end: the cheapest points first, and the doubling stops at the first failure,
    # so the largest (costliest) size trained is below twice the EMM.
    start = c.start if c.start is not None else min(high, max(low, 2 * unit))
    for name, value in (("--start", start), ("--max-size", high)):
        if value % unit:
            raise InputError(f"{name} {value}: must be a multiple of the {unit} classes for --subset balanced")
        if value < low:
            raise InputError(f"{name} {value}: must be at least {low} (two training images, one per class)")
    for size in c.grid:
        if size % unit or not low <= size <= high:
            raise InputError(f"--grid {size}: sizes must be multiples of {unit} from {low} to {high}")
    if start > high:
        raise InputError(f"--start {start}: larger than the largest size {high} ({c.train} holds {available} images)")
    return start, low, high


def _search_json(label, value, recipe: Recipe, result: SearchResult, bounds) -> dict:
    start, low, high = bounds
    points = []
    for size_result in result.by_size():
        for point in size_result.points:
            info = point.info
            points.append({"size": point.size, "seed": point.seed, "memorization_ratio": point.ratio,
                           "ci95": info.get("ci95"), "memorized": point.memorized, "n": point.n,
                           "model": info.get("model"), "audit": info.get("audit"), "train_set": info.get("train_set"),
                           "step": info.get("step"), "tied_at": info.get("tied_at"), "train_steps": info.get("train_steps"),
                           "num_classes": info.get("num_classes"), "converged": info.get("converged"),
                           "extensions": info.get("extensions", 0), "stopped_at_pass": info.get("stopped_at_pass"), "cost": info.get("cost"),
                           "snapshots": info.get("snapshots", [])})
    return {
        "label": label, "value": value, "settings": recipe.settings(),
        "grid": {"unit": recipe.unit, "start": start, "min_size": low, "max_size": high,
                 "tolerance": recipe.config.tolerance or recipe.unit,
                 "relative_tolerance": recipe.config.relative_tolerance, "seeds": recipe.config.seeds,
                 "stop_at": recipe.config.stop_at},
        # the answer under the training budget T (memaudit.retraining.budget): bracket, T, still rising, advice
        "emm": judge(result, recipe.config, recipe.settings(), points),
        "sizes": [r.as_json() for r in result.by_size()],
        "order": [r.size for r in result.measured],
        "trainings": sum(len(r.points) for r in result.measured),
        "monotone": result.monotone, "violations": result.violations,
        "points": points,
    }


def _write(config: EMMConfig, sweep: Sweep | None, searches: list[dict], workers: int) -> dict:
    emm = {
        "schema_version": SCHEMA_VERSION,
        "epsilon": config.epsilon,
        "threshold": 1.0 - config.epsilon,
        "criterion": {"space": "pixel", "name": "nn-ratio", "threshold": 1.0 / 3.0},
        "sweep": None if sweep is None else {"key": sweep.key, "values": list(sweep.values)},
        "searches": searches,
        "provenance": {"memaudit_version": __version__, "command": config.command,
                       "workers": workers, "ranks": distributed.current().size,
                       "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    }
    if sweep is None and searches:  # one search: its bracket and points at the top level too
        emm["emm"], emm["points"] = searches[0]["emm"], searches[0]["points"]
    if distributed.current().is_main:
        write_json_atomic(Path(config.out) / EMM_JSON, emm)
    return emm

