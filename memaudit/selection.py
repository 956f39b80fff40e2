"""What an audit computes: its criteria (``--criteria``) and its quality figures (``--quality``).

An audit answers "does this model copy its training images?" with one k-NN search of the samples
against the training set. Every criterion read from that search (nn-ratio, nn-ratio-dedup,
carlini-l2, cosine) and the exact-copy check cost nothing beyond it and are always computed. The
criteria with a cost of their own (``Criterion.extra_cost``: tiled-l2's comparison against the whole
training set, carlini-relative's 50 neighbours) are computed by default only where they could speak
in the verdict (``memaudit.verdict``): inside the regime their threshold was set for, or calibrated
on a holdout. Elsewhere they would only be shown as informational, so by default they are not
computed, and audit.json says so (``not_computed``, with why) rather than showing them as 0 flagged.

``--criteria all`` computes every criterion that applies to a space; a list computes those (and
nn-ratio, the headline, always). ``--quality`` picks the quality figures: ``fast`` (the default)
compares the samples with a seeded subsample of the training set of the same size, the protocol of
the papers (Kynkaenniemi et al. 2019 and Naeem et al. 2020 compare equal-sized real and generated
sets), ``exact`` with the whole training set (up to ``quality.MAX_POINTS``), ``off`` computes none.
"""

from __future__ import annotations

from dataclasses import dataclass

from memaudit.criteria import CRITERIA, applies_in
from memaudit.errors import InputError

DEFAULT, ALL = "default", "all"
QUALITY_MODES = ("off", "fast", "exact")
DEFAULT_QUALITY = "fast"
HEADLINE_CRITERION = "nn-ratio"  # always computed: the paper's criterion, the headline


def parse_criteria(value) -> str | tuple[str, ...]:
    """``--criteria``: "default", "all", or names (comma-separated text or a list) of registered
    criteria, as "default", "all" or a tuple of names in registry order. Unknown names raise
    ``InputError`` naming the valid values."""
    if value is None:
        return DEFAULT
    names = [part.strip() for part in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    names = [name for name in names if name]
    valid = f"valid values are default, all, or a comma-separated list of {', '.join(CRITERIA)}"
    if not names:
        raise InputError(f"--criteria {value!r}: empty; {valid}")
    if names in ([DEFAULT], [ALL]):
        return names[0]
    unknown = [name for name in names if name not in CRITERIA]
    if unknown:
        raise InputError(f"--criteria {','.join(names)}: unknown criterion {unknown[0]!r}; {valid}")
    return tuple(name for name in CRITERIA if name in names)


def check_quality(value: str) -> str:
    if value not in QUALITY_MODES:
        raise InputError(f"--quality {value}: expected one of {', '.join(QUALITY_MODES)} (default {DEFAULT_QUALITY})")
    return value


@dataclass(frozen=True)
class Selection:
    """The criteria one feature space computes, and those it does not: by name, ``why`` (a
    sentence) and ``could_speak`` (computed, it could have coloured the verdict: only when a list
    given to --criteria leaves out such a criterion; the default never does)."""

    computed: tuple[str, ...]
    not_computed: dict[str, dict]


def select(criteria, space: str, image_shape, calibrated: bool, requested: frozenset = frozenset()) -> Selection:
    """Which criteria that apply in ``space`` are computed for images of ``image_shape`` (H, W, C).

    ``criteria`` is ``parse_criteria``'s value; ``calibrated``: a holdout is given, so every
    criterion may speak; ``requested``: criteria the user set a parameter of (a threshold, carlini-
    relative's alpha or n), computed by default too, since setting one is asking for it."""
    computed, skipped = [], {}
    for name, criterion in CRITERIA.items():
        if not applies_in(criterion, space):
            continue
        if name == "tiled-l2" and min(int(image_shape[0]), int(image_shape[1])) < 4:
            skipped[name] = {"why": "images under 4x4 pixels cannot be cut into 4x4 tiles", "could_speak": False}
            continue
        why = _why_not(criteria, name, criterion, space, image_shape, calibrated, requested)
        if why is None:
            computed.append(name)
        else:
            could_speak = calibrated or criterion.regime.outside(image_shape, space) is None
            skipped[name] = {"why": why, "could_speak": bool(could_speak)}
    return Selection(tuple(computed), skipped)


def _why_not(criteria, name, criterion, space, image_shape, calibrated, requested) -> str | None:
    """None when the criterion is computed, else why not (one sentence)."""
    if name == HEADLINE_CRITERION or criteria == ALL:
        return None
    if criteria != DEFAULT:
        return None if name in criteria else "left out by --criteria"
    if not criterion.extra_cost or calibrated or name in requested:
        return None
    outside = criterion.regime.outside(image_shape, space)
    if outside is None:
        return None  # it may speak uncalibrated here: the verdict needs it
    return (f"by default computed only where it could speak in the verdict, and here it could not ({outside}); "
            f"it costs {criterion.extra_cost}; give --criteria all, --criteria {name} or --holdout to compute it")


def describe(criteria, quality: str) -> dict:
    """audit.json's ``settings``: what was asked for."""
    return {"criteria": criteria if isinstance(criteria, str) else list(criteria), "quality": quality}
