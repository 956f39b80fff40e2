"""The EMM search against synthetic ratio curves: exact thresholds, the log2 bound, noise, non-monotone input."""

import math

import pytest

from memaudit.emm.search import Point, aggregate, search_emm


def curve(ratio_of_size, seeds=1, calls=None):
    """A measure() over a known ratio function; records every (size, seed) trained."""

    def measure(size):
        if calls is not None:
            calls.extend((size, seed) for seed in range(seeds))
        return [Point(size, seed, ratio_of_size(size, seed) if ratio_of_size.__code__.co_argcount == 2
                      else ratio_of_size(size), memorized=0, n=0) for seed in range(seeds)]

    return measure


@pytest.mark.parametrize("emm", [1, 2, 37, 100, 511, 512, 999])
def test_finds_the_exact_threshold_within_the_log2_bound(emm):
    # ratio(size) = 1 - size/(10 (emm + 1)) is >= 0.9 exactly for size <= emm
    calls = []
    ratio = lambda size: 1.0 - size / (10.0 * (emm + 0.5))  # noqa: E731
    result = search_emm(curve(ratio, calls=calls), threshold=0.9, start=8, min_size=1, max_size=2000)
    assert (result.lower, result.upper) == (emm, emm + 1)
    assert result.status == "bracketed" and result.monotone
    sizes = [size for size, _ in calls]
    assert len(sizes) == len(set(sizes))  # no size trained twice
    # bracket: 1 + ceil(|log2(first end / start)|) sizes; bisection: ceil(log2(width)) more
    first_end = emm + 1 if emm >= 8 else emm
    bound = 1 + math.ceil(abs(math.log2(max(first_end, 1) / 8))) + 1 + math.ceil(math.log2(max(emm, 2)))
    assert len(sizes) <= bound, (sizes, bound)
    assert len(sizes) <= 2 * math.ceil(math.log2(2000)) + 1


def test_grid_of_classes_and_tolerance():
    ratio = lambda size: 1.0 if size <= 430 else 0.0  # noqa: E731
    exact = search_emm(curve(ratio), threshold=0.9, start=100, min_size=10, max_size=1790, unit=10)
    assert (exact.lower, exact.upper) == (430, 440)
    assert all(r.size % 10 == 0 for r in exact.measured)
    coarse = search_emm(curve(ratio), threshold=0.9, start=100, min_size=10, max_size=1790, unit=10, tolerance=100)
    assert coarse.upper - coarse.lower < 100 and coarse.lower <= 430 < coarse.upper
    assert len(coarse.measured) < len(exact.measured)


def test_threshold_outside_the_range():
    always = search_emm(curve(lambda size: 1.0), threshold=0.9, start=16, min_size=2, max_size=100)
    assert (always.lower, always.upper, always.status) == (100, None, "above-range")
    assert [r.size for r in always.measured] == [16, 32, 64, 100]
    never = search_emm(curve(lambda size: 0.0), threshold=0.9, start=16, min_size=2, max_size=100)
    assert (never.lower, never.upper, never.status) == (None, 2, "below-range")
    assert [r.size for r in never.measured] == [16, 8, 4, 2]


def test_halving_when_the_start_fails():
    result = search_emm(curve(lambda size: 1.0 if size <= 5 else 0.2), threshold=0.9, start=64, min_size=1, max_size=100)
    assert (result.lower, result.upper) == (5, 6)


def test_non_monotone_ratios_are_reported():
    # 30 memorizes more than 20: the search still brackets, and says the curve is not monotone
    bumpy = {10: 1.0, 20: 0.95, 40: 0.5, 30: 0.97, 35: 0.3}
    result = search_emm(curve(lambda size: bumpy.get(size, 0.0)), threshold=0.9, start=10, min_size=10,
                        max_size=40, unit=5)
    assert [r.size for r in result.measured] == [10, 20, 40, 30, 35]
    assert (result.lower, result.upper) == (30, 35)
    assert not result.monotone
    assert [(v["smaller"], v["larger"]) for v in result.violations] == [(20, 30), (35, 40)]
    assert result.violations[0]["larger_mean"] == pytest.approx(0.97)
    monotone = search_emm(curve(lambda size: 1.0 - size / 100), threshold=0.9, start=10, min_size=1, max_size=40)
    assert monotone.monotone and monotone.violations == []


def test_seeds_are_decided_on_the_mean_with_an_interval():
    # seed 0 memorizes, seed 1 does not: mean 0.9 passes at 0.9, and the interval shows the doubt
    calls = []
    result = search_emm(curve(lambda size, seed: 1.0 if seed == 0 or size <= 4 else 0.8, seeds=2, calls=calls),
                        threshold=0.9, start=4, min_size=1, max_size=8)
    assert (result.lower, result.upper) == (8, None)
    assert len(calls) == 2 * len(result.measured)
    last = result.by_size()[-1]
    assert last.mean == pytest.approx(0.9) and last.passed and not last.confident
    assert last.ci95[0] < 0.9 < last.ci95[1]


def test_aggregate_single_seed_uses_the_wilson_interval():
    from memaudit.criteria import wilson_interval

    result = aggregate(10, [Point(10, 0, 0.95, memorized=95, n=100)], threshold=0.9)
    assert result.ci95 == pytest.approx(wilson_interval(95, 100)) and result.passed and not result.confident
    sure = aggregate(10, [Point(10, 0, 1.0, memorized=1000, n=1000)], threshold=0.9)
    assert sure.confident


def test_a_passing_grid_size_above_a_failing_start_sets_the_bracket():
    # under-trained small sets: 10 fails, 20 and 30 pass, 40 fails; EMM is the largest size that passed
    ratios = {10: 0.85, 20: 0.95, 30: 0.92, 40: 0.8}
    calls = []
    result = search_emm(curve(lambda size: ratios[size], calls=calls), threshold=0.9, start=10, min_size=10,
                        max_size=40, unit=10, grid=(10, 20, 40))
    assert [size for size, _ in calls] == [10, 20, 40, 30]  # the grid, then one bisection of [20, 40)
    assert (result.lower, result.upper, result.status) == (30, 40, "bracketed")
    assert not result.monotone and {(v["smaller"], v["larger"]) for v in result.violations} == {(10, 20), (10, 30)}
    # every size failed: below the range, whatever the order
    low = search_emm(curve(lambda size: 0.5), threshold=0.9, start=20, min_size=10, max_size=40, unit=10, grid=(40,))
    assert (low.lower, low.upper, low.status) == (None, 10, "below-range")


@pytest.mark.parametrize("emm", [1, 3, 37, 100, 511, 999, 1999])
@pytest.mark.parametrize("width", [2, 3, 8])
def test_wider_rounds_find_the_same_bracket_in_fewer_rounds(emm, width):
    """With several workers each round probes ``width`` sizes at once (prefetched together): the
    bracket is the one plain doubling and bisection find, in at most as many rounds."""
    ratio = lambda size: 1.0 - size / (10.0 * (emm + 0.5))  # noqa: E731
    rounds = {1: [], width: []}
    results = {}
    for w in rounds:
        measured = []

        def prefetch(sizes, w=w):
            assert not set(sizes) & set(measured)  # a round holds only sizes not measured yet
            rounds[w].append(list(sizes))
            measured.extend(sizes)

        results[w] = search_emm(curve(ratio), threshold=0.9, start=16, min_size=1, max_size=2000, width=w,
                                prefetch=prefetch)
        assert all(len(r) <= w for r in rounds[w])
    assert (results[width].lower, results[width].upper) == (results[1].lower, results[1].upper) == (emm, emm + 1)
    assert len(rounds[width]) <= len(rounds[1])
    if emm >= 100:  # a long bisection: log_(width+1) rounds instead of log_2
        assert len(rounds[width]) < len(rounds[1])
    # every size measured is measured once, in the order of its round
    assert [r.size for r in results[width].measured] == [s for r in rounds[width] for s in r]


def test_a_failing_size_that_still_rises_keeps_its_bracket_and_says_so():
    """The convergence guard as information: a size that fails while its ratio was still rising at
    the end of its training leaves the bracket as it is (it is the EMM of that training budget) and
    marks it ``still_rising``."""
    def measure(size, rising_above=40):
        ratio = 1.0 if size <= 20 else 0.5
        return [Point(size, 0, ratio, info={"converged": not (size >= rising_above and ratio < 0.9)})]

    result = search_emm(measure, threshold=0.9, start=10, min_size=10, max_size=80, unit=10)
    assert (result.lower, result.upper) == (20, 30) and result.status == "bracketed" and not result.still_rising
    assert all(r.converged for r in result.measured if r.size <= 30)
    stuck = search_emm(lambda size: measure(size, rising_above=30), threshold=0.9, start=10, min_size=10,
                       max_size=80, unit=10)
    assert (stuck.lower, stuck.upper) == (20, 30) and stuck.status == "bracketed" and stuck.still_rising
    assert [r.as_json()["converged"] for r in stuck.by_size()] == [True, True, False, False]


def test_a_ratio_that_stopped_at_its_first_pass_is_a_lower_bound_not_a_violation():
    """A point stopped at its first passing snapshot reports that snapshot's ratio, a lower bound of
    its highest: a larger size above it proves nothing (50 at >= 0.92 above 10 and 20 at >= 0.91),
    while a larger size above a full-budget ratio does (50 above 40's 0.85)."""
    stopped = {"stopped_at_pass": 0.9}
    ratios = {10: (0.91, stopped), 20: (0.91, stopped), 40: (0.85, {}), 50: (0.92, stopped), 60: (0.8, {})}
    result = search_emm(lambda size: [Point(size, 0, ratios[size][0], info=ratios[size][1])], threshold=0.9,
                        start=10, min_size=10, max_size=80, unit=10, grid=(50, 60))
    by_size = {r.size: r for r in result.measured}
    assert set(by_size) == {10, 20, 40, 50, 60}
    assert by_size[20].lower_bound and not by_size[40].lower_bound
    assert by_size[20].as_json()["lower_bound"] is True
    assert [(v["smaller"], v["larger"]) for v in result.violations] == [(40, 50)]


@pytest.mark.parametrize("emm", [25, 37, 100, 430, 999])
@pytest.mark.parametrize("relative", [1.1, 1.25, 1.5])
def test_relative_tolerance_stops_once_the_bracket_is_that_many_times_its_lower_end(emm, relative):
    """Bisection stops at the first bracket whose upper end is at most ``relative`` x its lower end:
    the bracket holds the true EMM and is no wider than that, with fewer sizes than bisecting to the grid."""
    ratio = lambda size: 1.0 - size / (10.0 * (emm + 0.5))  # noqa: E731
    exact = search_emm(curve(ratio), threshold=0.9, start=20, min_size=10, max_size=1790, unit=1)
    coarse = search_emm(curve(ratio), threshold=0.9, start=20, min_size=10, max_size=1790, unit=1,
                        relative_tolerance=relative)
    assert coarse.lower <= emm < coarse.upper and coarse.status == "bracketed"
    assert coarse.upper <= relative * coarse.lower
    # it stopped at the first such bracket: the one before (its last bisection's) was wider
    bisected = [r.size for r in coarse.measured if r.size not in {20 * 2**k for k in range(8)}]
    if bisected:
        assert len(coarse.measured) < len(exact.measured)
    assert {r.size for r in coarse.measured} <= {r.size for r in exact.measured}
    off = search_emm(curve(ratio), threshold=0.9, start=20, min_size=10, max_size=1790, unit=1, relative_tolerance=1.0)
    assert [r.size for r in off.measured] == [r.size for r in exact.measured]


def test_relative_tolerance_on_the_digits_grid():
    # EMM 130 on the grid of 10 classes, from 20 by doubling: [80, 160) then 120 and 140: [120, 140) is 1.17x
    ratio = lambda size: 1.0 if size <= 130 else 0.5  # noqa: E731
    result = search_emm(curve(ratio), threshold=0.9, start=20, min_size=10, max_size=1790, unit=10,
                        relative_tolerance=1.25)
    assert [r.size for r in result.measured] == [20, 40, 80, 160, 120, 140]
    assert (result.lower, result.upper) == (120, 140)
    grid = search_emm(curve(ratio), threshold=0.9, start=20, min_size=10, max_size=1790, unit=10)
    assert (grid.lower, grid.upper) == (130, 140) and len(grid.measured) == 7


@pytest.mark.parametrize("emm", [1, 3, 37, 100, 511, 999, 1999])
@pytest.mark.parametrize("start", [16, 1500])
def test_two_workers_probe_the_next_doubling_and_its_middle_never_beyond(emm, start):
    """``ahead`` 1 with ``width`` 2 (memaudit emm's two local workers): each bracketing round holds the
    next doubling (or halving) and the size halfway to it, so no size beyond the first failing
    doubling is trained; the bracket is plain bisection's, in no more rounds."""
    ratio = lambda size: 1.0 - size / (10.0 * (emm + 0.5))  # noqa: E731
    rounds = []
    result = search_emm(curve(ratio), threshold=0.9, start=start, min_size=1, max_size=2000, width=2, ahead=1,
                        prefetch=lambda sizes: rounds.append(list(sizes)))
    plain_rounds = []
    plain = search_emm(curve(ratio), threshold=0.9, start=start, min_size=1, max_size=2000,
                       prefetch=lambda sizes: plain_rounds.append(list(sizes)))
    assert (result.lower, result.upper) == (plain.lower, plain.upper) == (emm, emm + 1)
    assert all(len(r) <= 2 for r in rounds) and len(rounds) <= len(plain_rounds)
    doublings = [r.size for r in plain.measured][:next(i for i, r in enumerate(plain.measured)
                                                          if r.passed != plain.measured[0].passed) + 1]
    if start <= emm:  # going up: nothing above the first doubling that failed
        assert max(r.size for r in result.measured) <= doublings[-1]
    else:  # going down: nothing below the first halving that passed
        assert min(r.size for r in result.measured) >= doublings[-1]
    assert [r.size for r in result.measured] == [s for r in rounds for s in r]
