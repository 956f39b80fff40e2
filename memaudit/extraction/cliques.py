"""Carlini et al. (2023, "Extracting training data from diffusion models") section 4's
generate-and-filter attack, which needs no training data.

A model that memorizes an image emits it again and again, nearly unchanged; a generalizing model
does not repeat itself. Generate many samples (grouped by what each was conditioned on: one group
for an unconditional model, one per class label or prompt otherwise), link two generations of a
group when their tiled L2 distance is at most ``threshold``, and report cliques of at least
``min_clique`` (paper: 10) mutually near-identical generations as candidate training images. The
candidate's representative is the clique member closest to all the others (the medoid).

With the training set at hand, each candidate is verified as the paper verifies its Stable
Diffusion extractions (section 4.2): the representative's nearest training image by L2, and the
normalised distance l2(x, y) = sqrt(mean((x - y)^2)) on [0, 1] pixels; below 0.15 it is a
training image ("verified"), otherwise a false clique.

Cliques: networkx's maximal cliques (Bron-Kerbosch) per group, taken largest first (ties: the
clique holding the lowest sample index), each sample in at most one reported clique.
"""

from __future__ import annotations

import numpy as np

from memaudit.tiled import tiled_l2  # Carlini et al. 2023 section 4.2.1's tiled distance, shared with the criteria

VERIFY_THRESHOLD = 0.15  # Carlini et al. 2023 section 4.2: normalised l2 below 0.15 counts as extracted


def cliques(distances: np.ndarray, threshold: float, min_clique: int) -> list[list[int]]:
    """Disjoint cliques of at least ``min_clique`` nodes in the graph "distance <= threshold",
    maximal cliques taken largest first (ties: lowest member index), each node used once."""
    import networkx as nx

    n = len(distances)
    linked = (distances <= threshold) & ~np.eye(n, dtype=bool)
    degree = linked.sum(1)
    keep = np.flatnonzero(degree >= min_clique - 1)  # a node in a k-clique has at least k - 1 links
    graph = nx.Graph()
    graph.add_nodes_from(keep.tolist())
    rows, cols = np.nonzero(np.triu(linked[np.ix_(keep, keep)], 1))
    graph.add_edges_from(zip(keep[rows].tolist(), keep[cols].tolist()))
    found = sorted((sorted(c) for c in nx.find_cliques(graph) if len(c) >= min_clique), key=lambda c: (-len(c), c))
    used: set[int] = set()
    chosen = []
    for clique in found:
        rest = [i for i in clique if i not in used]  # what an earlier clique leaves is still a clique
        if len(rest) < min_clique:
            continue
        chosen.append(rest)
        used.update(rest)
    return sorted(chosen, key=lambda c: (-len(c), c))


def medoid(members: list[int], distances: np.ndarray) -> int:
    """The member with the smallest summed distance to the others (lowest index on ties)."""
    block = distances[np.ix_(members, members)]
    return members[int(np.argmin(block.sum(1)))]


def normalised_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Carlini et al.'s l2(x, y) = sqrt(mean((x - y)^2)) on [0, 1] pixels, row by row."""
    diff = np.asarray(a).reshape(len(a), -1).astype(np.float64) - np.asarray(b).reshape(len(b), -1).astype(np.float64)
    return np.sqrt((diff * diff).mean(1)) / 255.0


def find_candidates(images: np.ndarray, groups: list, threshold: float, min_clique: int) -> list[dict]:
    """The cliques of each group of generations: members (sample indices), representative, size, group."""
    found = []
    keys = list(dict.fromkeys(groups))
    for key in keys:
        index = np.array([i for i, g in enumerate(groups) if g == key])
        distances = tiled_l2(images[index], images[index])
        for clique in cliques(distances, threshold, min_clique):
            rep = medoid(clique, distances)
            block = distances[np.ix_(clique, clique)]
            found.append({"group": key, "size": len(clique), "members": index[clique].tolist(),
                          "representative": int(index[rep]), "max_tiled_l2": float(block.max())})
    return sorted(found, key=lambda c: (-c["size"], c["representative"]))


def verify(candidates: list[dict], images: np.ndarray, train_images: np.ndarray, train_ids: list[str],
           threshold: float = VERIFY_THRESHOLD) -> None:
    """Add each candidate's nearest training image (by L2) and Carlini's verification distance, in place."""
    if not candidates:
        return
    reps = images[[c["representative"] for c in candidates]]
    flat_r = reps.reshape(len(reps), -1).astype(np.float64)
    flat_t = train_images.reshape(len(train_images), -1).astype(np.float64)
    sq = (flat_r * flat_r).sum(1)[:, None] + (flat_t * flat_t).sum(1)[None, :] - 2.0 * flat_r @ flat_t.T
    nearest = np.argmin(sq, axis=1)
    l2 = normalised_l2(reps, train_images[nearest])
    tiled = [float(tiled_l2(reps[i:i + 1], train_images[nearest[i]:nearest[i] + 1])[0, 0]) for i in range(len(reps))]
    for candidate, j, distance, tile in zip(candidates, nearest, l2, tiled):
        candidate["verification"] = {"nearest_train": train_ids[int(j)], "nearest_train_index": int(j),
                                     "l2": float(distance), "tiled_l2": tile, "threshold": threshold,
                                     "verified": bool(distance < threshold)}


def write_run(out, images: np.ndarray, seeds: np.ndarray, groups: list, candidates: list[dict], document: dict) -> dict:
    """extract.json (cliques, members, representative, verification; images inline for the page) and extract.html."""
    from pathlib import Path

    from memaudit.outputs import png_data_uri, write_samples
    from memaudit.reports import write_extract_page
    from memaudit.storage import write_json_atomic

    out = Path(out)
    for candidate in candidates:
        candidate["representative_seed"] = int(seeds[candidate["representative"]])
        candidate["representative_png"] = png_data_uri(images[candidate["representative"]])
    verified = [c for c in candidates if c.get("verification", {}).get("verified")]
    checked = document.get("train") is not None
    document.update({
        "n_cliques": len(candidates),
        "n_verified": len(verified) if checked else None,
        "false_clique_rate": (1 - len(verified) / len(candidates)) if checked and candidates else None,
        "distinct_training_images": len({c["verification"]["nearest_train"] for c in verified}) if checked else None,
        "samples_in_cliques": int(sum(c["size"] for c in candidates)),
        "cliques": candidates,
    })
    write_samples(out, images, seeds, {"group": np.asarray([str(g) for g in groups])})
    write_json_atomic(out / "extract.json", document)
    write_extract_page(out)
    return document
