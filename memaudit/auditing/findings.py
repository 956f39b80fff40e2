"""What an audit shows beyond its figures: the findings of the report (samples with their training
neighbours, the strongest evidence first), the per-sample table and the warnings about training-set
duplicates. The verdict itself (headline, gate) is ``memaudit.verdict``'s."""

from __future__ import annotations

import numpy as np

from memaudit import outputs
from memaudit.criteria import CRITERIA
from memaudit.data import ImageSet


def collect_findings(images, seeds, conditions, train: ImageSet, results: dict, top: int,
              flagged_seeds: list[int] | None, order: np.ndarray, copies: list, spaces: dict) -> list[dict]:
    """Samples to show, each with an inline thumbnail, the training images its score refers to, and
    its nearest training image in every other space: first the ``top`` samples of ``order`` (the
    strongest evidence first: copies, then flagged samples, by the paper's pixel nn ratio), then,
    for every other space and criterion, up to ``top`` of the samples it flags, copies first, then
    most memorized. ``space`` and ``criterion`` say which list a finding belongs to; ``score`` is
    its score there; ``flagged_by`` every space/criterion that flags the sample; ``copy`` the
    training images it copies (``verdict.find_copies``). ``flagged_seeds``: samples a pipeline's
    safety checker flagged, marked as such."""
    safety_flagged = set(flagged_seeds or [])
    copy_of = {i: {"exact": exact, "train_ids": [train.ids[r] for r in rows]} for i, exact, rows in copies}
    pixel = results["pixel"]
    verdicts = pixel.verdicts["nn-ratio"]
    flagged_by = [[f"{name}/{c}" for name, r in results.items() for c, v in r.verdicts.items() if v.memorized[i]]
                  for i in range(len(images))]

    def neighbour(result, i, rank, index=None):
        """Training image ``index`` (default: the rank-th neighbour) with its L2 distance to sample i;
        computed directly when the search did not return it (tiled-l2's nearest can lie beyond)."""
        column = rank
        if index is not None:
            hits = np.nonzero(result.indices[i] == index)[0]
            column = int(hits[0]) if len(hits) else None
        index = int(result.indices[i, rank]) if index is None else index
        distance = (float(result.l2[i, column]) if column is not None else
                    float(np.sqrt(((images[i].astype(np.float64) - train.images[index]) ** 2).sum())))
        return {"rank": rank + 1, "index": int(index), "id": train.ids[index],
                "label": None if train.labels is None else int(train.labels[index]),
                "caption": None if train.captions is None else train.captions[index],
                "distance": distance, "image": outputs.png_data_uri(train.images[index])}

    def finding(i, space, verdict, neighbors):
        return {
            "sample": int(i), "seed": None if seeds[i] < 0 else int(seeds[i]),
            "image": outputs.png_data_uri(images[i]),
            "label": conditions["labels"][i] if "labels" in conditions else None,
            "prompt": conditions["prompts"][i] if "prompts" in conditions else None,
            "safety_flagged": int(seeds[i]) in safety_flagged if flagged_seeds is not None else None,
            "space": space, "criterion": verdict.criterion,
            "ratio": float(verdicts.scores[i]), "score": float(verdict.scores[i]),
            "threshold": float(verdict.threshold), "memorized": bool(verdict.memorized[i]),
            "flagged_by": flagged_by[i],
            "source_duplicated": bool(pixel.duplicates[i, 1:].any()),
            "copy": copy_of.get(int(i)),
            "speaks": spaces[space]["criteria"][verdict.criterion]["standing"]["speaks"],
            "neighbors": neighbors,
            "other_spaces": {name: {**neighbour(r, i, 0), "memorized": {c: bool(v.memorized[i]) for c, v in r.verdicts.items()}}
                             for name, r in results.items() if name != "pixel"},
        }

    findings = [finding(i, "pixel", verdicts, [neighbour(pixel, i, 0), neighbour(pixel, i, 1)]) for i in order[:top]]
    copied = np.zeros(len(images), bool)
    copied[list(copy_of)] = True
    for name, result in results.items():
        for criterion, verdict in result.verdicts.items():
            if (name, criterion) == ("pixel", "nn-ratio") or not verdict.memorized.any():
                continue
            flagged = np.nonzero(verdict.memorized)[0]
            key = verdict.scores[flagged] if CRITERIA[criterion].memorized_below else -verdict.scores[flagged]
            for i in flagged[np.lexsort((flagged, key, ~copied[flagged]))][:top]:
                findings.append(finding(i, name, verdict, [neighbour(result, i, 0, index=int(verdict.nn[i]))]))
    return findings


def per_sample_table(seeds, distances, indices, verdicts, all_verdicts: dict, ids: list[str],
                     conditions: dict | None = None) -> dict:
    """Every sample's neighbours and verdict, columnar, for the report's full table; then each other
    pixel criterion's score and verdict; then, for a text-to-image model, each sample's prompt and
    ``prompt_index`` (the training row whose caption, or the file prompt, its seed drew). Training
    images are named by their ``ids``, as everywhere on the page (neighbors.csv keeps the 0-based rows)."""
    others = [v for name, v in all_verdicts.items() if name != "nn-ratio"]
    rows = [
        [i, None if seeds[i] < 0 else int(seeds[i]), ids[indices[i, 0]], round(float(distances[i, 0]), 4),
         ids[indices[i, 1]], round(float(distances[i, 1]), 4), round(float(verdicts.scores[i]), 6),
         bool(verdicts.memorized[i])]
        + [value for v in others for value in (round(float(v.scores[i]), 6), bool(v.memorized[i]))]
        for i in range(len(seeds))
    ]
    columns = ["sample", "seed", "nn1", "d1", "nn2", "d2", "ratio", "memorized"]
    columns += [column for v in others for column in (v.criterion, f"{v.criterion} memorized")]
    conditions = conditions or {}
    if "prompts" in conditions:
        indices_drawn = conditions.get("prompt_index")
        for i, row in enumerate(rows):
            row += [str(conditions["prompts"][i]), None if indices_drawn is None else int(indices_drawn[i])]
        columns += ["prompt", "prompt_index"]
    return {"columns": columns, "rows": rows}


def duplicate_warnings(groups: list[list[int]], train: ImageSet, pixel) -> list[str]:
    """What the training set's duplicates do to the paper's criterion, for audit.json's warnings."""
    warnings = []
    if groups:
        shown = "; ".join(", ".join(train.ids[r] for r in rows) for rows in groups[:3])
        warnings.append(
            f"the training set holds {len(groups)} group{'s' if len(groups) != 1 else ''} of byte-identical images "
            f"({sum(len(g) for g in groups)} images: {shown}{'; ...' if len(groups) > 3 else ''}); the paper's nn-ratio "
            "cannot flag a copy of any of them (d1 = d2 = 0, a ratio of 0/0): such copies are found by the exact-copy "
            "rule, and the duplicate-aware ratio (nn-ratio-dedup) is shown beside the paper's")
    near = pixel.summary["duplicates"]["samples_whose_nn1_is_duplicated"]
    if near:
        warnings.append(f"the nearest training image of {near} sample{'s' if near != 1 else ''} has a near-duplicate in "
                        "the training set: the paper's nn-ratio reads such a sample as not memorized even when it "
                        "copies it; see nn-ratio-dedup")
    return warnings
