"""Generate-and-filter extraction (Carlini et al. 2023 section 4): tiled L2 against a per-tile loop,
cliques against planted clusters, and a whole run on the optimal denoiser, which emits only
training images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.extraction.cliques import cliques, medoid, tiled_l2

runner = CliRunner()


@pytest.mark.parametrize("shape", [(8, 8, 1), (7, 9, 3)])
def test_tiled_l2_is_the_worst_tile_rms(shape):
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (4, *shape), dtype=np.uint8), rng.integers(0, 256, (3, *shape), dtype=np.uint8)
    rows, cols = np.array_split(np.arange(shape[0]), 4), np.array_split(np.arange(shape[1]), 4)
    expected = np.zeros((4, 3))
    for i in range(4):
        for j in range(3):
            diff = a[i].astype(float) / 255 - b[j].astype(float) / 255
            expected[i, j] = max(np.sqrt(np.mean(diff[r[0]:r[-1] + 1, c[0]:c[-1] + 1] ** 2)) for r in rows for c in cols)
    np.testing.assert_allclose(tiled_l2(a, b), expected, atol=1e-12)


def test_cliques_recover_planted_groups_of_near_identical_points():
    rng = np.random.default_rng(2)
    centres = rng.uniform(0, 10, (3, 2))
    sizes = (12, 10, 5)
    points = np.concatenate([c + rng.normal(0, 0.01, (k, 2)) for c, k in zip(centres, sizes)]
                            + [rng.uniform(0, 10, (30, 2)) + 20])  # scattered, far from each other and the groups
    order = rng.permutation(len(points))
    points = points[order]
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    found = cliques(distances, 0.1, 10)
    labels = np.repeat([0, 1, 2, -1], [*sizes, 30])[order]
    assert [len(c) for c in found] == [12, 10]
    assert [set(labels[c]) for c in found] == [{0}, {1}]
    rep = medoid(found[0], distances)
    assert rep in found[0]


def test_extract_on_the_optimal_denoiser_finds_verified_training_images(tmp_path):
    out = tmp_path / "extract"
    result = runner.invoke(app, ["extract", "optimal", "--train", "digits:20", "--n", "60", "--min-clique", "3",
                                 "--out", str(out), "--device", "cpu", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "extract.json").read_text())
    summary = json.loads(result.stdout)
    assert summary["n_cliques"] == document["n_cliques"] > 0
    # the optimal denoiser reproduces training images: every clique is one, and verified
    assert document["n_verified"] == document["n_cliques"] and document["false_clique_rate"] == 0
    assert all(c["verification"]["l2"] < 0.01 for c in document["cliques"])
    assert document["distinct_training_images"] == len({c["verification"]["nearest_train"] for c in document["cliques"]})
    members = [i for c in document["cliques"] for i in c["members"]]
    assert len(members) == len(set(members))  # each generation in at most one clique
    page = (out / "extract.html").read_text()
    assert "Content-Security-Policy" in page and "https://" not in page


@pytest.mark.parametrize("args, message", [(["--min-clique", "1"], "--min-clique 1"), (["--threshold", "0"], "--threshold 0"),
                                           (["--n", "1"], "--n 1")])
def test_bad_extract_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = runner.invoke(app, ["extract", "optimal", "--train", "digits:20", "--out", str(tmp_path), *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
