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
    with pytest.raises(InputError, match="valid criteria are carlini-l2, carlini-relative, cosine, nn-ratio, nn-ratio-dedup, tiled-l2"):
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
    neighbours = Neighbours(np.zeros((3, 2)), np.tile([0, 1], (3, 1)), samples=samples, train_images=train,
                            native_pixels=True)
    verdicts = CRITERIA["tiled-l2"].verdicts(neighbours)
    np.testing.assert_allclose(verdicts.scores, [0.2, 25 / 255, 0.4 / np.sqrt(2)])
    assert verdicts.memorized.tolist() == [False, True, False] and verdicts.threshold == 0.15


def test_dedup_ratio_skips_exact_and_near_copies_of_the_nearest_image():
    from memaudit.criteria import CRITERIA, Neighbours
    from memaudit.duplicates import duplicate_mask, radius

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


def test_duplicate_mask_in_bounded_blocks_is_the_brute_force_mask(monkeypatch):
    """Samples are taken a few at a time (the training rows read at once stay bounded): the mask is
    the one computed from every pair directly."""
    from memaudit import duplicates as dedup

    rng = np.random.default_rng(4)
    train = rng.integers(0, 250, (40, 12), dtype=np.uint8)
    train[10:20] = train[:10] + rng.integers(0, 3, (10, 12)).astype(np.uint8)  # near copies of 0..9
    indices = rng.integers(0, 40, (23, 6))
    indices[:10, 0], indices[:10, 1] = np.arange(10), np.arange(10, 20)
    limit = 8.0
    a = train[indices[:, :1]].astype(np.float64)
    expected = np.sqrt(((train[indices].astype(np.float64) - a) ** 2).sum(-1)) <= limit
    monkeypatch.setattr(dedup, "MASK_BLOCK_VALUES", 5 * 2 * 12)  # blocks of 5 samples
    mask = dedup.duplicate_mask(train, indices, limit)
    assert np.array_equal(mask, expected) and mask[:10, 1].all() and mask[:, 0].all()


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
    import memaudit  # the Python door to the same command

    assert memaudit.dedup(tmp_path / "train.npz", progress=False)["clusters"] == report["clusters"]


# --- Carlini et al. (2023) ---------------------------------------------------------------------


def _photo_like(rng, n, shape=(12, 12, 3)):
    """Smooth random images (a low-resolution field upsampled) so neighbours are graded, not equidistant."""
    coarse = rng.integers(0, 256, (n, 3, 3, shape[2])).astype(np.float64)
    fine = np.repeat(np.repeat(coarse, shape[0] // 3, axis=1), shape[1] // 3, axis=2)
    return np.clip(fine + rng.normal(0, 12, (n, *shape)), 0, 255).astype(np.uint8)


def _pixel_neighbours(samples, train, k):
    from memaudit.criteria import Neighbours

    distances, indices = knn(samples, train, k, dtype=np.float64)
    return Neighbours(distances, indices, samples=samples, train_images=train, native_pixels=True)


def test_carlini_l2_and_relative_equal_an_independent_float64_computation():
    """§4.2: RMS of [0, 1] pixel differences to the nearest training image; §5.1: that distance over
    alpha times the mean distance to the 50 nearest training images (NN1 included)."""
    from memaudit.criteria import CRITERIA

    rng = np.random.default_rng(7)
    train = _photo_like(rng, 400)
    samples = np.concatenate([np.clip(train[:10].astype(int) + rng.integers(-6, 7, (10, 12, 12, 3)), 0, 255),
                              _photo_like(rng, 30)]).astype(np.uint8)
    x = samples.reshape(len(samples), -1).astype(np.float64) / 255.0
    y = train.reshape(len(train), -1).astype(np.float64) / 255.0
    rms = np.sqrt(((x[:, None, :] - y[None, :, :]) ** 2).mean(-1))  # every pair, directly
    ranked = np.sort(rms, axis=1)
    expected_l2 = ranked[:, 0]
    expected_relative = ranked[:, 0] / (0.5 * ranked[:, :50].mean(1))

    neighbours = _pixel_neighbours(samples, train, 50)
    l2 = CRITERIA["carlini-l2"].verdicts(neighbours)
    relative = CRITERIA["carlini-relative"].verdicts(neighbours)
    np.testing.assert_allclose(l2.scores, expected_l2, rtol=1e-12)
    np.testing.assert_allclose(relative.scores, expected_relative, rtol=1e-12)
    assert (l2.nn == rms.argmin(1)).all() and (relative.nn == rms.argmin(1)).all()
    assert l2.threshold == 0.15 and relative.threshold == 1.0 and relative.settings == {"alpha": 0.5, "n": 50}
    assert relative.memorized[:10].all() and not relative.memorized[10:].any()
    other = CRITERIA["carlini-relative"].verdicts(neighbours, 1.0, {"alpha": 0.25, "n": 20})
    np.testing.assert_allclose(other.scores, ranked[:, 0] / (0.25 * ranked[:, :20].mean(1)), rtol=1e-12)


@pytest.mark.parametrize("shape", [(12, 12, 3), (10, 9, 1)])  # even tiles, and uneven ones (array_split)
def test_tiled_l2_equals_brute_force_over_the_whole_training_set(shape):
    """The minimum over every training image, not over the nearest few: samples whose closest
    tiled match lies outside their untiled candidates are settled by the whole-set pass."""
    from memaudit.criteria import CRITERIA
    from memaudit.tiled import paired_tiled_l2, tiled_l2

    rng = np.random.default_rng(11)
    train = rng.integers(0, 256, (300, *shape), dtype=np.uint8)
    near = np.clip(train[:15].astype(int) + rng.integers(-5, 6, (15, *shape)), 0, 255)
    samples = np.concatenate([near, rng.integers(0, 256, (25, *shape))]).astype(np.uint8)
    pairs = (np.repeat(samples, len(train), axis=0), np.tile(train, (len(samples), 1, 1, 1)))
    brute = paired_tiled_l2(*pairs).reshape(len(samples), len(train))  # every pair, directly
    np.testing.assert_allclose(tiled_l2(samples, train), brute, rtol=1e-10)
    verdicts = CRITERIA["tiled-l2"].verdicts(_pixel_neighbours(samples, train, 4))
    np.testing.assert_allclose(verdicts.scores, brute.min(1), rtol=1e-12)
    assert (verdicts.nn == brute.argmin(1)).all()
    assert verdicts.memorized[:15].all() and not verdicts.memorized[15:].any()


def test_tiled_l2_is_never_below_the_untiled_rms():
    """The bound the exact search prunes with: the largest tile's RMS is at least the whole image's."""
    from memaudit.tiled import tiled_l2

    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 256, (20, 10, 7, 3), dtype=np.uint8), rng.integers(0, 256, (30, 10, 7, 3), dtype=np.uint8)
    untiled = np.sqrt(((a.reshape(20, 1, -1) / 255.0 - b.reshape(1, 30, -1) / 255.0) ** 2).mean(-1))
    assert (tiled_l2(a, b) >= untiled - 1e-12).all()


@pytest.mark.parametrize("value, message", [
    ("nn-ratio=nan", "--criterion-threshold nn-ratio=nan: the nn-ratio threshold must be a finite number in (0, 1]"),
    ("nn-ratio=inf", "nn-ratio threshold must be a finite number"),
    ("nn-ratio=-3", "--criterion-threshold nn-ratio=-3: the nn-ratio threshold"),
    ("pixel/tiled-l2=1.5", "the tiled-l2 threshold must be a finite number in (0, 1]"),
    ("cosine=2", "the cosine threshold must be a finite number in [-1, 1]"),
    ("carlini-relative=0", "the carlini-relative threshold"),
])
def test_bad_thresholds_are_refused(value, message):
    from memaudit.criteria import parse_thresholds

    with pytest.raises(InputError) as error:
        parse_thresholds([value])
    assert message in str(error.value)


def test_space_thresholds_override_the_every_space_ones():
    from memaudit.auditing.config import AuditConfig
    from memaudit.criteria import parse_thresholds

    values = parse_thresholds(["tiled-l2=0.1", "pixel/tiled-l2=0.05", "pixel-4/nn-ratio=0.2"])
    config = AuditConfig(train="digits:20", out="x", model="optimal", spaces=["pixel-4"], criterion_thresholds=values)
    config.validate()
    assert config.thresholds("pixel")["tiled-l2"] == 0.05 and config.thresholds("pixel-4")["tiled-l2"] == 0.1
    assert config.thresholds("pixel-4")["nn-ratio"] == 0.2 and config.thresholds("pixel")["nn-ratio"] == 1 / 3
    for bad, message in [({"clip:x/cosine": 0.5}, "no space clip:x in this audit"),
                         ({"pixel-4/tiled-l2": 0.1}, "tiled-l2 does not apply in pixel-4"),
                         ({"nn-ratio": float("nan")}, "finite number")]:
        with pytest.raises(InputError, match=message):
            AuditConfig(train="digits:20", out="x", model="optimal", spaces=["pixel-4"],
                        criterion_thresholds=bad).validate()
