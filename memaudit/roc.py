"""How well a membership score separates members from non-members: ROC, AUC, TPR at low FPR.

Scores follow one convention everywhere: higher means "more likely a member". The ROC is exact
(one point per distinct score, ties moved together), the AUC is the Mann-Whitney statistic
(a tie counts one half), and its 95% interval is DeLong et al. (1988)'s, from midranks.
TPR at a target FPR follows Carlini et al. (2022, "Membership inference attacks from first
principles"): the best TPR among thresholds whose FPR does not exceed the target; with N
non-members the smallest non-zero FPR is 1/N, so a target below it is reported with
``supported: false``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

FPR_TARGETS = (0.01, 0.001)


def roc_curve(members: np.ndarray, nonmembers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): flag ``score >= threshold``, thresholds from +inf down to the lowest score."""
    members, nonmembers = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    thresholds = np.unique(np.concatenate([members, nonmembers]))[::-1]
    sorted_m, sorted_n = np.sort(members), np.sort(nonmembers)
    # count of scores >= threshold, for every threshold at once
    tp = len(sorted_m) - np.searchsorted(sorted_m, thresholds, side="left")
    fp = len(sorted_n) - np.searchsorted(sorted_n, thresholds, side="left")
    fpr = np.concatenate([[0.0], fp / len(sorted_n)])
    tpr = np.concatenate([[0.0], tp / len(sorted_m)])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """P(member score > non-member score) + P(tie) / 2 (the Mann-Whitney U over n_m * n_n)."""
    members, nonmembers = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    ranks = rankdata(np.concatenate([members, nonmembers]))  # midranks: ties count one half
    n_m, n_n = len(members), len(nonmembers)
    return float((ranks[:n_m].sum() - n_m * (n_m + 1) / 2) / (n_m * n_n))


def auc_interval(members: np.ndarray, nonmembers: np.ndarray, z: float = 1.959964) -> tuple[float, float]:
    """DeLong's 95% interval of the AUC (structural components from midranks), clipped to [0, 1]."""
    members, nonmembers = np.asarray(members, np.float64), np.asarray(nonmembers, np.float64)
    n_m, n_n = len(members), len(nonmembers)
    value = auc(members, nonmembers)
    if n_m < 2 or n_n < 2:
        return (0.0, 1.0)
    combined = rankdata(np.concatenate([members, nonmembers]))
    v10 = (combined[:n_m] - rankdata(members)) / n_n  # share of non-members each member beats
    v01 = 1.0 - (combined[n_m:] - rankdata(nonmembers)) / n_m  # share of members that beat each non-member
    se = math.sqrt(np.var(v10, ddof=1) / n_m + np.var(v01, ddof=1) / n_n)
    return (max(0.0, value - z * se), min(1.0, value + z * se))


def tpr_at_fpr(members: np.ndarray, nonmembers: np.ndarray, target: float) -> dict:
    """The best TPR whose FPR is at most ``target``, with the non-member count behind it."""
    fpr, tpr, thresholds = roc_curve(members, nonmembers)
    allowed = fpr <= target + 1e-12
    best = int(np.flatnonzero(allowed)[np.argmax(tpr[allowed])])
    n = len(nonmembers)
    threshold = float(thresholds[best])
    return {"fpr": target, "tpr": float(tpr[best]), "threshold": threshold if math.isfinite(threshold) else None,
            "false_positives_allowed": int(math.floor(target * n + 1e-9)), "nonmembers": n,
            "supported": target * n >= 1.0}


def p_values(scores: np.ndarray, nonmembers: np.ndarray) -> np.ndarray:
    """One-sided empirical p-value of each score against the non-member scores:
    (1 + #{non-member >= score}) / (1 + N), valid for an exchangeable non-member (Phipson & Smyth 2010)."""
    ordered = np.sort(np.asarray(nonmembers, np.float64))
    at_least = len(ordered) - np.searchsorted(ordered, np.asarray(scores, np.float64), side="left")
    return (1.0 + at_least) / (1.0 + len(ordered))


def summary(members: np.ndarray, nonmembers: np.ndarray, max_points: int = 2000) -> dict:
    """AUC with its interval, TPR at each of ``FPR_TARGETS``, and the ROC thinned to ``max_points``."""
    fpr, tpr, _ = roc_curve(members, nonmembers)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), max_points)).round().astype(int))
    return {"auc": auc(members, nonmembers), "auc_ci95": list(auc_interval(members, nonmembers)),
            "tpr_at_fpr": [tpr_at_fpr(members, nonmembers, target) for target in FPR_TARGETS],
            "n_members": int(len(members)), "n_nonmembers": int(len(nonmembers)),
            "roc": {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}}
