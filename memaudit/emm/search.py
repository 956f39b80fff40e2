"""The EMM search: the largest training-set size whose trained model still memorizes.

Effective Model Memorization (Gu et al. 2023, definition 1): EMM_eps is the largest |D| at which
the expected memorization ratio of a model trained on D is still >= 1 - eps. The ratio falls as
|D| grows, so the search brackets the threshold by doubling (or halving) from a start size, then
bisects until the bracket is narrower than a tolerance. Each size is measured over several seeds
and decided on the mean; its interval says how sure that decision is. The result is a bracket:
the largest size that passed and the smallest that failed, with every measured point. Nothing
here trains a model: ``search_emm`` takes the measurement as a function, so it can be tested
against synthetic ratio curves and driven by real training (``memaudit.emm.recipe``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from memaudit.criteria import wilson_interval


@dataclass(frozen=True)
class Point:
    """One trained model: the size it was trained on, its seed, its memorization ratio."""

    size: int
    seed: int
    ratio: float
    memorized: int = 0  # memorized samples of the counting snapshot (for the pooled interval)
    n: int = 0  # samples drawn from it
    info: dict = field(default_factory=dict, compare=False)  # paths and details, for emm.json


@dataclass(frozen=True)
class SizeResult:
    """All seeds at one size, decided on the mean ratio."""

    size: int
    points: tuple[Point, ...]
    mean: float
    ci95: tuple[float, float]
    passed: bool  # mean >= 1 - eps
    confident: bool  # the interval lies wholly on the side of the threshold the mean is on
    converged: bool = True  # no point's ratio was still rising (see recipe.converged)
    lower_bound: bool = False  # every point stopped at its first passing snapshot: the mean is a lower bound

    def as_json(self) -> dict:
        return {"size": self.size, "mean": self.mean, "ci95": list(self.ci95), "passed": self.passed,
                "confident": self.confident, "converged": self.converged, "lower_bound": self.lower_bound,
                "seeds": [p.seed for p in self.points],
                "ratios": [p.ratio for p in self.points]}


@dataclass
class SearchResult:
    """The EMM bracket and every size measured, in the order measured."""

    threshold: float
    lower: int | None  # largest size that passed (None: even the smallest size failed)
    upper: int | None  # smallest size that failed (None: even the largest size passed)
    measured: list[SizeResult]
    violations: list[dict]

    @property
    def status(self) -> str:
        """bracketed, below-range (even the smallest size tried failed) or above-range (even the largest
        passed). Whether the bracket's failing end was still rising is ``still_rising``: information
        about the training budget, not a different answer (``memaudit.emm.budget``)."""
        if self.lower is None:
            return "below-range"
        if self.upper is None:
            return "above-range"
        return "bracketed"

    @property
    def still_rising(self) -> bool:
        """The size that failed at the bracket's upper end was still memorizing more in the second half
        of its training: a larger training budget may pass it (the bracket is this budget's EMM)."""
        upper = next((r for r in self.measured if r.size == self.upper), None)
        return upper is not None and not upper.converged

    @property
    def monotone(self) -> bool:
        return not self.violations

    def by_size(self) -> list[SizeResult]:
        return sorted(self.measured, key=lambda r: r.size)


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student t quantile (normal for large dof)."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def aggregate(size: int, points: Sequence[Point], threshold: float) -> SizeResult:
    """Mean ratio over seeds and its 95% interval.

    One seed: the Wilson interval of its samples. Several: the envelope of the pooled Wilson
    interval (sampling noise) and the Student t interval of the mean over seeds (training noise).
    """
    ratios = [p.ratio for p in points]
    mean = sum(ratios) / len(ratios)
    low, high = wilson_interval(sum(p.memorized for p in points), sum(p.n for p in points))
    if len(points) > 1:
        sd = math.sqrt(sum((r - mean) ** 2 for r in ratios) / (len(ratios) - 1))
        half = t_quantile_975(len(ratios) - 1) * sd / math.sqrt(len(ratios))
        low, high = min(low, max(0.0, mean - half)), max(high, min(1.0, mean + half))
    passed = mean >= threshold
    confident = low >= threshold if passed else high < threshold
    converged = all(p.info.get("converged") is not False for p in points)
    lower_bound = all(p.info.get("stopped_at_pass") is not None for p in points)
    return SizeResult(size, tuple(points), mean, (low, high), passed, confident, converged, lower_bound)


def find_violations(results: Sequence[SizeResult]) -> list[dict]:
    """Pairs of sizes where the larger one has a higher mean ratio: the ratios are not monotone.
    A smaller size whose mean is only a lower bound (its points stopped at their first passing
    snapshot, so their highest ratio may be higher) cannot be shown to memorize less, so it is no
    violation; a larger size's lower bound above a smaller size's full-budget ratio is one."""
    ordered = sorted(results, key=lambda r: r.size)
    violations = []
    for i, small in enumerate(ordered):
        if small.lower_bound:
            continue
        for large in ordered[i + 1:]:
            if large.mean > small.mean:
                violations.append({"smaller": small.size, "larger": large.size, "smaller_mean": small.mean,
                                   "larger_mean": large.mean})
    return violations


def search_emm(measure: Callable[[int], Sequence[Point]], *, threshold: float, start: int, min_size: int,
               max_size: int, unit: int = 1, tolerance: int = 1, relative_tolerance: float = 1.0,
               grid: Sequence[int] = (), width: int = 1, ahead: int | None = None,
               prefetch: Callable[[list[int]], None] | None = None) -> SearchResult:
    """Bracket and bisect the largest size whose mean memorization ratio is >= ``threshold``.

    ``measure(size)`` returns the points of every seed at that size (it trains, or reads finished
    points back). Sizes are multiples of ``unit`` within [``min_size``, ``max_size``]. Doubling
    from ``start`` brackets the threshold; bisection then runs while the bracket is at least
    ``tolerance`` wide, its upper end is above ``relative_tolerance`` times its lower end (1: no
    relative stop) and a size on the grid lies strictly inside it. Sizes measured: at most
    1 + ceil(|log2(first bracket end / start)|) to bracket, plus ceil(log2(bracket width / unit))
    to bisect. ``grid`` sizes are measured first, whatever the search needs (the fixed grid of
    the paper's code); the search reuses them where it passes through them. Before bisecting, the
    bracket is set from every size measured: the largest that passed and the smallest larger one
    that failed, so a grid size that passed above a failed start still counts.

    ``width`` sizes are probed per round when several workers can train at once: while bracketing,
    the next ``ahead`` doublings (or halvings; None: ``width`` of them) and ``width - ahead`` sizes
    splitting the last of those steps, which bisection needs next if that step fails; while
    bisecting, ``width`` sizes splitting the bracket into ``width + 1`` parts, so bisection needs
    log_(width+1) rounds instead of log_2. A doubling beyond the first failing size is the costliest
    waste (a larger size trains longer, and a failing one to its full budget), so with few workers
    ``ahead`` 1 spends the spare ones inside the next step instead. ``prefetch(sizes)`` is called
    with each round's unmeasured sizes before ``measure`` reads them (a distributed run trains them
    in parallel there). ``width`` 1 is plain doubling and bisection.
    """

    def snap(size: float) -> int:
        return int(min(max_size, max(min_size, unit * (int(size) // unit))))

    results: dict[int, SizeResult] = {}
    order: list[SizeResult] = []

    def measure_sizes(sizes: Sequence[int]) -> None:
        new = [size for size in dict.fromkeys(sizes) if size not in results]
        if prefetch is not None and new:
            prefetch(new)
        for size in new:
            results[size] = aggregate(size, measure(size), threshold)
            order.append(results[size])

    def passes(size: int) -> bool:
        measure_sizes([size])
        return results[size].passed

    measure_sizes(list(grid))
    lower: int | None = None
    upper: int | None = None
    size = snap(start)
    # 1. Bracket: double while the size passes, halve while it fails (``width`` sizes per round).
    if passes(size):
        lower = size
        while upper is None and size < max_size:
            probes = _round(size, lambda s: snap(s * 2), width, ahead, lambda s: s < max_size, snap)
            measure_sizes(probes)
            for size in probes:
                if not passes(size):
                    upper = size
                    break
                lower = size
    else:
        upper = size
        while lower is None and size > min_size:
            probes = _round(size, lambda s: snap(s / 2), width, ahead, lambda s: s > min_size, snap)
            measure_sizes(probes)
            for size in probes:
                if passes(size):
                    lower = size
                    break
                upper = size
    # 2. Reconcile with every size measured (grid sizes, non-monotone curves): EMM is the largest size
    #    that passed (definition 1), and the bracket ends at the smallest size above it that failed.
    #    On a monotone curve this is the bracket found above.
    lower = max((r.size for r in results.values() if r.passed), default=None)
    upper = min((r.size for r in results.values() if not r.passed and (lower is None or r.size > lower)), default=None)
    # 3. Bisect the bracket (``width`` sizes splitting it per round).
    while lower is not None and upper is not None and upper - lower >= tolerance \
            and upper > relative_tolerance * lower:
        inside = sorted({snap(lower + (upper - lower) * j / (width + 1)) for j in range(1, width + 1)})
        probes = [middle for middle in inside if lower < middle < upper]
        if not probes:
            break
        measure_sizes(probes)
        for middle in probes:
            if not passes(middle):
                upper = middle
                break
            lower = middle
    return SearchResult(threshold, lower, upper, order, find_violations(order))


def _round(size: int, step: Callable[[int], int], width: int, ahead: int | None, going: Callable[[int], bool],
           snap: Callable[[float], int]) -> list[int]:
    """One bracketing round from ``size``: ``ahead`` steps (None: ``width``) and the rest of ``width``
    splitting the last step evenly, in the order the search reads them (the direction of travel)."""
    ends = _steps(size, step, width if ahead is None else min(width, max(1, ahead)), going)
    if not ends:
        return []
    near, far = (ends[-2] if len(ends) > 1 else size), ends[-1]
    extra = width - len(ends)
    inside = {snap(near + (far - near) * j / (extra + 1)) for j in range(1, extra + 1)}
    inside = {s for s in inside if min(near, far) < s < max(near, far)}
    return sorted(set(ends) | inside, reverse=far < size)


def _steps(size: int, step: Callable[[int], int], count: int, going: Callable[[int], bool]) -> list[int]:
    """Up to ``count`` successive steps from ``size``, while ``going`` holds before each."""
    sizes = []
    while len(sizes) < count and going(size):
        size = step(size)
        sizes.append(size)
    return sizes
