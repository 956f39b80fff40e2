"""The approximate-search autotuner: the cheapest search setting that reaches a target recall.

Recall is measured against exact search on a sample of the queries only (never a second full pass):
the sample is split in two, settings are chosen on one half and the recall reported is the other,
held-out half's at the chosen setting, so the figure is not flattered by the choice. A setting
qualifies when the lower end of the one-sided 95% Wilson interval of its tuning recall reaches the
target (with 512 tuning queries at k=2 and a 0.99 target: at most 5 of 1,024 neighbours missed): a
setting that merely reaches the target on the tuning queries falls below it on other queries about
half the time, and with the cheapest qualifying setting picked among many, the luckiest one
(measured on 200,000 x 256 clustered vectors: 0.998 on 256 tuning queries, 0.989 on the rest).

recall@k here is the share of the k neighbours found that lie within the exact k-th nearest
distance (the usual |found & true| / k, except that a row tied with a true neighbour counts: a
training set with duplicate images has several equally right answers, and counting ids would call
a tie a miss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

DEFAULT_TARGET_RECALL = 0.99
RECALL_AT = 2  # NN1 and NN2: what the paper's criterion reads
RECALL_SAMPLE = 1024  # queries searched exactly for tuning (half) and the held-out recall (half)
CONFIDENCE_Z = 1.645  # one-sided 95%
PLATEAU = 2  # settings in a row without a gain in recall before the tuner stops looking further


def lower_bound(value: float, slots: int, z: float = CONFIDENCE_Z) -> float:
    """Lower end of the Wilson score interval of a recall ``value`` measured over ``slots`` neighbours."""
    if slots <= 0:
        return 0.0
    denom = 1.0 + z * z / slots
    centre = (value + z * z / (2 * slots)) / denom
    half = z * math.sqrt(max(0.0, value * (1 - value)) / slots + z * z / (4 * slots * slots)) / denom
    return max(0.0, centre - half)


def split_sample(n_queries: int, sample: int = RECALL_SAMPLE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the tuning half and the held-out half of a random sample of the queries (sorted;
    with a single query both halves are that query)."""
    rows = np.sort(np.random.default_rng(seed).choice(n_queries, min(sample, n_queries), replace=False))
    if len(rows) < 2:
        return rows, rows
    return rows[0::2], rows[1::2]


def recall(found_keys: np.ndarray, exact_keys: np.ndarray, k: int) -> float:
    """Share of the first ``k`` neighbours found whose exact key (squared distance, or negated inner
    product: smaller is nearer; both sorted ascending) is no worse than the exact k-th best."""
    k = min(k, found_keys.shape[1], exact_keys.shape[1])
    if len(found_keys) == 0 or k == 0:
        return 1.0
    return float(np.mean(found_keys[:, :k] <= exact_keys[:, k - 1:k]))


@dataclass
class Choice:
    """The setting picked, its recall on the tuning half, and every setting tried."""

    setting: int
    depth: int
    tuning_recall: float
    reached: bool
    tried: list[dict] = field(default_factory=list)


def choose(settings: list[int], depths: list[int], evaluate: Callable[[int], dict[int, np.ndarray]],
           exact_keys: np.ndarray, k: int, target: float, cost: Callable[[int, int], float]) -> Choice:
    """The cheapest (setting, candidate depth) whose recall@k on the tuning queries reaches
    ``target`` at 95% confidence (``lower_bound``; with fewer tuning queries than that can show, a
    recall of 1 is enough).

    ``settings`` go from cheapest (nprobe or ef, ascending); ``evaluate(setting)`` gives, for each
    depth, the exact keys of the k best among that many candidates; ``cost(setting, depth)`` is the
    deterministic cost compared. Settings stop once even the smallest depth costs more than the best
    found, or once ``PLATEAU`` larger settings in a row have not raised the recall at the deepest
    depth. When no setting reaches the target, the one of highest recall (cheapest among equals).
    """
    best: Choice | None = None
    fallback: Choice | None = None
    tried = []
    deepest, flat_for = -1.0, 0
    slots = len(exact_keys) * min(k, exact_keys.shape[1])
    too_few = lower_bound(1.0, slots) < target  # too few queries to show the target: every neighbour found
    for setting in settings:
        if best is not None and cost(setting, min(depths)) >= cost(best.setting, best.depth):
            break
        if flat_for >= PLATEAU:
            break
        found = evaluate(setting)
        for depth in depths:
            value = recall(found[depth], exact_keys, k)
            tried.append({"setting": int(setting), "candidates": int(depth), "recall": round(value, 6),
                          "cost": cost(setting, depth)})
            here = Choice(int(setting), int(depth), value,
                          value >= 1.0 if too_few else lower_bound(value, slots) >= target)
            if here.reached and (best is None or cost(setting, depth) < cost(best.setting, best.depth)):
                best = here
            if fallback is None or value > fallback.tuning_recall:
                fallback = here
        flat_for = flat_for + 1 if value <= deepest else 0  # value: the deepest depth's recall here
        deepest = max(deepest, value)
    chosen = best or fallback
    chosen.tried = tried
    return chosen
