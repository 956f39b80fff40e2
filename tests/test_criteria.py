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
    with pytest.raises(InputError, match="valid criteria are cosine, nn-ratio, tiled-l2"):
        get_criterion("l2-tiles")
