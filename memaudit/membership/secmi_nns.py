"""SecMI_NNs, the learned variant of SecMI (Duan et al., ICML 2023, section 4.2 and ``secmia.py``'s
``nns_attack``).

Each image's feature is SecMI's error map at t = t_sec - k, the element-wise |x_t - x_t'| (the
model-space tensor, C x H x W, as ``split_nn_datasets`` builds it for one step). A ResNet-18 (the
CIFAR form: 3x3 stem, no max-pool, stages of 64/128/256/512 channels, two basic blocks each, global
average pool, one output) is trained to regress the label (member 1, non-member 0) with a squared
error, SGD (lr 1e-3, momentum 0.9, weight decay 5e-4), batches of 128, 15 epochs, on
``train_fraction`` of the members and of the non-members (0.2, as ``execute_attack`` calls
``nns_attack(..., train_portion=0.2)``); its output on the other images is their score (higher =
member), and only those images are evaluated. The authors take the first images of each split
and keep the checkpoint of the "best" test accuracy, a variable their loop never updates, so the
last epoch's weights are what they evaluate; memaudit draws the split at random from ``seed``
(recorded in mia.json with the ids of the training images) and evaluates the last epoch's
weights, so nothing is chosen on the evaluated half.
"""

from __future__ import annotations

import numpy as np

from memaudit.errors import InputError

from .base import Attack
from .secmi import error_maps


def features(predictor, x0, conditions, settings: dict) -> np.ndarray:
    """|x_t - x_t'| at t_sec of each image, float32 [B, C, H, W]."""
    return error_maps(predictor, x0, conditions, [int(settings["t_sec"])], int(settings["k"]))[0].abs().float().cpu().numpy()


def scan(predictor, x0, conditions, settings: dict, timesteps: list[int]) -> np.ndarray:
    maps = error_maps(predictor, x0, conditions, timesteps, int(settings["k"]))
    return np.stack([m.abs().float().cpu().numpy() for m in maps])


def resnet18(channels: int):
    """ResNet-18 (He et al. 2016) in its CIFAR form, with one output."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Sequential() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    layers, cin = [nn.Conv2d(channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1))


def split(n_members: int, n_nonmembers: int, fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Training rows of each set: ``int(fraction * n)`` of each, drawn by ``seed`` (sorted)."""
    rng = np.random.default_rng(int(seed))
    chosen = {}
    for role, n in (("member", n_members), ("nonmember", n_nonmembers)):
        take = int(n * float(fraction))
        if take < 1 or take >= n:
            raise InputError(f"--setting secmi-nns.train_fraction={fraction}: leaves {take} of {n} {role}s to train on "
                             f"and {n - take} to evaluate; each needs at least one")
        chosen[role] = np.sort(rng.permutation(n)[:take])
    return chosen


def fit_and_score(members: np.ndarray, nonmembers: np.ndarray, settings: dict, device="cpu") -> dict:
    """Train on the drawn part of ``members``/``nonmembers`` (features [N, C, H, W]); score the rest.
    Returns the training rows and the scores of the held-out rows of each set."""
    import torch

    train = split(len(members), len(nonmembers), settings["train_fraction"], settings["seed"])
    held = {role: np.setdiff1d(np.arange(n), train[role]) for role, n in (("member", len(members)), ("nonmember", len(nonmembers)))}
    x = torch.from_numpy(np.concatenate([members[train["member"]], nonmembers[train["nonmember"]]])).float()
    y = torch.cat([torch.ones(len(train["member"])), torch.zeros(len(train["nonmember"]))])
    torch.manual_seed(int(settings["seed"]))
    generator = torch.Generator().manual_seed(int(settings["seed"]))
    net = resnet18(x.shape[1]).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    batch = 128
    with torch.enable_grad():
        for _ in range(int(settings["epochs"])):
            net.train()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), batch):
                rows = order[start:start + batch]
                if len(rows) < 2 and len(x) >= 2:  # BatchNorm needs two images; fold a lone last one into the batch
                    rows = order[start - 1:start + batch]
                loss = ((net(x[rows].to(device)).squeeze(1) - y[rows].to(device)) ** 2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    net.eval()
    scores = {}
    with torch.no_grad():
        for role, data in (("member", members), ("nonmember", nonmembers)):
            rows = torch.from_numpy(data[held[role]]).float()
            scores[role] = np.concatenate([net(rows[s:s + batch].to(device)).squeeze(1).double().cpu().numpy()
                                           for s in range(0, len(rows), batch)]) if len(rows) else np.zeros(0)
    return {"train": train, "held": held, "scores": scores}


ATTACK = Attack("secmi-nns", "Duan et al., ICML 2023 (SecMI_NNs)", features,
                {"t_sec": 100, "k": 10, "train_fraction": 0.2, "seed": 0, "epochs": 15},
                lambda s: int(s["t_sec"]) // int(s["k"]) + 1, timestep_key="t_sec",
                timestep_source="Duan et al. 2023 and their secmia.py (--t_sec 100 --k 10)",
                scan_function=scan, fit=fit_and_score)
