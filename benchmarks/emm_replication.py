"""Gu et al. (2023)'s headline findings reproduced in small with `memaudit emm` on the digits, and
training throughput.

Parts (each writes its figures into one JSON file, so parts can run at different times; ``doc``
renders docs/replication.md from that file):
- ``a``: the default EMM search on the digits (unconditional): ratio by |D| and the EMM bracket,
  with the wall time of the whole command (the default recipe must bracket in under 30 minutes);
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
    return {"emm": search["emm"], "sizes": [{k: s[k] for k in ("size", "mean", "ci95", "passed", "converged")}
                                          for s in search["sizes"]],
            "points": [{k: p.get(k) for k in ("size", "seed", "memorization_ratio", "step", "train_steps", "converged",
                                              "extensions")} for p in search["points"]],
            "settings": {k: search["settings"][k] for k in ("precond", "arch", "epochs", "batch_size", "learning_rate",
                                                           "ema_decay", "snapshots", "extend", "n_samples",
                                                           "sample_steps", "labels", "resolution")}}


def part_a(out: Path) -> None:
    emm, wall, options = _search(out / "a")
    _save("a", {"command": "memaudit emm --train digits --out OUT  (all defaults: --precond edm --arch tiny)",
                "wall_seconds": wall, **_summary(emm["searches"][0])})


def part_b(out: Path, resolution: int, size: int | None) -> None:
    """The search at a lower resolution, or (``size``) that resolution's ratio at one |D| that part a
    measured: passing where the native resolution fails shows the higher EMM with one training."""
    sizes = {} if size is None else {"start": size, "max_size": size}
    emm, wall, options = _search(out / "b", resolution=resolution, **sizes)
    flags = "" if size is None else f" --start {size} --max-size {size}"
    _save("b", {"command": f"memaudit emm --train digits --out OUT --resolution {resolution}{flags}", "wall_seconds": wall,
                "resolution": resolution, **_summary(emm["searches"][0])})


def part_c(out: Path, size: int, seeds: int) -> None:
    """One |D|, every labelling, ``seeds`` seeds: a sweep over labels on a one-size grid."""
    labels = "none,true,random:10,unique"
    emm, wall, options = _search(out / "c", start=size, max_size=size, seeds=seeds, sweep=f"labels={labels}")
    rows = []
    for search in emm["searches"]:
        [size_result] = search["sizes"]
        rows.append({"labels": search["value"], "size": size, "mean": size_result["mean"], "ci95": size_result["ci95"],
                     "ratios": size_result["ratios"], "converged": size_result["converged"]})
    _save("c", {"command": f"memaudit emm --train digits --out OUT --start {size} --max-size {size} --seeds {seeds} "
                           f"--sweep labels={labels}", "wall_seconds": wall, "rows": rows})


def part_point(out: Path, size: int, labels: str, resolution: int | None, seed: int) -> None:
    """One trained and audited point with the default recipe (the paper's reference code measures a
    fixed grid of sizes this way, one model per size); several run as separate processes at once.
    Points live under ``out/points`` by content, shared with part a's search when the recipe matches."""
    from memaudit.api import run_audit
    from memaudit.data import load_image_set
    from memaudit.emm.recipe import EMMConfig, make_recipe, measure_point

    config = EMMConfig(train="digits", out=out, labels=labels, resolution=resolution)
    recipe = make_recipe(config, load_image_set("digits"), run_audit)
    tick = time.perf_counter()
    point = measure_point(recipe, size, seed)
    info = point.info
    row = {"size": size, "labels": labels, "resolution": resolution or 8, "seed": seed, "ratio": point.ratio,
           "ci95": info["ci95"], "converged": info.get("converged"), "extensions": info.get("extensions"),
           "train_steps": info["train_steps"], "best_step": info["step"], "wall_seconds": time.perf_counter() - tick,
           "snapshots": [(s["step"], s["memorization_ratio"]) for s in info["snapshots"]]}
    results = _load()
    rows = [r for r in results.get("points", {}).get("rows", [])
            if (r["size"], r["labels"], r["resolution"], r["seed"]) != (size, labels, resolution or 8, seed)]
    _save("points", {"rows": sorted(rows + [row], key=lambda r: (r["resolution"], r["labels"], r["size"], r["seed"])),
                     "command": "python benchmarks/emm_replication.py point --size N --labels L [--resolution R] "
                                "[--seed S]  (memaudit emm's default recipe, one point)"})


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


def part_collect(outs: list[Path]) -> None:
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
    _save("collected", {"rows": rows, "command": "python benchmarks/emm_replication.py collect --runs DIR [DIR ...]"})


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


def render_doc() -> None:
    results = _load()
    lines = ["# Replicating Gu et al. (2023) in small: `memaudit emm` on the digits", "",
             "Generated by `python benchmarks/emm_replication.py doc` from `docs/replication.json` (written by the "
             "parts `a`, `b`, `c`, `throughput` of the same script). 1797 sklearn digits, 8x8 grey, 10 classes; "
             "EMM threshold 0.9 (epsilon 0.1), the paper's nn-ratio criterion (d1/d2 < 1/3).", ""]
    for part, title in (("a", "(a) ratio falls as |D| grows: the default search"),
                        ("b", "(b) lower resolution raises EMM")):
        if part not in results:
            lines += [f"## {title}", "", "No finished search: see the points below (finished or partial) and the "
                      "notes at the end.", ""]
            continue
        r = results[part]
        lines += [f"## {title}", "", f"`{r['command']}`: bracket [{r['emm']['lower']}, {r['emm']['upper']}) "
                  f"({r['emm']['status']}), wall time {r['wall_seconds'] / 60:.1f} min "
                  f"(load average {r['provenance']['load_average'][0]:.1f} on {r['provenance']['cpus']} cores).", "",
                  "| \\|D\\| | ratio | 95% interval | passed | converged | steps trained |", "|---|---|---|---|---|---|"]
        steps = {p["size"]: p["train_steps"] for p in r["points"]}
        for s in r["sizes"]:
            lines.append(f"| {s['size']} | {s['mean']:.3f} | [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] | {s['passed']} | "
                         f"{s['converged']} | {steps.get(s['size'])} |")
        settings = r["settings"]
        lines += ["", "Recipe: " + ", ".join(f"{k} {v}" for k, v in settings.items()), ""]
    if "c" in results:
        r = results["c"]
        lines += ["## (c) conditioning at equal |D|", "", f"`{r['command']}` ({r['wall_seconds'] / 60:.1f} min)", "",
                  "| labels | \\|D\\| | mean ratio | 95% interval (seeds) | per seed | converged |", "|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['labels']} | {row['size']} | {row['mean']:.3f} | [{row['ci95'][0]:.3f}, "
                         f"{row['ci95'][1]:.3f}] | {', '.join(f'{v:.3f}' for v in row['ratios'])} | {row['converged']} |")
        lines.append("")
    else:
        lines += ["## (c) conditioning at equal |D|", "", "No finished sweep: see the points below (finished or "
                  "partial) and the notes at the end.", ""]
    if "throughput" in results:
        r = results["throughput"]
        lines += ["## Training throughput", "", "| network | precond | image | batch | parameters | images/s | device |",
                  "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['arch']} | {row['precond']} | {'x'.join(map(str, row['image_shape']))} | {row['batch']} | "
                         f"{row['parameters']:,} | {row['images_per_second']:.1f} | {row['device_name']} |")
        lines += ["", f"Reference: {r['reference']}.", ""]
    if "points" in results:
        rows = results["points"]["rows"]
        lines += ["## Single points (the paper's grid method)", "",
                  f"`{results['points']['command']}`; each row one model, the highest ratio over its snapshots.", "",
                  "| \\|D\\| | labels | resolution | seed | ratio | 95% interval | passed | converged | steps | "
                  "ratio at each snapshot (step: ratio) | wall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            trail = ", ".join(f"{s}: {v:.2f}" for s, v in r["snapshots"])
            lines.append(f"| {r['size']} | {r['labels']} | {r['resolution']}x{r['resolution']} | {r['seed']} | "
                         f"{r['ratio']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] | {r['ratio'] >= 0.9} | "
                         f"{r['converged']} | {r['train_steps']} | {trail} | {r['wall_seconds'] / 60:.0f} min |")
        grid = sorted((r["size"], r["ratio"]) for r in rows if r["labels"] == "none" and r["resolution"] == 8)
        passed = [s for s, v in grid if v >= 0.9]
        failed = [s for s, v in grid if v < 0.9 and (not passed or s > max(passed))]
        if grid:
            lines += ["", f"Grid bracket (unconditional, 8x8): largest size that passed {max(passed) if passed else None}, "
                          f"smallest larger size that failed {min(failed) if failed else None}.", ""]
    if "collected" in results:
        lines += ["## Every trained point, finished or not", "",
                  "Read from the point folders by `collect`: unfinished points (no point.json: a convergence-guard "
                  "extension or the first run still training when the figures were taken) show the ratios of the "
                  "snapshots audited so far; they are partial.", "",
                  "| run | \\|D\\| | labels | resolution | finished | converged | highest ratio audited | "
                  "ratio at each audited snapshot (step: ratio) | trained to step |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results["collected"]["rows"]:
            trail = ", ".join(f"{s}: {v:.3f}" for s, v in r["snapshots"]) or "none yet"
            best = "" if r["best_audited"] is None else f"{r['best_audited']:.3f}"
            lines.append(f"| {r['run']} | {r['size']} | {r['labels']} | {r['resolution']}x{r['resolution']} | "
                         f"{r['finished']} | {r['converged']} | {best} | {trail} | {r['trained_to']} |")
        lines.append("")
    notes = results.get("notes")
    if notes:
        lines += ["## Reading the figures", "", *notes, ""]
    DOC.write_text("\n".join(lines))
    print(DOC)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["a", "b", "c", "point", "collect", "throughput", "doc"])
    parser.add_argument("--runs", type=Path, nargs="*", default=[], help="part collect: run folders to read")
    parser.add_argument("--labels", default="none", help="part point: none, true, random:C or unique")
    parser.add_argument("--seed", type=int, default=0, help="part point: the training seed")
    parser.add_argument("--out", type=Path, default=Path("runs/replication"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared CPU)")
    parser.add_argument("--resolution", type=int, default=4, help="part b: the lower resolution")
    parser.add_argument("--lowres", action="store_true", help="part point: train at --resolution (else native 8x8)")
    parser.add_argument("--size", type=int, default=None, help="part b: one |D| instead of a search; part c: |D| (default: the upper end of part a's bracket)")
    parser.add_argument("--seeds", type=int, default=3, help="part c: training seeds per labelling")
    parser.add_argument("--steps", type=int, default=3, help="throughput: timed steps per network")
    parser.add_argument("--cpu-batch", type=int, default=16, help="throughput: DDPM++ batch on a CPU")
    args = parser.parse_args()
    if args.part != "doc":
        import torch

        torch.set_num_threads(args.threads)
    from memaudit import progress

    progress.set_enabled(False)
    if args.part == "a":
        part_a(args.out)
    elif args.part == "b":
        part_b(args.out, args.resolution, args.size)
    elif args.part == "c":
        size = args.size or _load().get("a", {}).get("emm", {}).get("upper")
        if not size:
            parser.error("part c needs --size (or part a's bracket)")
        part_c(args.out, size, args.seeds)
    elif args.part == "point":
        part_point(args.out, args.size, args.labels, args.resolution if args.resolution != 4 or args.lowres else None,
                   args.seed)
    elif args.part == "collect":
        part_collect(args.runs)
    elif args.part == "throughput":
        part_throughput(args.steps, args.cpu_batch)
    render_doc()


if __name__ == "__main__":
    main()
