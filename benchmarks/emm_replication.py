"""Gu et al. (2023)'s headline findings reproduced in small with `memaudit emm` on the digits, and
training throughput.

Parts (each writes its figures into one JSON file, so parts can run at different times; ``doc``
renders docs/replication.md from that file):
- ``a``: the default EMM search on the digits (unconditional): ratio by |D| and the EMM bracket under
  the default budget T, with the wall and CPU time of the whole command (it must answer in at most
  10 minutes on an idle 2-core machine);
- ``b``: data dimension: the same search at a lower resolution (the paper: lower resolution, higher
  EMM);
- ``c``: conditioning at equal |D| near the unconditional EMM: none, true, random (C = 10) and
  unique labels, ``--seeds`` training seeds each, mean ratio with its interval over the seeds;
- ``throughput``: training images/s of the paper's DDPM++ (VP, 32x32 RGB, 35.1M parameters) and of
  the tiny digits recipe, on this machine's device (a GPU when there is one).

    python benchmarks/emm_replication.py a|b|c|throughput|doc [--out runs/replication] [--threads 1]

Every part runs the public API with the recipe's defaults unless stated, so the figures are the
tool's. On a shared CPU the wall times include the other processes' load (recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from provenance import library_version

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "replication.json"
DOC = ROOT / "docs" / "replication.md"


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _save(part: str, figures: dict) -> None:
    results = _load()
    figures["provenance"] = {"commit": library_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                             "load_average": os.getloadavg(), "torch_threads": _torch_threads(),
                             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    results[part] = figures
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _search(out: Path, **overrides) -> tuple[dict, float, dict]:
    """One `memaudit emm` run through the API; (emm.json, wall seconds, the command's options)."""
    from memaudit.api import run_emm
    from memaudit.emm.recipe import EMMConfig

    config = EMMConfig(train="digits", out=out, **overrides)
    tick = time.perf_counter()
    result = run_emm(config)
    return result.emm, time.perf_counter() - tick, overrides


def _summary(search: dict) -> dict:
    return {"emm": search["emm"], "sizes": [{k: s.get(k) for k in ("size", "mean", "ci95", "passed", "converged",
                                                                    "lower_bound")}
                                          for s in search["sizes"]],
            "order": search["order"],
            "points": [{**{k: p.get(k) for k in ("size", "seed", "memorization_ratio", "step", "train_steps", "converged",
                                                 "extensions", "stopped_at_pass", "cost")},
                        "snapshots": [(s["step"], s["memorization_ratio"]) for s in p["snapshots"]]}
                       for p in search["points"]],
            "settings": {k: search["settings"][k] for k in ("precond", "arch", "epochs", "batch_size", "learning_rate",
                                                           "ema_decay", "snapshots", "extend", "n_samples",
                                                           "sample_steps", "labels", "resolution")}}


DEFAULT_COMMAND = ["memaudit", "emm", "--train", "digits", "--arch", "tiny"]


def part_a(out: Path, recorded: dict | None = None) -> None:
    """The Done-when command, all defaults, as a separate process: wall time, the CPU time (user +
    system) it and its children (the worker processes) used, as /usr/bin/time reports them, and the
    load average around it. ``recorded`` (wall, cpu, load) takes the figures of a run already
    made by hand into ``out/a`` (same command) instead of running it."""
    import resource
    import shutil
    import subprocess

    command = [*DEFAULT_COMMAND, "--out", str(out / "a"), "--quiet"]
    if recorded is None:
        load_before = os.getloadavg()
        tick = time.perf_counter()
        subprocess.run([shutil.which("memaudit") or "memaudit", *command[1:]], check=True)
        wall = time.perf_counter() - tick
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        recorded = {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                    "load": f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"}
    emm = json.loads((out / "a" / "emm.json").read_text())
    _save("a", {"command": " ".join(DEFAULT_COMMAND) + " --out OUT", "wall_seconds": recorded["wall"],
                "cpu_seconds": recorded["cpu"], "load": recorded["load"], "answer": emm["emm"]["answer"],
                **_summary(emm["searches"][0])})


def part_b(out: Path, resolution: int, size: int | None) -> None:
    """The search at a lower resolution, or (``size``) that resolution's ratio at one |D| that part a
    measured: passing where the native resolution fails shows the higher EMM with one training."""
    sizes = {} if size is None else {"start": size, "max_size": size}
    emm, wall, options = _search(out / "b", resolution=resolution, **sizes)
    flags = "" if size is None else f" --start {size} --max-size {size}"
    _save("b", {"command": f"memaudit emm --train digits --out OUT --resolution {resolution}{flags}", "wall_seconds": wall,
                "resolution": resolution, **_summary(emm["searches"][0])})


LABELLINGS = ("none", "true", "random:10", "unique")


def _c_recipe(out: Path, labels: str, extend: int | None = None):
    from memaudit.api import run_audit
    from memaudit.data import load_image_set
    from memaudit.emm.recipe import EMMConfig, make_recipe

    guard = {} if extend is None else {"extend": extend}
    return make_recipe(EMMConfig(train="digits", out=out / "a", labels=labels, **guard), load_image_set("digits"), run_audit)


def _c_measure(out: Path, labels: str, size: int, seed: int, threads: int, extend: int | None) -> None:
    """One point of part c in a worker process (one torch thread, no progress bars)."""
    import torch

    from memaudit import progress
    from memaudit.emm.recipe import measure_point

    torch.set_num_threads(threads)
    progress.set_enabled(False)
    measure_point(_c_recipe(out, labels, extend), size, seed)


def part_c(out: Path, size: int, seeds: int, jobs: int = 1, threads: int = 1, extend: int | None = None,
           read_only: bool = False) -> None:
    """Every labelling at one |D|, seeds 0..S-1, each point with the default recipe, trained seed by
    seed (so a stopped run leaves whole seeds), ``jobs`` points at a time in separate processes;
    points live in ``out/a`` beside part a's search, so the unconditional seed-0 point is the
    search's own when it visited ``size``, and a stopped run resumes. Per labelling: the mean over
    seeds of each point's highest ratio with its interval (``memaudit.emm.search.aggregate``: the
    envelope of the pooled Wilson interval and the Student t interval over seeds), and at each
    snapshot step that every seed reached the mean ratio with the same interval (equal training:
    the first run's snapshots are common to all; the convergence guard extends only the points
    still rising). ``extend`` replaces the guard's number of extensions (0: every point trains the
    default 2000 epochs only, equal training throughout). ``read_only``: train nothing, figures from
    the seeds whose point has finished (a run stopped for time); each row lists its seeds."""
    import resource
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from memaudit.emm.recipe import point_dir, read_point

    recipes = {labels: _c_recipe(out, labels, extend) for labels in LABELLINGS}
    tasks = [] if read_only else [(labels, seed) for seed in range(seeds) for labels in LABELLINGS
                                  if read_point(point_dir(recipes[labels], size, seed)) is None]
    load_before = os.getloadavg()
    tick = time.perf_counter()
    if jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            for future in [pool.submit(_c_measure, out, labels, size, seed, threads, extend) for labels, seed in tasks]:
                future.result()
    else:
        for labels, seed in tasks:
            _c_measure(out, labels, size, seed, threads, extend)
    wall = time.perf_counter() - tick
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    found = {labels: [p for p in (read_point(point_dir(recipes[labels], size, seed)) for seed in range(seeds)) if p]
             for labels in LABELLINGS}
    rows = [_c_row(size, points, labels) for labels, points in found.items() if points]
    previous = _load().get("c", {})
    if "rows" in previous:  # one size, written before part c kept a run per size (its points were read back)
        previous = {"runs": [{"size": previous["rows"][0]["size"], "seeds": previous["seeds"], "jobs": 1,
                              "command": previous["command"].split("  ")[0], "wall_seconds": None, "cpu_seconds": None,
                              "load": None, "rows": previous["rows"], "date": previous["provenance"]["date"]}]}
    runs = [r for r in previous.get("runs", []) if (r["size"], r.get("extend")) != (size, extend)]
    unfinished = [{"labels": labels, "seed": seed, **_c_audited(point_dir(recipes[labels], size, seed))}
                  for labels in LABELLINGS for seed in range(seeds)
                  if read_point(point_dir(recipes[labels], size, seed)) is None
                  and point_dir(recipes[labels], size, seed).is_dir()]
    flag = ("" if extend is None else f" --extend {extend}") + (" --read-only" if read_only else "")
    run = {"size": size, "seeds": seeds, "jobs": jobs, "extend": extend, "trained": [f"{labels} seed {seed}" for labels, seed in tasks],
           "wall_seconds": None if read_only else wall, "cpu_seconds": None if read_only else cpu,
           "load": None if read_only else
           f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores",
           "command": f"python benchmarks/emm_replication.py c --size {size} --seeds {seeds} --jobs {jobs}{flag}",
           "rows": rows, "unfinished": unfinished, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    _save("c", {"recipe": "memaudit emm's default recipe per point (--labels none|true|random:10|unique)",
                "runs": sorted(runs + [run], key=lambda r: (r["size"], -1 if r.get("extend") is None else r["extend"]))})


def _c_audited(folder: Path) -> dict:
    """A point stopped before it finished: the step its training reached and the snapshots audited."""
    audits = [(int(a.parent.name.split("-")[1]), json.loads(a.read_text())["memorization_ratio"])
              for a in sorted(folder.glob("audits/step-*/audit.json"))]
    trained = max((int(p.name.split("-")[1]) for p in folder.glob("snapshots/step-*")), default=0)
    return {"trained_to": trained, "snapshots": audits}


def _c_row(size: int, found: list, labels: str) -> dict:
    from memaudit.emm.search import aggregate
    from memaudit.emm.search import Point

    result = aggregate(size, found, 0.9)
    steps = sorted({s["step"] for p in found for s in p.info["snapshots"]})
    at_step = []
    for step in steps:
        shots = [next((s for s in p.info["snapshots"] if s["step"] == step), None) for p in found]
        if any(s is None for s in shots):
            continue  # a step only the extended seeds reached: not equal training
        snap = aggregate(size, [Point(size, p.seed, s["memorization_ratio"], s["memorized"], s["n"], info={})
                                for p, s in zip(found, shots)], 0.9)
        at_step.append({"step": step, "mean": snap.mean, "ci95": list(snap.ci95),
                        "ratios": [s["memorization_ratio"] for s in shots]})
    return {"labels": labels, "size": size, "mean": result.mean, "ci95": list(result.ci95),
            "ratios": [p.ratio for p in found], "best_steps": [p.info["step"] for p in found],
            "train_steps": [p.info["train_steps"] for p in found],
            "converged": [p.info.get("converged") for p in found], "seeds": [p.seed for p in found],
            "at_step": at_step}


def part_point(out: Path, size: int, labels: str, resolution: int | None, seed: int, overrides: dict | None = None) -> None:
    """One trained and audited point with the default recipe (the paper's reference code measures a
    fixed grid of sizes this way, one model per size); several run as separate processes at once.
    Points live under ``out/points`` by content, shared with part a's search when the recipe matches."""
    from memaudit.api import run_audit
    from memaudit.data import load_image_set
    from memaudit.emm.recipe import EMMConfig, make_recipe, measure_point, point_dir, read_point

    overrides = overrides or {}
    config = EMMConfig(train="digits", out=out, labels=labels, resolution=resolution, **overrides)
    recipe = make_recipe(config, load_image_set("digits"), run_audit)
    fresh = read_point(point_dir(recipe, size, seed)) is None  # else read back: its wall time is not known here
    tick = time.perf_counter()
    point = measure_point(recipe, size, seed)
    info = point.info
    row = {"size": size, "labels": labels, "overrides": overrides, "resolution": resolution or 8, "seed": seed, "ratio": point.ratio,
           "ci95": info["ci95"], "converged": info.get("converged"), "extensions": info.get("extensions"),
           "train_steps": info["train_steps"], "best_step": info["step"], "wall_seconds": time.perf_counter() - tick if fresh else None,
           "snapshots": [(s["step"], s["memorization_ratio"]) for s in info["snapshots"]]}
    results = _load()
    rows = [r for r in results.get("points", {}).get("rows", [])
            if (r["size"], r["labels"], r["resolution"], r["seed"], r.get("overrides", {}))
            != (size, labels, resolution or 8, seed, overrides)]
    _save("points", {"rows": sorted(rows + [row], key=lambda r: (r["resolution"], r["labels"], r["size"], r["seed"],
                                                                  json.dumps(r.get("overrides", {}), sort_keys=True))),
                     "command": "python benchmarks/emm_replication.py point --size N --labels L [--resolution R] "
                                "[--seed S] [--set FIELD=VALUE ...]  (memaudit emm's default recipe but for the --set "
                                "EMMConfig fields, one point)"})


def _labelling(arrays) -> str:
    """Which --labels a point's saved training set was trained with."""
    import numpy as np

    from memaudit.data import load_image_set

    if "labels" not in arrays:
        return "none"
    labels = arrays["labels"]
    if np.array_equal(labels, np.arange(len(labels))):
        return "unique"
    digits = load_image_set("digits")
    by_id = dict(zip(digits.ids, digits.labels.tolist()))
    return "true" if [by_id.get(i) for i in arrays["ids"].tolist()] == labels.tolist() else "random:10"


def part_collect(outs: list[Path], key: str = "collected") -> None:
    """Every point folder under the given run folders, finished or not: the ratio of each audited
    snapshot. A point whose point.json is missing is still training (an extension of the convergence
    guard, or its first run): its figures are partial and marked so."""
    import numpy as np

    rows = []
    for out in outs:
        for folder in sorted(Path(out).glob("points/*")):
            if not (folder / "train.npz").is_file():
                continue
            arrays = np.load(folder / "train.npz")
            snapshots = []
            for audit in sorted(folder.glob("audits/step-*/audit.json")):
                document = json.loads(audit.read_text())
                snapshots.append((int(audit.parent.name.split("-")[1]), document["memorization_ratio"]))
            point = json.loads((folder / "point.json").read_text()) if (folder / "point.json").is_file() else None
            trained = sorted(int(p.name.split("-")[1]) for p in folder.glob("snapshots/step-*"))
            rows.append({"run": Path(out).name, "size": int(arrays["images"].shape[0]), "labels": _labelling(arrays),
                         "resolution": int(arrays["images"].shape[1]), "seed": int(folder.name.split("-seed")[1][0]),
                         "finished": point is not None, "converged": None if point is None else point["converged"],
                         "ratio": None if point is None else point["memorization_ratio"],
                         "best_audited": max((v for _, v in snapshots), default=None), "snapshots": snapshots,
                         "trained_to": max(trained, default=0)})
    _save(key, {"rows": rows, "command": "python benchmarks/emm_replication.py collect --runs DIR [DIR ...]"
                                        + ("" if key == "collected" else f" --key {key}")})


def part_criterion(sizes: tuple[int, ...] = (20, 40, 100), resolutions: tuple[int, ...] = (4, 8, 16),
                   sigmas: tuple[float, ...] = (2, 4, 8, 16, 32), copies: int = 20) -> None:
    """Why (b) can go the wrong way: how exact a copy the nn-ratio test demands at each resolution,
    with no model involved. For the balanced digits subsets resized to R x R (the recipe's bilinear
    ``resize_set``): the per-pixel RMS distance from each training image to its nearest other one
    (how crowded the set is), and the share of noisy copies y + N(0, sigma^2) per pixel (uint8 units,
    rounded and clipped as samples are) that the test calls memorized (d1/d2 < 1/3), brute-force numpy."""
    import numpy as np

    from memaudit.data import load_image_set
    from memaudit.emm.recipe import _balanced, resize_set

    digits = load_image_set("digits")
    rng = np.random.default_rng(0)
    rows = []
    for resolution in resolutions:
        full = resize_set(digits, resolution)
        for size in sizes:
            train = full.images[_balanced(full, size)].reshape(size, -1).astype(np.float64)
            dims = train.shape[1]
            gaps = np.sqrt(((train[:, None] - train[None]) ** 2).sum(-1))
            np.fill_diagonal(gaps, np.inf)
            nearest = gaps.min(1) / np.sqrt(dims)
            row = {"resolution": resolution, "size": size, "dims": dims,
                   "nearest_other_rms": {"median": float(np.median(nearest)), "min": float(nearest.min())},
                   "memorized_share": {}}
            for sigma in sigmas:
                noisy = np.repeat(train, copies, 0) + rng.normal(0, sigma, (size * copies, dims))
                noisy = np.clip(np.rint(noisy), 0, 255)
                d = np.sqrt(((noisy[:, None] - train[None]) ** 2).sum(-1))
                d.sort(1)
                row["memorized_share"][str(sigma)] = float(np.mean(d[:, 0] < d[:, 1] / 3))
            rows.append(row)
    _save("criterion", {"rows": rows, "copies_per_image": copies,
                        "command": "python benchmarks/emm_replication.py criterion"})


def part_errors(outs: list[Path]) -> None:
    """How close each finished point's samples come to the training set, in the units of the
    criterion table: the median over samples of d1 and d2 (nearest and second-nearest training
    image, pixel space) divided by sqrt(pixels), i.e. per-pixel RMS in uint8 units, at the snapshot
    that counts (from its audit's neighbors.csv)."""
    import csv

    import numpy as np

    rows = []
    for out in outs:
        for folder in sorted(Path(out).glob("points/*")):
            if not (folder / "point.json").is_file():
                continue
            point = json.loads((folder / "point.json").read_text())
            arrays = np.load(folder / "train.npz")
            pixels = int(np.prod(arrays["images"].shape[1:]))
            with open(Path(out) / point["audit"] / "neighbors.csv", newline="") as handle:
                found = [r for r in csv.DictReader(handle) if r["space"] == "pixel"]
            rows.append({"size": point["size"], "labels": _labelling(arrays), "resolution": int(arrays["images"].shape[1]),
                         "seed": point["seed"], "ratio": point["memorization_ratio"], "step": point["step"],
                         "d1_rms": float(np.median([float(r["d1"]) for r in found])) / np.sqrt(pixels),
                         "d2_rms": float(np.median([float(r["d2"]) for r in found])) / np.sqrt(pixels)})
    rows.sort(key=lambda r: (r["resolution"], r["labels"], r["size"], r["seed"]))
    _save("errors", {"rows": rows, "command": "python benchmarks/emm_replication.py errors --runs DIR [DIR ...]"})


def part_throughput(steps: int, cpu_batch: int) -> None:
    """Training images/s: DDPM++ (VP) 32x32 RGB at batch 512 on a GPU (``cpu_batch`` on a CPU, where
    512 would take minutes per step), and the tiny EDM recipe on 8x8 digits at its default batch."""
    import torch

    from memaudit.emm.architectures import resolve_architecture
    from memaudit.emm.recipe import EMMConfig
    from memaudit.emm.training import OBJECTIVES, TrainConfig

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    defaults = EMMConfig(train="digits", out=Path("unused"))
    for name, precond, shape, batch in (("ddpmpp", "vp", (32, 32, 3), 512 if device == "cuda" else cpu_batch),
                                        ("tiny", defaults.precond, (8, 8, 1), defaults.batch_size)):
        config = TrainConfig(batch_size=batch, arch=resolve_architecture(name), precond=precond)
        torch.manual_seed(0)
        objective = OBJECTIVES[precond](config, shape, None, device)
        optimizer = torch.optim.Adam(objective.model.parameters(), lr=2e-4)
        generator = torch.Generator().manual_seed(0)
        images = torch.rand((batch, shape[2], shape[0], shape[1]), device=device) * 2 - 1

        def step():
            level, noise = objective.draw(batch, images.shape[1:], generator)
            loss = objective.loss_sum(objective.model, images, None, level.to(device), noise.to(device)) / batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()  # warm-up (allocations, cuDNN autotuning)
        if device == "cuda":
            torch.cuda.synchronize()
        tick = time.perf_counter()
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - tick
        rows.append({"arch": name, "precond": precond, "image_shape": list(shape), "batch": batch, "steps": steps,
                     "parameters": sum(p.numel() for p in objective.model.parameters()),
                     "images_per_second": batch * steps / seconds, "device": device,
                     "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"})
    _save("throughput", {"rows": rows, "reference": "EDM (Karras et al. 2022): about 145 img/s per V100 for DDPM++ "
                                                    "at 32x32 (8 V100s, batch 512, 200 Mimg in about 2 days)"})


def _trail(snapshots, digits: int = 2) -> str:
    return ", ".join(f"{s}: {v:.{digits}f}" for s, v in snapshots) or "none yet"


def _minutes(seconds) -> str:
    return "" if seconds is None else f"{seconds / 60:.0f} min"


def _interval(low_high) -> str:
    return f"[{low_high[0]:.3f}, {low_high[1]:.3f}]"


def _c_section(c: dict) -> list[str]:
    """Part c's tables, one pair per |D|: each labelling's highest ratio over its snapshots (the
    paper's statistic, after the convergence guard's extensions), and its ratio at each snapshot
    that every seed reached (equal training)."""
    lines = ["## (c) conditioning at equal |D|", "", f"Each point: {c['recipe']}.", ""]
    for run in c["runs"]:
        cost = ("points read back from an earlier run" if run.get("wall_seconds") is None else
                f"wall {run['wall_seconds'] / 60:.0f} min, CPU {run['cpu_seconds'] / 60:.0f} min, "
                f"load average {run['load']}")
        lines += [f"### |D| = {run['size']}", "",
                  f"`{run['command']}` ({run.get('date', '')}): training seeds 0 to {run['seeds'] - 1} per labelling "
                  f"(each row lists the seeds whose point finished); {cost}.", "",
                  "| labels | mean of highest ratio | 95% interval (seeds) | per seed (step of the highest) | "
                  "converged | steps trained |", "|---|---|---|---|---|---|"]
        for row in run["rows"]:
            steps = row.get("best_steps") or [None] * len(row["ratios"])
            seeds = row.get("seeds") or list(range(len(row["ratios"])))
            per_seed = ", ".join(f"seed {n}: {v:.3f}" + ("" if s is None else f" ({s})")
                                 for n, v, s in zip(seeds, row["ratios"], steps))
            trained = ", ".join(map(str, row.get("train_steps", []))) or ""
            lines.append(f"| {row['labels']} | {row['mean']:.3f} | {_interval(row['ci95'])} | {per_seed} | "
                         f"{', '.join(str(v) for v in row['converged'])} | {trained} |")
        lines.append("")
        if all("at_step" in row for row in run["rows"]):
            steps = sorted({s["step"] for row in run["rows"] for s in row["at_step"]})
            lines += ["Equal training: mean ratio over the seeds at each snapshot every seed reached, with its 95% "
                      "interval (per seed in brackets).", "",
                      "| labels | " + " | ".join(f"step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
            for row in run["rows"]:
                by_step = {s["step"]: s for s in row["at_step"]}
                cells = [("" if s not in by_step else f"{by_step[s]['mean']:.3f} {_interval(by_step[s]['ci95'])} "
                          f"({', '.join(f'{v:.2f}' for v in by_step[s]['ratios'])})") for s in steps]
                lines.append(f"| {row['labels']} | " + " | ".join(cells) + " |")
            lines.append("")
            if run.get("unfinished"):
                lines += ["Points stopped before their 2000 epochs (no point.json; the snapshots saved so far, each "
                          "audited as the point would audit it):", "",
                          "| labels | seed | snapshot saved last | ratio at each audited snapshot (step: ratio) |",
                          "|---|---|---|---|"]
                lines += [f"| {u['labels']} | {u['seed']} | {u['trained_to']} | {_trail(u['snapshots'], 3)} |"
                          for u in run["unfinished"]]
        else:
            lines += ["Mean ratio at each snapshot (step: ratio): " + "; ".join(
                f"{row['labels']} {_trail(row['mean_at_step'], 3)}" for row in run["rows"])]
        lines.append("")
    return lines


def render_doc() -> None:
    results = _load()
    lines = ["# Replicating Gu et al. (2023) in small: `memaudit emm` on the digits", "",
             "Generated by `python benchmarks/emm_replication.py doc` from `docs/replication.json` (written by the "
             "parts `a`, `b`, `c`, `point`, `criterion`, `collect` and `throughput` of the same script). 1797 sklearn "
             "digits, 8x8 grey, 10 classes; EMM threshold 0.9 (epsilon 0.1), the paper's nn-ratio criterion "
             "(d1/d2 < 1/3).", ""]
    if "a" in results:
        r = results["a"]
        steps = {p["size"]: p for p in r["points"]}
        budget = results.get("budget", {}).get("two_workers", {})
        critical = budget.get("critical_path_cpu_seconds")
        idle = [f"CPU time / 2 cores = {r['cpu_seconds'] / 120:.1f} min"] + (
            [f"the critical path of its rounds (the costliest point of each round, summed; table below) = "
             f"{critical / 60:.1f} min"] if critical else [])
        lines += ["## (a) ratio falls as |D| grows: the default command", "",
                  f"`{r['command']}` ({r['provenance']['date']}): **{r.get('answer') or r['emm']}**. Sizes in the "
                  f"order trained: {', '.join(map(str, r.get('order', [])))}.", "",
                  f"Time: wall {r['wall_seconds'] / 60:.1f} min on this project's {r['provenance']['cpus']}-core machine "
                  f"shared with other engineers' jobs (load average {r['load']}); CPU time (user + system of the command "
                  f"and its worker processes, as /usr/bin/time -v counts them) {r['cpu_seconds'] / 60:.1f} min. On an "
                  f"idle 2-core machine it takes at least the larger of " + " and ".join(idle) + ".", "",
                  "| \\|D\\| | ratio | 95% interval | passed | stopped at its first pass (ratio: a lower bound) | "
                  "still rising at the end of T | steps trained | CPU s | ratio at each snapshot (step: ratio) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in r["sizes"]:
            point = steps.get(s["size"], {})
            cpu = (point.get("cost") or {}).get("cpu_seconds")
            # a point stopped at a pass is not judged for convergence (its own value is None)
            stopped = point.get("stopped_at_pass") is not None
            rising = "not judged" if stopped else (s["converged"] is False)
            lines.append(f"| {s['size']} | {'>= ' if stopped else ''}{s['mean']:.3f} | [{s['ci95'][0]:.3f}, "
                         f"{s['ci95'][1]:.3f}] | {s['passed']} | {stopped} | {rising} | {point.get('train_steps')} | "
                         f"{'' if cpu is None else f'{cpu:.0f}'} | {_trail(point.get('snapshots', []), 3)} |")
        lines += ["", "Recipe: " + ", ".join(f"{k} {v}" for k, v in r["settings"].items()), ""]
    else:
        lines += ["## (a) ratio falls as |D| grows: the default command", ""]
        if "default-run" in results:
            lines += [f"The search had not finished when the figures were taken; its points so far, by size (the "
                      f"order it trained them) (`{results['default-run']['command']}`; no point.json: still training, partial):", "",
                      "| \\|D\\| | finished | converged | highest ratio audited | passed | ratio at each audited snapshot "
                      "(step: ratio) | trained to step |", "|---|---|---|---|---|---|---|"]
            for row in results["default-run"]["rows"]:
                if row["labels"] != "none" or row["seed"] != 0:
                    continue
                best = "" if row["best_audited"] is None else f"{row['best_audited']:.3f}"
                passed = "" if row["best_audited"] is None else str(row["best_audited"] >= 0.9)
                lines.append(f"| {row['size']} | {row['finished']} | {row['converged']} | {best} | {passed} | "
                             f"{_trail(row['snapshots'], 3)} | {row['trained_to']} |")
            lines.append("")
        else:
            lines += ["No finished search: see the notes at the end.", ""]
    if "budget" in results:  # benchmarks/emm_budget.py over the default command's run
        b = results["budget"]
        lines += [f"Every point of the default command's run, as its search trained them (`{b['command']}`; "
                  f"load average {b.get('load_average')}): CPU seconds are the training process's own (user + system), "
                  "training and audits; a point stopped at its first pass is not judged for convergence.", "",
                  "| \\|D\\| | ratio | stopped at its first pass | converged | extensions | steps trained | CPU s | wall s "
                  "| ratio at each snapshot (step: ratio) |", "|---|---|---|---|---|---|---|---|---|"]
        for p in b["points"]:
            lines.append(f"| {p['size']} | {p['ratio']:.3f} | {p['stopped_at_pass'] is not None} | {p['converged']} | "
                         f"{p['extensions']} | {p['train_steps']} | {p.get('cpu_seconds', '')} | {p.get('wall_seconds', '')} "
                         f"| {_trail(p['snapshots'], 3)} |")
        lines += ["", "The search replayed over these points: a round's sizes train together, a round lasts as long as "
                  "its costliest point, so the sum of the rounds' largest CPU times is the wall time on an idle machine "
                  "with a core per worker (the critical path).", "",
                  "| schedule | rounds (sizes trained together) | bracket | finished rounds | critical path over them, "
                  "CPU min | all their points, CPU min |", "|---|---|---|---|---|---|"]
        for name, key in (("one process (--workers 1)", "one_worker"), ("two workers (default)", "two_workers")):
            plan = b[key]
            rounds = "; ".join(", ".join(map(str, round_["sizes"])) for round_ in plan["rounds"])
            bracket = plan["bracket"]
            shown = "unfinished" if bracket is None else f"[{bracket['lower']}, {bracket['upper']}) {bracket['status']}"
            lines.append(f"| {name} | {rounds} | {shown} | {plan['finished_rounds']} of {len(plan['rounds'])} | "
                         f"{plan['critical_path_cpu_seconds'] / 60:.1f} | {plan['total_cpu_seconds'] / 60:.1f} |")
        lines.append("")
    rows = results.get("points", {}).get("rows", [])
    pilots = [row for row in rows if row.get("overrides")]
    if pilots:
        lines += ["## Recipe choices: what sets the pace", "",
                  f"`{results['points']['command']}`. One point each, |D| = 50 unconditional, seed 0, first run only "
                  "(`extend=0`), 500 samples; the default recipe's own first run (lr 2e-3, batch 64) is the "
                  "|D| = 50 none row of the earlier runs below.", "",
                  "| changed | steps | ratio at each snapshot (step: ratio) | highest |", "|---|---|---|---|"]
        for row in pilots:
            changed = ", ".join(f"{k} {v}" for k, v in row["overrides"].items() if k not in ("extend", "n"))
            lines.append(f"| {changed} | {row['train_steps']} | {_trail(row['snapshots'], 3)} | {row['ratio']:.3f} |")
        lines.append("")
    if "criterion" in results:
        r = results["criterion"]
        sigmas = list(r["rows"][0]["memorized_share"])
        lines += ["## (b) resolution: how exact a copy the nn-ratio test demands", "",
                  f"`{r['command']}`: no model; the balanced subsets resized to R x R as `--resolution` does; "
                  f"{r['copies_per_image']} noisy copies y + N(0, sigma^2) per training image (uint8 units per pixel, "
                  "rounded and clipped), judged by the test against the subset.", "",
                  "| R x R | \\|D\\| | dims | per-pixel RMS distance to the nearest other training image (median, min) | "
                  + " | ".join(f"memorized at sigma {s}" for s in sigmas) + " |",
                  "|---|---|---|---|" + "---|" * len(sigmas)]
        for row in r["rows"]:
            near = row["nearest_other_rms"]
            lines.append(f"| {row['resolution']}x{row['resolution']} | {row['size']} | {row['dims']} | "
                         f"{near['median']:.1f}, {near['min']:.1f} | "
                         + " | ".join(f"{row['memorized_share'][s]:.3f}" for s in sigmas) + " |")
        lines.append("")
    if "errors" in results:
        r = results["errors"]
        lines += ["How close the trained models' samples come (`" + r["command"] + "`): median per-pixel RMS distance "
                  "of the samples to their nearest (d1) and second-nearest (d2) training image, at the counting "
                  "snapshot, in the units of the table above.", "",
                  "| R x R | \\|D\\| | labels | seed | step | ratio | d1 per pixel | d2 per pixel |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['resolution']}x{row['resolution']} | {row['size']} | {row['labels']} | {row['seed']} | "
                         f"{row['step']} | {row['ratio']:.3f} | {row['d1_rms']:.1f} | {row['d2_rms']:.1f} |")
        lines.append("")
    if "b" in results:
        r = results["b"]
        lines += [f"`{r['command']}`: bracket [{r['emm']['lower']}, {r['emm']['upper']}) ({r['emm']['status']}).", "",
                  "| \\|D\\| | ratio | converged | ratio at each snapshot |", "|---|---|---|---|"]
        steps = {p["size"]: p for p in r["points"]}
        for s in r["sizes"]:
            lines.append(f"| {s['size']} | {s['mean']:.3f} | {s['converged']} | "
                         f"{_trail(steps.get(s['size'], {}).get('snapshots', []), 3)} |")
        lines.append("")
    if "c" in results:
        lines += _c_section(results["c"])
    if "throughput" in results:
        r = results["throughput"]
        lines += ["## Training throughput", "", "| network | precond | image | batch | parameters | images/s | device |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['arch']} | {row['precond']} | {'x'.join(map(str, row['image_shape']))} | {row['batch']} | "
                         f"{row['parameters']:,} | {row['images_per_second']:.1f} | {row['device_name']} |")
        lines += ["", f"Reference: {r['reference']}.", ""]
    earlier = [row for row in rows if "overrides" not in row]  # rows written before point recorded its overrides
    today = [row for row in rows if row.get("overrides") == {}]
    if today:
        lines += ["## Single points with today's defaults", "", f"`{results['points']['command']}`.", "",
                  "| \\|D\\| | labels | resolution | seed | ratio | 95% interval | converged | steps | "
                  "ratio at each snapshot (step: ratio) | wall |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in today:
            lines.append(f"| {row['size']} | {row['labels']} | {row['resolution']}x{row['resolution']} | {row['seed']} | "
                         f"{row['ratio']:.3f} | [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] | {row['converged']} | "
                         f"{row['train_steps']} | {_trail(row['snapshots'], 3)} | {_minutes(row['wall_seconds'])} |")
        lines.append("")
    if earlier or "collected" in results:
        lines += ["## Earlier runs (previous defaults: search from 10 per class, 500 samples per snapshot)", "",
                  "Same training recipe as today's default (2000 epochs, batch 64, lr 2e-3, 4 snapshots, one "
                  "extension); measured at load 17 to 26. Each row one model.", ""]
    if earlier:
        lines += ["| \\|D\\| | labels | resolution | seed | ratio | 95% interval | converged | steps | "
                  "ratio at each snapshot (step: ratio) | wall |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in earlier:
            lines.append(f"| {row['size']} | {row['labels']} | {row['resolution']}x{row['resolution']} | {row['seed']} | "
                         f"{row['ratio']:.3f} | [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] | {row['converged']} | "
                         f"{row['train_steps']} | {_trail(row['snapshots'])} | {_minutes(row['wall_seconds'])} |")
        lines.append("")
    if "collected" in results:
        lines += ["Every point of those runs, finished or not (`collect`; no point.json: still training, partial):", "",
                  "| run | \\|D\\| | labels | resolution | finished | converged | highest ratio audited | "
                  "ratio at each audited snapshot (step: ratio) | trained to step |", "|---|---|---|---|---|---|---|---|---|"]
        for row in results["collected"]["rows"]:
            best = "" if row["best_audited"] is None else f"{row['best_audited']:.3f}"
            lines.append(f"| {row['run']} | {row['size']} | {row['labels']} | {row['resolution']}x{row['resolution']} | "
                         f"{row['finished']} | {row['converged']} | {best} | {_trail(row['snapshots'], 3)} | "
                         f"{row['trained_to']} |")
        lines.append("")
    notes = results.get("notes")
    if notes:
        lines += ["## Reading the figures", "", *notes, ""]
    DOC.write_text("\n".join(lines))
    print(DOC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["a", "b", "c", "point", "collect", "criterion", "errors", "throughput", "doc"])
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="part collect: run folders to read")
    parser.add_argument("--key", default="collected", help="part collect: the name its figures are saved under "
                        "(collected: the earlier runs; default-run: the default command's points so far)")
    parser.add_argument("--labels", default="none", help="part point: none, true, random:C or unique")
    parser.add_argument("--seed", type=int, default=0, help="part point: the training seed")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="part point: an EMMConfig field off the default, e.g. learning_rate=0.005 (JSON value)")
    parser.add_argument("--out", type=Path, default=Path("runs/replication"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--resolution", type=int, default=4, help="part b: the lower resolution")
    parser.add_argument("--lowres", action="store_true", help="part point: train at --resolution (else native 8x8)")
    parser.add_argument("--size", type=int, default=None, help="part b: one |D| instead of a search; part c: |D| (default: the upper end of part a's bracket)")
    parser.add_argument("--seeds", type=int, default=3, help="part c: training seeds per labelling")
    parser.add_argument("--extend", type=int, default=None, help="part c: the convergence guard's extensions "
                        "(default: the recipe's; 0: equal training, the first 2000 epochs only)")
    parser.add_argument("--read-only", action="store_true", help="part c: train nothing; figures from the "
                        "finished points")
    parser.add_argument("--jobs", type=int, default=1, help="part c: points trained at once, one process each "
                        "(--threads torch threads each)")
    parser.add_argument("--wall", type=float, default=None, help="part a: wall seconds of a run made by hand in OUT/a")
    parser.add_argument("--cpu", type=float, default=None, help="part a: its CPU seconds (user + system)")
    parser.add_argument("--load", default="", help="part a: the load average during it, as text")
    parser.add_argument("--steps", type=int, default=3, help="throughput: timed steps per network")
    parser.add_argument("--cpu-batch", type=int, default=16, help="throughput: DDPM++ batch on a CPU")
    args = parser.parse_args()
    if args.part != "doc":
        import torch

        torch.set_num_threads(args.threads)
    from memaudit import progress

    progress.set_enabled(False)
    if args.part == "a":
        part_a(args.out, None if args.wall is None else {"wall": args.wall, "cpu": args.cpu, "load": args.load})
    elif args.part == "b":
        part_b(args.out, args.resolution, args.size)
    elif args.part == "c":
        size = args.size or _load().get("a", {}).get("emm", {}).get("upper")
        if not size:
            parser.error("part c needs --size (or part a's bracket)")
        part_c(args.out, size, args.seeds, args.jobs, args.threads, args.extend, args.read_only)
    elif args.part == "point":
        overrides = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
        part_point(args.out, args.size, args.labels, args.resolution if args.resolution != 4 or args.lowres else None,
                   args.seed, overrides)
    elif args.part == "collect":
        part_collect(args.runs, args.key)
    elif args.part == "errors":
        part_errors(args.runs)
    elif args.part == "criterion":
        part_criterion()
    elif args.part == "throughput":
        part_throughput(args.steps, args.cpu_batch)
    render_doc()


if __name__ == "__main__":
    main()
