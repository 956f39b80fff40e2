"""Run under torchrun by test_distributed.py: one DDPM trained by all ranks together (data parallel).

    torchrun --standalone --nproc_per_node N tests/ddp_worker.py OUT_DIR

The recipe is ``DDP_RECIPE`` below; the test trains the same recipe in one process and compares.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from memaudit import distributed
from memaudit.denoisers.architectures import Architecture
from memaudit.data import load_image_set
from memaudit.retraining.training import TrainConfig, train_ddpm

# no dropout (each rank would draw other masks than one process does); a batch of 9 splits 5 + 4,
# which checks that uneven shares still average to the single-process loss. Few steps: Adam's
# normalised updates turn rounding differences in near-zero gradients into whole steps, so two
# runs that agree to 3e-6 after one step drift apart (7e-5 after two, 7e-4 after 12) without any
# error, while averaging the ranks' mean losses instead (wrong for 5 + 4) is off by 8e-4 at once.
DDP_RECIPE = TrainConfig(steps=2, batch_size=9, warmup_steps=3, seed=5, arch=Architecture(width=8, multipliers=(1, 2), depth=1),
                         ema_warmup=True, checkpoint_every=1, snapshot_steps=(1,))


def train(out: Path):
    digits = load_image_set("digits:20")
    return train_ddpm(digits.images, out / "model", DDP_RECIPE, "cpu", labels=digits.labels, num_classes=10,
                      checkpoint=out / "checkpoint.pt", snapshot_dir=out / "snapshots")


if __name__ == "__main__":
    torch.set_num_threads(1)
    world = distributed.init_from_environment()
    result = train(Path(sys.argv[1]))
    if world.is_main:
        np.save(Path(sys.argv[1]) / "world_size.npy", np.array(world.size))
    distributed.shutdown()
