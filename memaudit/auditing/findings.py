"""What an audit says beyond its figures: the headline, the release gate, the findings shown in the
report (samples with their training neighbours) and the per-sample table."""

from __future__ import annotations

import numpy as np

from memaudit import outputs
from memaudit.criteria import CRITERIA
from memaudit.data import ImageSet


def gate(fail_above: float | None, fraction: float) -> dict:
    """The release gate of --fail-above: passed when the memorization ratio is at most the limit."""
    return {"fail_above": fail_above, "passed": None if fail_above is None else fraction <= fail_above}


def headline(spaces: dict) -> dict:
    """What report.html and the CLI lead with: the paper's ratio (pixel nn-ratio), then every other
    space and criterion that flags samples, so "none memorized" is never said while one does."""
    paper = spaces["pixel"]["criteria"]["nn-ratio"]
    others = [{"space": space, "criterion": name, "memorized": c["memorized"], "n": c["n"], "fraction": c["fraction"],
               "threshold": c["threshold"], "memorized_when": c.get("memorized_when", "below")}
              for space, summary in spaces.items() for name, c in summary["criteria"].items()
              if (space, name) != ("pixel", "nn-ratio") and c["memorized"]]
    return {"space": "pixel", "criterion": "nn-ratio", "memorized": paper["memorized"], "n": paper["n"],
            "fraction": paper["fraction"], "others_flagging": others}


def collect_findings(images, seeds, conditions, train: ImageSet, results: dict, top: int,
              flagged_seeds: list[int] | None = None) -> list[dict]:
    """Samples to show, each with an inline thumbnail, the training images its score refers to, and
    its nearest training image in every other space: first the ``top`` samples with the lowest
    pixel nn ratio (the paper's criterion), then, for every other space and criterion, up to
    ``top`` of the samples it flags, most memorized first. ``space`` and ``criterion`` say which
    list a finding belongs to; ``score`` is its score there; ``flagged_by`` every space/criterion
    that flags the sample. ``flagged_seeds``: samples a pipeline's safety checker flagged, marked
    as such."""
    safety_flagged = set(flagged_seeds or [])
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
            "neighbors": neighbors,
            "other_spaces": {name: {**neighbour(r, i, 0), "memorized": {c: bool(v.memorized[i]) for c, v in r.verdicts.items()}}
                             for name, r in results.items() if name != "pixel"},
        }

    order = np.lexsort((np.arange(len(images)), verdicts.scores))[:top]
    findings = [finding(i, "pixel", verdicts, [neighbour(pixel, i, 0), neighbour(pixel, i, 1)]) for i in order]
    for name, result in results.items():
        for criterion, verdict in result.verdicts.items():
            if (name, criterion) == ("pixel", "nn-ratio") or not verdict.memorized.any():
                continue
            flagged = np.nonzero(verdict.memorized)[0]
            key = verdict.scores[flagged] if CRITERIA[criterion].memorized_below else -verdict.scores[flagged]
            for i in flagged[np.lexsort((flagged, key))][:top]:
                findings.append(finding(i, name, verdict, [neighbour(result, i, 0, index=int(verdict.nn[i]))]))
    return findings


def per_sample_table(seeds, distances, indices, verdicts, all_verdicts: dict | None = None) -> dict:
    """Every sample's neighbours and verdict, columnar, for the report's full table; then each other
    pixel criterion's score and verdict."""
    others = [v for name, v in (all_verdicts or {}).items() if name != "nn-ratio"]
    rows = [
        [i, None if seeds[i] < 0 else int(seeds[i]), int(indices[i, 0]), round(float(distances[i, 0]), 4),
         int(indices[i, 1]), round(float(distances[i, 1]), 4), round(float(verdicts.scores[i]), 6),
         bool(verdicts.memorized[i])]
        + [value for v in others for value in (round(float(v.scores[i]), 6), bool(v.memorized[i]))]
        for i in range(len(seeds))
    ]
    columns = ["sample", "seed", "nn1", "d1", "nn2", "d2", "ratio", "memorized"]
    columns += [column for v in others for column in (v.criterion, f"{v.criterion} memorized")]
    return {"columns": columns, "rows": rows}
