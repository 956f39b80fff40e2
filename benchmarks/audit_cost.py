"""What a whole audit costs beside the question it answers: ``memaudit audit --samples S.npz --train
T.npz`` (pixel space, cold cache, one process per run, as a user types it) against a bare
numpy/faiss script computing the same nn-ratio verdicts (the paper's criterion, d1/d2 < 1/3), at
several training-set sizes, in one run. The flagged sets must be identical (asserted).

Every size is measured on two kinds of data:
- ``photo``: 32x32x3 crops of the photographs that ship with scikit-learn (``load_sample_images``)
  and of its digits upscaled and tinted, each with jitter (shift, gain, noise): CIFAR-like images;
- ``random``: uniform random pixels (the worst case of tiled-l2's pruning bound).
The 1,000 samples are new images of the same kind, except a few exact copies and near copies
(a grey level or two of noise) of training images, so that something is flagged.

For each (size, kind): the bare script, ``memaudit audit`` with the default options, and
``memaudit audit --criteria all --quality exact`` (its own cost), each with an empty cache folder
(cold: the training set is decoded, hashed and its features computed from scratch). Prints one
JSON object; ``ratio_default`` is memaudit's wall time over the script's (the target: at most 2).

Beside it, the quality figures' cost by --quality mode (``quality_cost``: exact with the training
set's self-k-NN radii computed cold and read warm, and fast) on pixel-16 features.

    python benchmarks/audit_cost.py [--sizes 5000,20000,80000] [--samples 1000] [--kinds photo,random]
                                    [--quality-sizes 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import library_version  # noqa: E402

SIDE = 32

# The bare script: what a researcher writes to get the paper's ratio (Gu et al. 2023) with faiss.
BARE_SCRIPT = r'''
import sys, json
import numpy as np, faiss
samples = np.load(sys.argv[1])["images"].reshape(-1, 3072).astype(np.float32)
train = np.load(sys.argv[2])["images"].reshape(-1, 3072).astype(np.float32)
index = faiss.IndexFlatL2(train.shape[1])
index.add(train)
d2, idx = index.search(samples, 2)
d = np.sqrt(np.maximum(d2, 0))
with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(d[:, 1] > 0, d[:, 0] / np.where(d[:, 1] > 0, d[:, 1], 1), 1.0)
flagged = np.flatnonzero(ratio < 1 / 3)
print(json.dumps({"memorized": int(len(flagged)), "ratio": float(len(flagged) / len(samples)),
                  "flagged": flagged.tolist()}))
'''


def _photo_sources() -> list[np.ndarray]:
    from sklearn.datasets import load_digits, load_sample_images

    photos = [np.asarray(image, np.float32) for image in load_sample_images().images]
    digits = load_digits().images.astype(np.float32) * (255.0 / 16.0)  # 8x8, 0..16
    return photos, digits


def photo_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """n CIFAR-like 32x32x3 uint8 images: crops of sklearn's photographs (three in four) and its
    digits upscaled 4x and tinted (one in four), each with a random gain, offset and noise (kept
    below saturation, so that no two images are byte-identical by clipping)."""
    photos, digits = _photo_sources()
    out = np.empty((n, SIDE, SIDE, 3), np.float32)
    kind = rng.random(n) < 0.75
    for i in range(n):
        if kind[i]:
            photo = photos[rng.integers(len(photos))]
            scale = int(rng.integers(1, 4))  # crops of 32, 64 or 96 pixels, subsampled to 32
            size = SIDE * scale
            y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
            crop = photo[y:y + size:scale, x:x + size:scale]
            out[i] = crop[:, ::-1] if rng.random() < 0.5 else crop
        else:
            digit = np.kron(digits[rng.integers(len(digits))], np.ones((4, 4), np.float32))
            digit = np.roll(digit, rng.integers(-2, 3, 2), axis=(0, 1))
            out[i] = digit[..., None] * rng.uniform(0.3, 0.8, 3).astype(np.float32) + rng.uniform(0, 40, 3)
    out *= rng.uniform(0.7, 0.9, (n, 1, 1, 1)).astype(np.float32)
    out += rng.uniform(5, 20, (n, 1, 1, 1)).astype(np.float32)
    out += rng.normal(0, 3, out.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def random_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)


KINDS = {"photo": photo_images, "random": random_images}


def make_sets(kind: str, n_train: int, n_samples: int, folder: Path, seed: int = 0) -> tuple[Path, Path, int]:
    """T.npz and S.npz: the samples are new images of the same kind, except 1% exact copies and 1%
    near copies (noise of a grey level or two) of training images."""
    rng = np.random.default_rng(seed)
    train = KINDS[kind](rng, n_train)
    samples = KINDS[kind](rng, n_samples)
    copies = max(1, n_samples // 100)
    rows = rng.choice(n_train, 2 * copies, replace=False)
    samples[:copies] = train[rows[:copies]]
    noise = rng.integers(-2, 3, (copies, SIDE, SIDE, 3))
    samples[copies:2 * copies] = np.clip(train[rows[copies:]].astype(np.int16) + noise, 0, 255).astype(np.uint8)
    t_path, s_path = folder / f"T-{kind}-{n_train}.npz", folder / f"S-{kind}-{n_train}.npz"
    np.savez(t_path, images=train)
    np.savez(s_path, images=samples)
    return s_path, t_path, 2 * copies


def _timed(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, done


def memaudit_run(s_path: Path, t_path: Path, out: Path, extra: list[str], env: dict) -> dict:
    cache = out.parent / (out.name + "-cache")
    shutil.rmtree(cache, ignore_errors=True)
    command = [sys.executable, "-m", "memaudit", "audit", "--samples", str(s_path), "--train", str(t_path),
               "--out", str(out), "--cache-dir", str(cache), "--quiet", *extra]
    elapsed, _ = _timed(command, env)
    audit = json.loads((out / "audit.json").read_text())
    rows = audit["spaces"]["pixel"]["per_sample"]
    column = rows["columns"].index("memorized")
    flagged = [i for i, row in enumerate(rows["rows"]) if row[column]]
    shutil.rmtree(cache, ignore_errors=True)
    return {"wall_s": round(elapsed, 3), "timings": audit["provenance"]["timings"], "flagged": flagged,
            "verdict": audit["headline"]["verdict"], "criteria": sorted(audit["spaces"]["pixel"]["criteria"]),
            "not_computed": sorted((audit["spaces"]["pixel"].get("not_computed") or {})),
            "quality": (audit["spaces"]["pixel"].get("quality") or {}).get("mode")}


def quality_cost(kind: str, size: int, n_samples: int, folder: Path) -> dict:
    """The quality figures' cost by mode on pixel-16 features (768 values: the 32x32x3 native pixel
    space is above quality's dimension limit), called directly: ``exact`` cold (the training set's
    self-k-NN radii computed: the O(N^2) part) and warm (read from the cache), and ``fast``."""
    from memaudit.quality import quality

    rng = np.random.default_rng(1)
    images = KINDS[kind](rng, size + n_samples).astype(np.float32)
    features = images.reshape(len(images), 16, 2, 16, 2, 3).mean(axis=(2, 4)).reshape(len(images), -1)
    train, samples = features[:size], features[size:]
    cache = folder / f"radii-{kind}-{size}"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    timings = {}
    for label, mode in (("exact_cold_s", "exact"), ("exact_warm_s", "exact"), ("fast_cold_s", "fast")):
        start = time.perf_counter()
        figures = quality(train, samples, (cache, f"bench-{kind}-{size}"), mode)
        timings[label] = round(time.perf_counter() - start, 3)
        timings[label.replace("_s", "_points")] = figures["points"]
    shutil.rmtree(cache, ignore_errors=True)
    return {"kind": kind, "train": size, "samples": n_samples, "dimension": int(features.shape[1]), **timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,20000,80000", help="training-set sizes, comma-separated")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--kinds", default="photo,random", help=f"data kinds: {', '.join(KINDS)}")
    parser.add_argument("--no-all", action="store_true", help="skip the --criteria all --quality exact runs")
    parser.add_argument("--quality-sizes", default="5000",
                        help="training-set sizes at which the quality figures are timed by mode (exact is "
                             "O(N^2): 20000 takes minutes on 2 cores); empty: none")
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    scratch = Path(args.dir or tempfile.mkdtemp(prefix="audit-cost-"))
    scratch.mkdir(parents=True, exist_ok=True)
    script = scratch / "bare_nn_ratio.py"
    script.write_text(BARE_SCRIPT)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    rows = []
    try:
        for kind in kinds:
            for size in sizes:
                s_path, t_path, planted = make_sets(kind, size, args.samples, scratch)
                bare_s, done = _timed([sys.executable, str(script), str(s_path), str(t_path)], env)
                bare = json.loads(done.stdout)
                default = memaudit_run(s_path, t_path, scratch / f"run-{kind}-{size}", [], env)
                if default["flagged"] != bare["flagged"]:
                    raise SystemExit(f"{kind} {size}: memaudit flags {default['flagged']}, the script {bare['flagged']}")
                row = {"kind": kind, "train": size, "samples": args.samples, "planted_copies": planted,
                       "memorized": len(bare["flagged"]), "script_s": round(bare_s, 3),
                       "memaudit_default": {k: v for k, v in default.items() if k != "flagged"},
                       "ratio_default": round(default["wall_s"] / bare_s, 3)}
                if not args.no_all:
                    full = memaudit_run(s_path, t_path, scratch / f"run-{kind}-{size}-all",
                                        ["--criteria", "all", "--quality", "exact"], env)
                    assert full["flagged"] == bare["flagged"], (kind, size)
                    row["memaudit_all_exact"] = {k: v for k, v in full.items() if k != "flagged"}
                    row["ratio_all_exact"] = round(full["wall_s"] / bare_s, 3)
                rows.append(row)
                for path in (s_path, t_path):
                    path.unlink()
        quality_rows = [quality_cost(kinds[0], int(size), args.samples, scratch)
                        for size in args.quality_sizes.split(",") if size.strip()]
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    import faiss

    print(json.dumps({
        "benchmark": "audit_cost", "library": library_version(), "python": platform.python_version(),
        "faiss": faiss.__version__, "cpus": os.cpu_count(), "load": os.getloadavg(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "target": "memaudit_default.wall_s / script_s <= 2 at every size",
        "rows": rows,
        "quality_cost": quality_rows,
        "within_2x": all(r["ratio_default"] <= 2.0 for r in rows),
    }, indent=1))


if __name__ == "__main__":
    main()
