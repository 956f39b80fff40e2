"""Seed for seed against the paper's own code: memaudit's samples vs EDM's generate.py and
DiffMemorize's generate_optim.py, run from their own repositories (never copied into memaudit).

    python benchmarks/edm_reference_check.py --edm-dir ~/src/edm --diffmemorize-dir ~/src/DiffMemorize \
        [--seeds 32] [--device cpu|cuda] [--out /tmp/edm-check]

Builds small EDM networks with EDM's own ``training/networks.py`` (VP, VE, EDM and iDDPM
preconditioning, a class-conditional one; weights perturbed from their initialisation so that no
output layer is zero), pickles each as EDM's training loop does, then samples seeds 0..N-1 with
``generate.py`` (its ``main``, on ``--device``; torch.distributed on gloo) and with ``memaudit audit``,
and prints per case how many seeds give identical images and the largest grey-level difference.
``optimal`` is compared with DiffMemorize's ``generate_optim.py`` (its ``OptimEDM``) over the same
EDM dataset zip. Not part of ``make bench``: it needs the two repositories.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

BUILD = textwrap.dedent("""
    import copy, pickle, sys, torch
    sys.path.insert(0, sys.argv[1])
    from training import networks
    out = sys.argv[2]
    unet = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)
    song = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
                channel_mult_noise=1, resample_filter=[1, 1], **unet)
    nets = {
        "vp": lambda: networks.VPPrecond(16, 3, **song),
        "ve": lambda: networks.VEPrecond(16, 3, **{**song, "embedding_type": "fourier", "encoder_type": "residual",
                                                   "channel_mult_noise": 2, "resample_filter": [1, 3, 3, 1]}),
        "edm": lambda: networks.EDMPrecond(16, 3, **song),
        "edm-cond": lambda: networks.EDMPrecond(16, 3, label_dim=10, **song),
        "iddpm": lambda: networks.iDDPMPrecond(16, 3, model_type="DhariwalUNet", model_channels=16, channel_mult=[1, 2],
                                               num_blocks=1, attn_resolutions=[8]),
    }
    for name, build in nets.items():
        torch.manual_seed(1)
        net = build()
        with torch.no_grad():  # stands in for training: zero-initialised output layers would make D trivial
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        ema = copy.deepcopy(net).eval().requires_grad_(False).cpu()
        kwargs = dict(class_name="training.dataset.ImageFolderDataset", path="photos16.zip", use_labels=bool(net.label_dim),
                      xflip=False, cache=True, resolution=16, max_size=200)
        with open(f"{out}/{name}.pkl", "wb") as f:  # what training_loop.py pickles
            pickle.dump(dict(ema=ema, loss_fn=None, augment_pipe=None, dataset_kwargs=kwargs), f)
""")

GENERATE = textwrap.dedent("""
    import importlib, os, sys, torch
    repo, script, network, outdir, seeds, device, options = sys.argv[1:8]
    sys.path.insert(0, repo)
    os.chdir(repo)
    from torch_utils import distributed as dist
    def init():  # gloo instead of nccl, so that it also runs without a GPU
        os.environ.update(MASTER_ADDR="localhost", MASTER_PORT=os.environ.get("MASTER_PORT", "29533"), RANK="0",
                          WORLD_SIZE="1", LOCAL_RANK="0")
        torch.distributed.init_process_group(backend="gloo", init_method="env://")
    dist.init = init
    module = importlib.import_module(script)
    kwargs = dict(num_steps=18, sigma_min=None, sigma_max=None, rho=7, S_churn=0, S_min=0, S_max=float("inf"), S_noise=1,
                  solver=None, discretization=None, schedule=None, scaling=None)
    for item in filter(None, options.split(",")):
        key, value = item.split("=")
        kwargs[key] = int(value) if key == "num_steps" else float(value)
    module.main.callback(network_pkl=network, outdir=outdir, subdirs=False, seeds=list(range(int(seeds))), class_idx=None,
                         max_batch_size=8, device=torch.device(device), **kwargs)
""")

# name, network, generate.py options, memaudit options
EDM_CASES = [
    ("vp", "vp", "", []),
    ("ve", "ve", "", []),
    ("edm", "edm", "", []),
    ("edm-cond", "edm-cond", "", []),
    ("iddpm", "iddpm", "", []),
    ("vp-7-steps-rho-5", "vp", "num_steps=7,rho=5,sigma_min=0.01,sigma_max=50",
     ["--steps", "7", "--sampler-option", "rho=5", "--sampler-option", "sigma_min=0.01", "--sampler-option", "sigma_max=50"]),
    ("edm-churn", "edm", "S_churn=40,S_min=0.05,S_max=50,S_noise=1.003",
     ["--sampler-option", "S_churn=40", "--sampler-option", "S_min=0.05", "--sampler-option", "S_max=50",
      "--sampler-option", "S_noise=1.003"]),
]


def compare(ours: Path, theirs: Path, seeds: int) -> dict:
    from PIL import Image

    a = np.load(ours)["images"]
    b = np.stack([np.array(Image.open(theirs / f"{s:06d}.png")) for s in range(seeds)]).reshape(a.shape)
    difference = np.abs(a.astype(int) - b.astype(int)).reshape(seeds, -1).max(1)
    return {"identical_seeds": int((difference == 0).sum()), "seeds": seeds, "max_grey_levels": int(difference.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edm-dir", type=Path, required=True)
    parser.add_argument("--diffmemorize-dir", type=Path)
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edm-reference-check"))
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "nets").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEMAUDIT_CACHE": str(out / "cache")}
    python = sys.executable
    sys.path.insert(0, str(HERE.parent / "tests"))
    import format_writers

    train = out / "photos16.zip"
    crops = format_writers.photo_crops(200, side=16, seed=0)
    format_writers.write_edm_zip(train, crops, (np.arange(200) % 10).tolist())
    subprocess.run([python, "-c", BUILD, str(args.edm_dir.resolve()), str(out / "nets")], check=True)

    def memaudit(model: str, run: str, *extra: str) -> Path:
        subprocess.run([python, "-m", "memaudit", "audit", model, "--train", str(train), "--out", str(out / run),
                        "--n", str(args.seeds), "--batch-size", "5", "--device", args.device, "--quiet", *extra],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        return out / run / "samples.npz"

    results = {}
    for name, net, options, extra in EDM_CASES:
        pickle_path = out / "nets" / f"{net}.pkl"
        subprocess.run([python, "-c", GENERATE, str(args.edm_dir.resolve()), "generate", str(pickle_path),
                        str(out / "edm" / name), str(args.seeds), args.device, options],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ours = memaudit(str(pickle_path), f"memaudit/{name}", "--trust-checkpoint", "--code-path",
                        str(args.edm_dir.resolve()), *extra)
        results[f"edm generate.py: {name}"] = compare(ours, out / "edm" / name, args.seeds)
    results["edm generate.py: ve, --seeding legacy"] = compare(
        memaudit(str(out / "nets" / "ve.pkl"), "memaudit/ve-legacy", "--trust-checkpoint", "--code-path",
                 str(args.edm_dir.resolve()), "--seeding", "legacy"), out / "edm" / "ve", args.seeds)
    if args.diffmemorize_dir:
        subprocess.run([python, "-c", GENERATE, str(args.diffmemorize_dir.resolve()), "generate_optim", str(train),
                        str(out / "diffmemorize"), str(args.seeds), args.device, ""],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**env, "MASTER_PORT": "29544"})
        results["diffmemorize generate_optim.py: optimal"] = compare(memaudit("optimal", "memaudit/optimal"),
                                                                     out / "diffmemorize", args.seeds)
        results["diffmemorize generate_optim.py: optimal, --seeding legacy"] = compare(
            memaudit("optimal", "memaudit/optimal-legacy", "--seeding", "legacy"), out / "diffmemorize", args.seeds)
    print(json.dumps({"device": args.device, "results": results}, indent=2))


if __name__ == "__main__":
    main()
