"""The verdict: what a reviewer reads first (the colour, the top line, the CI gate), by one rule.

1. **Exact copies.** A sample whose nearest training image is identical in uint8 pixels, or within
   ``COPY_RMS`` grey levels RMS of it, is a copy whatever its ratio: the paper's nn-ratio is 0/0
   for a copy of an image the training set holds twice, and duplicated images are the ones models
   copy first (Carlini et al. 2023; Somepalli et al. 2023). Copies need no statistical test.
2. **Which criteria may speak.** The headline criterion (the paper's pixel nn-ratio) and every
   other criterion inside the regime its default threshold was set for (``criteria.Regime``) speak
   uncalibrated. With a holdout (``--holdout``), a criterion speaks exactly when its measured
   false-positive rate is at most the target (``--target-fpr``, 1% by default), inside its regime
   or not. Every other criterion is informational: shown, with why, never colouring the verdict.
3. **Evidence beyond chance.** A criterion that speaks says "memorizes" only when its flags are
   more than its false-positive rate explains: the 95% Wilson lower bound of its flagged fraction
   is above that rate (the holdout's measured rate; uncalibrated, 0: each flag counts, as in the
   paper). Below that its flags are shown for review.

The verdict is ``copies`` (rule 1 found one), ``memorizes`` (rule 3 holds for a speaking
criterion) or ``no-evidence``. The gate (``--fail-above``) fails on any copy, and when the share
of memorized samples (the paper's ratio, or the share that copies and the criteria with evidence
flag together, whichever is larger) is above the limit.
"""

from __future__ import annotations

import hashlib

import numpy as np

from memaudit.criteria import CRITERIA, wilson_interval
from memaudit.storage import image_digests

COPY_RMS = 1.0  # grey levels: a sample this close (RMS over its values) to a training image is a copy
DEFAULT_TARGET_FPR = 0.01
VERDICTS = ("copies", "memorizes", "no-evidence")
HEADLINE = ("pixel", "nn-ratio")  # the paper's criterion (Gu et al. 2023): the headline number


# --- 1. exact copies ---------------------------------------------------------------------------


def copy_radius(image_shape) -> float:
    """The uint8 L2 distance within which a sample is a copy: ``COPY_RMS`` grey levels RMS."""
    return COPY_RMS * float(np.sqrt(np.prod(image_shape)))


def digest_groups(digests: np.ndarray) -> dict[bytes, list[int]]:
    """Rows of identical images, by digest (``digests``: (n, 16) uint8, one row an image)."""
    groups: dict[bytes, list[int]] = {}
    for row, digest in enumerate(digests):
        groups.setdefault(digest.tobytes(), []).append(row)
    return groups


def image_digest_array(images: np.ndarray) -> np.ndarray:
    """(n, 16) uint8: a short hash of each image's bytes (``storage.image_digests``)."""
    return np.frombuffer(b"".join(image_digests(images)), np.uint8).reshape(len(images), 16) if len(images) else \
        np.zeros((0, 16), np.uint8)


def find_copies(l2: np.ndarray, indices: np.ndarray, sample_digests: np.ndarray,
                train_groups: dict[bytes, list[int]], radius: float) -> list[tuple[int, bool, list[int]]]:
    """The samples that are copies: (sample, exact, training rows it copies), in sample order.

    A sample is an exact copy when its bytes equal a training image's (found by digest, whatever
    the search returned) and a near-exact copy when its pixel NN1 lies within ``radius``. The rows
    are the whole group it copies: every byte-identical training image, and every searched
    neighbour within ``radius``."""
    near = np.asarray(l2) <= radius
    exact = [train_groups.get(digest.tobytes(), []) for digest in sample_digests]
    copies = []
    for i in np.flatnonzero(near.any(axis=1) | np.array([bool(rows) for rows in exact], bool)):
        rows = sorted(set(exact[i]) | {int(j) for j in indices[i][near[i]]})
        copies.append((int(i), bool(exact[i]) or bool(l2[i, 0] == 0), rows))
    return copies


DIGESTS_VERSION = 1  # part of the digests' cache key: bump when image_digests changes


def training_digests(train) -> np.ndarray:
    """``image_digest_array`` of the training images, cached by the set's content fingerprint (one
    pass over the set the first time; the key covers the images' bytes and the hash's version)."""
    from memaudit.storage import cache_root, write_file_atomic

    if not train.fingerprint:
        return image_digest_array(train.images)
    name = hashlib.sha256(f"{DIGESTS_VERSION}|{train.fingerprint}".encode()).hexdigest()
    path = cache_root() / "digests" / f"{name}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(train), 16) and cached.dtype == np.uint8:
                return cached
        except (OSError, ValueError):
            pass  # unreadable: computed again and rewritten
    digests = image_digest_array(train.images)

    def write(tmp):
        with open(tmp, "wb") as handle:
            np.save(handle, digests, allow_pickle=False)

    write_file_atomic(path, write)
    return digests


def training_duplicates(train_groups: dict[bytes, list[int]]) -> list[list[int]]:
    """Groups of byte-identical training images (two or more), each in row order."""
    return sorted((rows for rows in train_groups.values() if len(rows) > 1), key=lambda rows: rows[0])


# --- 2 and 3. which criteria speak, and whether their flags are evidence ------------------------


def standing(space: str, name: str, summary: dict, image_shape, target_fpr: float) -> dict:
    """How one criterion stands in the verdict: ``speaks`` (may colour it), ``why`` (a sentence
    when informational), ``null_fpr`` (the rate its flags are tested against) and ``evidence``
    (its flags are more than that rate explains)."""
    calibrated = summary.get("fpr") is not None
    if calibrated:
        fpr = float(summary["fpr"])
        speaks = fpr <= target_fpr
        why = None if speaks else (f"its false-positive rate on the held-out images, {fpr:.1%}, is above the "
                                   f"target {target_fpr:.1%}")
    elif (space, name) == HEADLINE:
        fpr, speaks, why = 0.0, True, None
    else:
        fpr = 0.0
        why = CRITERIA[name].regime.outside(image_shape, space)
        speaks = why is None
        if why is not None:
            why += "; give --holdout to calibrate it"
    low = wilson_interval(summary["memorized"], summary["n"])[0]
    evidence = speaks and summary["memorized"] > 0 and low > fpr
    return {"speaks": speaks, "why": why, "null_fpr": fpr, "evidence": bool(evidence),
            "regime": CRITERIA[name].regime.set_for}


def decide(spaces: dict, flags: dict, copies: list[tuple[int, bool, list[int]]], seeds: np.ndarray,
           train_ids: list[str], image_shape, target_fpr: float, fail_above: float | None,
           duplicate_groups: list[list[int]]) -> tuple[dict, dict]:
    """audit.json's ``headline`` and ``gate``.

    ``spaces`` are the spaces' summaries (their criteria gain ``standing``, in place); ``flags``
    the per-sample memorized flags by (space, criterion); ``copies`` from ``find_copies``;
    ``duplicate_groups`` the training set's groups of identical images."""
    n = len(seeds)
    paper = spaces[HEADLINE[0]]["criteria"][HEADLINE[1]]
    memorized = np.zeros(n, bool)
    others, informational = [], []
    for space, summary in spaces.items():
        for name, criterion in summary["criteria"].items():
            criterion["standing"] = standing(space, name, criterion, image_shape, target_fpr)
            stand = criterion["standing"]
            if stand["evidence"]:
                memorized |= flags[(space, name)]
            if (space, name) == HEADLINE or not criterion["memorized"]:
                continue
            entry = {"space": space, "criterion": name, "memorized": criterion["memorized"], "n": criterion["n"],
                     "fraction": criterion["fraction"], "threshold": criterion["threshold"],
                     "memorized_when": criterion.get("memorized_when", "below"), "evidence": stand["evidence"]}
            (others if stand["speaks"] else informational).append(
                entry if stand["speaks"] else {**entry, "why": stand["why"], "calibrated": criterion.get("fpr") is not None})
    # criteria not computed (--criteria, or by default where they could not speak): named, never 0 flagged
    missing = [{"space": space, "criterion": name, "why": entry["why"], "could_speak": entry["could_speak"]}
               for space, summary in spaces.items() for name, entry in (summary.get("not_computed") or {}).items()]
    copy_rows = [i for i, _, _ in copies]
    memorized[copy_rows] = True
    exact_copies = [{"sample": int(i), "seed": None if seeds[i] < 0 else int(seeds[i]), "exact": exact,
                     "train_ids": [train_ids[r] for r in rows]} for i, exact, rows in copies]
    if copies:
        verdict = "copies"
    elif any(c["standing"]["evidence"] for s in spaces.values() for c in s["criteria"].values()):
        verdict = "memorizes"
    else:
        verdict = "no-evidence"
    fraction = max(paper["fraction"], float(memorized.mean()) if n else 0.0)
    dedup = spaces[HEADLINE[0]]["criteria"].get("nn-ratio-dedup")
    headline = {
        "space": HEADLINE[0], "criterion": HEADLINE[1], "memorized": paper["memorized"], "n": paper["n"],
        "fraction": paper["fraction"], "ci95": paper["ci95"], "threshold": paper["threshold"],
        "fpr": paper.get("fpr"),
        "verdict": verdict, "reason": _reason(verdict, copies, spaces, paper, target_fpr, missing),
        "exact_copies": exact_copies, "copy_rms": COPY_RMS,
        "memorized_any": int(memorized.sum()), "memorized_any_fraction": fraction,
        "target_fpr": target_fpr,
        "duplicate_aware": None if dedup is None else {k: dedup[k] for k in ("memorized", "n", "fraction", "ci95")},
        "training_duplicate_groups": len(duplicate_groups),
        "others_flagging": others, "informational": informational, "not_computed": missing,
    }
    return headline, gate(fail_above, headline)


def gate(fail_above: float | None, headline: dict) -> dict:
    """The release gate of ``--fail-above``: failed by any copy, and by a memorized share (the
    paper's ratio, or what copies and the criteria with evidence flag together) above the limit.
    ``not_computed`` names the criteria it could not count (SPACE/NAME), those that could have
    spoken first marked "(could have spoken)"."""
    copies, fraction = len(headline["exact_copies"]), headline["memorized_any_fraction"]
    missing = [f"{m['space']}/{m['criterion']}" + (" (could have spoken)" if m["could_speak"] else "")
               for m in headline.get("not_computed") or []]
    return {"fail_above": fail_above, "fraction": fraction, "exact_copies": copies, "not_computed": missing,
            "passed": None if fail_above is None else (not copies and fraction <= fail_above)}


def _reason(verdict: str, copies, spaces: dict, paper: dict, target_fpr: float, missing: list | None = None) -> str:
    """The verdict's one sentence: what it rests on (and, when a criterion that could have spoken was
    not computed, that the verdict lacks it)."""
    sentence = _reason_sentence(verdict, copies, spaces, paper, target_fpr)
    unheard = [f"{m['criterion']} ({m['space']})" for m in missing or [] if m["could_speak"]]
    if unheard and verdict != "copies":
        sentence += (f"; not computed, so not heard: {', '.join(unheard)}, which could have spoken "
                     "(--criteria left it out)")
    return sentence


def _reason_sentence(verdict: str, copies, spaces: dict, paper: dict, target_fpr: float) -> str:
    if verdict == "copies":
        exact = sum(1 for _, e, _ in copies if e)
        kinds = [f"{count} {kind}" for count, kind in ((exact, "byte-identical"),
                                                       (len(copies) - exact, f"within {COPY_RMS:g} grey level RMS"))
                 if count]
        return (f"{len(copies)} sample{'s are copies' if len(copies) != 1 else ' is a copy'} of training images "
                f"({', '.join(kinds)})")
    if verdict == "memorizes":
        speaking = [f"{name} ({space})" for space, s in spaces.items() for name, c in s["criteria"].items()
                    if c["standing"]["evidence"]]
        whose = "its" if len(speaking) == 1 else "each one's"
        return (f"flagged by {', '.join(speaking)} beyond what {whose} false-positive rate explains "
                "(95% Wilson lower bound of the flagged share above it)")
    if paper["memorized"]:
        return (f"the paper's criterion flags {paper['memorized']} of {paper['n']}, no more than its measured "
                "false-positive rate explains")
    return "no copy of a training image, and no criterion allowed to speak flags a sample"


def evidence_order(n: int, copies, flags: dict, spaces: dict, ratio: np.ndarray) -> np.ndarray:
    """Samples from the strongest evidence to the weakest: copies, then samples flagged by a criterion
    with evidence, then by one that speaks, then the rest; within each, the paper's nn ratio, lowest
    first (ties by sample)."""
    tier = np.full(n, 3)
    for (space, name), flagged in flags.items():
        stand = spaces[space]["criteria"][name]["standing"]
        if stand["speaks"]:
            tier[flagged] = np.minimum(tier[flagged], 1 if stand["evidence"] else 2)
    tier[[i for i, _, _ in copies]] = 0
    return np.lexsort((np.arange(n), ratio, tier))
