"""Whole runs on one process against the same runs on N torchrun ranks, on the same cores.

An audit: the shipped DDIM checkpoint trained on the digits is sampled and audited against the 1797 digits
with a CLIP-architecture feature space (random weights saved to a local file) beside the pixel
space, so generation, feature extraction and search are all split. The single process gets all
the cores as torch threads; each of the N ranks gets cores / N threads (gloo on CPUs, NCCL when
there are GPUs). Prints one JSON object: wall times, their ratio, and whether audit.json (less its
provenance), neighbors.csv and samples.npz are identical (the CLIP features, computed on another number
of threads, may differ in the last bit: see ``identical.audit_json_differing``). All timings come from one run.

    python benchmarks/distributed_audit.py [--n 2000] [--steps 50] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import library_version

TINY_CLIP = {"embed_dim": 64,
             "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 32, "patch_size": 4},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def clip_space(folder: Path) -> str:
    """A clip:CONFIG.json@WEIGHTS space of random weights, loaded through the users' path."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import open_clip
    import torch

    config = folder / "bench-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / "bench-clip.pt"
    torch.save(open_clip.create_model("bench-clip", pretrained=None).state_dict(), weights)
    return f"clip:{config}@{weights}"


def timed(command: list[str], env: dict) -> float:
    tick = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - tick


def differences(a: Path, b: Path) -> dict:
    """Which outputs of the two runs are identical, and the audit.json entries that are not."""
    import numpy as np

    audits = []
    for run in (a, b):
        document = json.loads((run / "audit.json").read_text())
        document.pop("provenance")
        audits.append(document)
    differing = [key for key in audits[0] if audits[0][key] != audits[1][key] and key != "spaces"]
    differing += [f"spaces.{space}.{key}" for space in audits[0]["spaces"] for key in audits[0]["spaces"][space]
                  if audits[0]["spaces"][space][key] != audits[1]["spaces"][space].get(key)]
    with np.load(a / "samples.npz") as x, np.load(b / "samples.npz") as y:
        same_samples = all(np.array_equal(x[k], y[k]) for k in x.files)
    return {"samples": same_samples, "neighbors_csv": (a / "neighbors.csv").read_bytes() == (b / "neighbors.csv").read_bytes(),
            "audit_json_except_provenance": not differing, "audit_json_differing": differing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--emm-epochs", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()

    from memaudit.demo import ASSETS

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        space = clip_space(tmp)
        audit = ["audit", str(ASSETS / "digits-ddim"), "--train", "digits", "--n", str(args.n), "--steps",
                 str(args.steps), "--space", space, "--batch-size", "250", "--quiet"]
        env = {**os.environ, "MEMAUDIT_CACHE": str(tmp / "cache-one"), "OMP_NUM_THREADS": str(cores)}
        one_s = timed([sys.executable, "-m", "memaudit", *audit, "--out", str(tmp / "one")], env)
        env = {**os.environ, "MEMAUDIT_CACHE": str(tmp / "cache-many"),
               "OMP_NUM_THREADS": str(max(1, cores // args.nproc))}
        many_s = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(args.nproc), "-m", "memaudit", "--", *audit, "--out", str(tmp / "many")], env)
        timings = {name: json.loads((tmp / name / "audit.json").read_text())["provenance"]["timings"]
                   for name in ("one", "many")}
        same = differences(tmp / "one", tmp / "many")

        emm = ["emm", "--train", "digits", "--grid", "10,20,40,80", "--start", "10", "--max-size", "80",
               "--seeds", str(args.seeds), "--arch", "tiny", "--width", "16", "--epochs", str(args.emm_epochs),
               "--batch-size", "32", "--n", "200", "--sample-steps", "20", "--quiet"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MEMAUDIT_CACHE": str(tmp / "cache-one")}
        emm_one_s = timed([sys.executable, "-m", "memaudit", *emm, "--out", str(tmp / "emm-one")], env)
        emm_many_s = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            str(args.nproc), "-m", "memaudit", "--", *emm, "--out", str(tmp / "emm-many")], env)
        emm_docs = []
        for name in ("emm-one", "emm-many"):
            document = json.loads((tmp / name / "emm.json").read_text())
            document.pop("provenance")
            emm_docs.append(document)

    print(json.dumps({
        "benchmark": "distributed_runs", "n_samples": args.n, "sampling_steps": args.steps, "train": "digits (1797)",
        "spaces": ["pixel", "clip (ViT, 2 layers, width 128, random weights)"],
        "cores": cores, "nproc": args.nproc,
        "one_process_s": round(one_s, 2), "torchrun_s": round(many_s, 2),
        "speedup_vs_one_process": round(one_s / many_s, 3),
        "stage_timings_s": {"one_process": timings["one"], "torchrun_rank0": timings["many"]},
        # embedding features computed on another number of torch threads can differ in the last bit,
        # which moves only the quality figures (Frechet distance); neighbours and verdicts stay exact
        "identical": same,
        "emm": {"grid": [10, 20, 40, 80], "seeds": args.seeds, "epochs": args.emm_epochs, "threads_per_process": 1,
                "one_process_s": round(emm_one_s, 2), "torchrun_s": round(emm_many_s, 2),
                "speedup_vs_one_process": round(emm_one_s / emm_many_s, 3),
                "bracket": emm_docs[0]["emm"], "identical_emm_json": emm_docs[0] == emm_docs[1]},
        "machine": platform.machine(), "python": platform.python_version(), "memaudit": library_version(),
    }, indent=2))


if __name__ == "__main__":
    main()
