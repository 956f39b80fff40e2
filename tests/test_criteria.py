import numpy as np
import pytest

from memaudit.criteria import CRITERIA, get_criterion, nn_ratio, nn_ratio_scores, wilson_interval
from memaudit.errors import InputError
from memaudit.search import knn


def verdict(d1, d2):
    result = nn_ratio(np.array([[d1, d2]], dtype=np.float64))
    return float(result.scores[0]), bool(result.memorized[0])


def test_exact_copy_is_memorized():
    assert verdict(0.0, 5.0) == (0.0, True)


def test_equidistant_neighbours_are_not_memorized():
    assert verdict(4.0, 4.0) == (1.0, False)


def test_duplicated_training_image_copied_exactly_is_not_memorized_by_the_papers_criterion():
    # 0/0: both nearest images are copies of the sample; the plain ratio test cannot tell.
    assert verdict(0.0, 0.0) == (1.0, False)


def test_threshold_is_strict():
    assert verdict(1.0, 3.0)[1] is False  # ratio exactly 1/3
    assert verdict(1.0, 3.0 + 1e-9)[1] is True  # just below 1/3
    assert verdict(1.0, 3.0 - 1e-9)[1] is False  # just above 1/3
    assert verdict(0.999, 3.0)[1] is True


def test_custom_threshold():
    scores = nn_ratio(np.array([[1.0, 1.9], [1.0, 2.1]]), threshold=0.5)
    assert scores.memorized.tolist() == [False, True]


def test_summary_counts_and_interval():
    summary = nn_ratio(np.array([[0.0, 1.0]] * 5 + [[1.0, 1.0]] * 5)).summary()
    assert summary["memorized"] == 5 and summary["n"] == 10 and summary["fraction"] == 0.5
    np.testing.assert_allclose(summary["ci95"], [0.236593, 0.763407], atol=1e-6)


def test_wilson_interval_hand_computed():
    # 0 of 10: upper bound z^2 / (n + z^2).
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / (10 + z2))
    low, high = wilson_interval(92, 100)
    assert (round(low, 4), round(high, 4)) == (0.8500, 0.9589)  # published Wilson interval for 92/100


def test_ratio_needs_two_neighbours():
    with pytest.raises(InputError, match="k >= 2"):
        nn_ratio_scores(np.zeros((3, 1)))


def test_criterion_on_real_search():
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (200, 64), dtype=np.uint8)
    samples = np.stack([train[7], train[7] // 2 + 60, rng.integers(0, 256, 64, dtype=np.uint8)])
    distances, _ = knn(samples, train, 2)
    assert nn_ratio(distances).memorized.tolist() == [True, False, False]


def test_unknown_criterion_lists_valid_ones():
    assert {"nn-ratio", "cosine", "tiled-l2"} <= set(CRITERIA)
    with pytest.raises(InputError, match="valid criteria are cosine, nn-ratio, nn-ratio-dedup, tiled-l2"):
        get_criterion("l2-tiles")


def test_tiled_l2_hand_computed():
    """8x8 images cut into 4x4 tiles of 2x2 pixels: the score is the worst tile's RMS difference."""
    from memaudit.criteria import CRITERIA, Neighbours

    train = np.zeros((2, 8, 8, 1), np.uint8)
    train[1] = 255
    one_tile = train[0].copy()
    one_tile[0:2, 2:4] = 51  # one tile off by 0.2; the other 15 identical
    everywhere = np.full((8, 8, 1), 25, np.uint8)  # every tile off by 25/255
    half_tile = train[0].copy()
    half_tile[4, 4] = half_tile[5, 5] = 102  # two of a tile's four pixels off by 0.4: RMS 0.4/sqrt(2)
    samples = np.stack([one_tile, everywhere, half_tile])
    neighbours = Neighbours(np.zeros((3, 2)), np.tile([0, 1], (3, 1)), samples=samples, train_images=train)
    verdicts = CRITERIA["tiled-l2"].verdicts(neighbours)
    np.testing.assert_allclose(verdicts.scores, [0.2, 25 / 255, 0.4 / np.sqrt(2)])
    assert verdicts.memorized.tolist() == [False, True, False] and verdicts.threshold == 0.15


def test_dedup_ratio_skips_exact_and_near_copies_of_the_nearest_image():
    from memaudit.criteria import CRITERIA, Neighbours
    from memaudit.dedup import duplicate_mask, radius

    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (50, 16), dtype=np.uint8)
    train[20] = train[9]  # image 9 twice
    train[4] = rng.integers(10, 240, 16)
    train[30] = train[4] + 2  # a near copy of image 4 (2 grey levels)
    samples = np.stack([train[9], train[4] + 1, train[3]])  # a copy of 9; a copy between 4 and its near copy
    distances, indices = knn(samples, train, 8)
    duplicates = duplicate_mask(train, indices, radius("l2", 16))
    assert duplicates[:2, 1].tolist() == [True, True] and not duplicates[2, 1:].any()
    neighbours = Neighbours(distances, indices, duplicates=duplicates)
    plain = CRITERIA["nn-ratio"].verdicts(neighbours)
    dedup = CRITERIA["nn-ratio-dedup"].verdicts(neighbours)
    assert plain.memorized.tolist() == [False, False, True]  # 0/0, and d1 = d2 between the near copies
    assert dedup.memorized.tolist() == [True, True, True] and dedup.scores[0] == 0.0
    assert dedup.scores[2] == plain.scores[2]  # no duplicates: the same ratio


def test_cosine_criterion_is_memorized_above_its_threshold():
    from memaudit.criteria import CRITERIA, Neighbours

    similarities = np.array([[0.51, 0.2], [0.5, 0.4], [-0.3, -0.5]])
    verdicts = CRITERIA["cosine"].verdicts(Neighbours(np.zeros((3, 2)), np.zeros((3, 2), int), similarities), 0.5)
    assert verdicts.memorized.tolist() == [True, False, False]
    assert not CRITERIA["cosine"].applies(Neighbours(np.zeros((3, 2)), np.zeros((3, 2), int)))


def test_dedup_command_finds_planted_exact_and_near_copies(tmp_path):
    """Digits with planted copies: every plant is found, and nothing else is clustered with it."""
    import json

    from typer.testing import CliRunner

    from memaudit.cli import app
    from memaudit.data import load_image_set

    digits = load_image_set("digits:200").images
    distinct = np.unique(digits.reshape(200, -1), axis=0, return_index=True)[1]
    base = digits[np.sort(distinct)[:100]]
    rng = np.random.default_rng(5)
    exact = base[[3, 17]]
    near = np.clip(base[[40, 41]].astype(int) + rng.integers(-2, 3, base[[40, 41]].shape), 0, 255).astype(np.uint8)
    planted = np.concatenate([base, exact, near])
    np.savez(tmp_path / "train.npz", images=planted)
    result = CliRunner().invoke(app, ["dedup", str(tmp_path / "train.npz"), "--out", str(tmp_path / "d"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "dedup.json").read_text())
    clusters = {tuple(c["indices"]): c["exact"] for c in report["clusters"]}
    assert clusters == {(3, 100): True, (17, 101): True, (40, 102): False, (41, 103): False}
    assert "4 duplicate clusters (2 exact, 2 near)" in result.stdout
