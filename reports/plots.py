"""Geometry of the pages' inline SVG plots; ``templates/_plot.html.j2`` draws them.

Hand-written SVG rather than a plotting library: the figures are few and simple (bars, lines,
points with intervals), the markup stays a few kilobytes of real text under the pages' CSP, legend
and line colours are plain attributes a browser test can compare, and each plot can be laid out
twice, once for a wide screen and once for a phone (CSS shows the one that fits), so text keeps a
readable size at 390 px instead of shrinking with a scaled-down drawing.

Every builder returns a plot: ``{"label", "legend": [{"name", "color"}], "wide": figure,
"narrow": figure}`` (histograms add ``"wide_log"``, ``"narrow_log"`` and ``"log_default"``). A
figure holds pixel coordinates inside its viewBox: the frame, ticks, axis labels, bars, series
(a polyline only for ordered data, marks with 95% intervals) and reference rules. Items carry the
index of their legend entry (``series``), so a legend's swatch and the marks it names share one colour.
"""

from __future__ import annotations

import math
from typing import Callable

# Series colours leave out red and green: on these pages red means "memorized", green "not".
PALETTE = ("#1f5fa8", "#c07a12", "#8a4fb3", "#197a7a", "#a8326e", "#5b6472", "#6b7d1f", "#8c564b")
MEMORIZED, NEUTRAL, REFERENCE = "#b3261e", "#7a8ca5", "#9aa3ae"
SIZES = {"wide": (880, 300), "narrow": (380, 260)}
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 16, 44  # margins for tick labels and axis titles
HEAVY_TAIL = 0.02  # bins a linear axis draws under 2% of the tallest: the histogram opens on a log axis


def _frame(width: int, height: int) -> dict:
    return {"width": width, "height": height, "left": LEFT, "right": width - RIGHT, "top": TOP,
            "bottom": height - BOTTOM, "x_ticks": [], "y_ticks": [], "bars": [], "series": [], "rules": []}


def _linear(lo: float, hi: float, a: float, b: float) -> Callable[[float], float]:
    span = (hi - lo) or 1.0
    return lambda v: a + (b - a) * (v - lo) / span


def _label(value: float) -> str:
    return f"{value:.4g}"


def nice_ticks(lo: float, hi: float, target: int) -> list[float]:
    """About ``target`` round values (1, 2, 2.5 or 5 times a power of ten apart) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / max(target, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9)
    count = int(math.floor(hi / step + 1e-9)) - first + 1
    return [round((first + i) * step, 12) for i in range(count)]


def _percent_axis(figure: dict, y_of: Callable[[float], float], top: float = 1.0) -> None:
    figure["y_ticks"] = [{"at": y_of(v), "label": f"{100 * v:g}%"} for v in nice_ticks(0.0, top, 4)]


def _rounded(item):
    """Coordinates to a tenth of a pixel of the viewBox: finer digits only make the page longer."""
    if isinstance(item, float):
        return round(item, 1)
    if isinstance(item, dict):
        return {key: _rounded(value) for key, value in item.items()}
    if isinstance(item, list):
        return [_rounded(value) for value in item]
    return item


def _both(label: str, legend: list[dict], draw: Callable[[dict], None], **extra) -> dict:
    plot = {"label": label, "legend": legend, **extra}
    for kind, (width, height) in SIZES.items():
        figure = _frame(width, height)
        draw(figure)
        plot[kind] = _rounded(figure)
    return plot


def histogram_bars(histogram: dict, threshold: float, memorized_below: bool = True, score: str = "score") -> dict:
    """Counts of a score histogram over its own edges, red where a bin lies wholly on the memorized
    side of the threshold (below it, or above it for similarities); linear and log count axes."""
    counts = [int(c) for c in histogram.get("counts", [])]
    edges = [float(e) for e in histogram.get("edges", [])]
    if len(edges) != len(counts) + 1:  # a hand-made histogram without edges: bins over [0, 1]
        edges = [i / max(len(counts), 1) for i in range(len(counts) + 1)] if counts else [0.0, 1.0]
    low, high = edges[0], edges[-1]
    peak = max(counts, default=0) or 1
    legend = [{"name": "not memorized", "color": NEUTRAL}, {"name": "memorized", "color": MEMORIZED}]

    def draw(log: bool) -> Callable[[dict], None]:
        def build(f: dict) -> None:
            x_of = _linear(low, high, f["left"], f["right"])
            scale = (lambda c: math.log10(1 + c)) if log else float
            y_of = _linear(0.0, scale(peak), f["bottom"], f["top"])
            for i, count in enumerate(counts):
                memorized = edges[i + 1] <= threshold if memorized_below else edges[i] >= threshold
                x0, x1 = x_of(edges[i]), x_of(edges[i + 1])
                top = y_of(scale(count))
                f["bars"].append({"x": x0 + 0.5, "y": top, "w": max(x1 - x0 - 1, 0.5), "h": f["bottom"] - top,
                                  "series": int(memorized), "color": legend[int(memorized)]["color"],
                                  "title": f"{count} samples in [{_label(edges[i])}, {_label(edges[i + 1])})"})
            if log:
                decades = [10 ** e for e in range(int(math.log10(peak)) + 1)]
                f["y_ticks"] = [{"at": y_of(0.0), "label": "0"}] + [{"at": y_of(scale(t)), "label": f"{t:g}"} for t in decades]
            else:
                f["y_ticks"] = [{"at": y_of(t), "label": f"{t:g}"} for t in nice_ticks(0, peak, 4) if t == int(t)]
            target = 8 if f["width"] > 600 else 4
            f["x_ticks"] = [{"at": x_of(t), "label": _label(t)} for t in nice_ticks(low, high, target)]
            f["x_label"], f["y_label"] = score, "samples (log scale)" if log else "samples"
            x = x_of(min(max(threshold, low), high))
            f["rules"].append({"x1": x, "x2": x, "y1": f["top"], "y2": f["bottom"],
                               "label": f"threshold {_label(threshold)}", "lx": x + 4, "ly": f["top"] + 10,
                               "anchor": "start" if x < (f["left"] + f["right"]) / 2 else "end"})
            if f["rules"][-1]["anchor"] == "end":
                f["rules"][-1]["lx"] = x - 4
        return build

    nonzero = [c for c in counts if c]
    plot = _both(f"histogram of {score}", legend, draw(False),
                 log_default=bool(nonzero) and min(nonzero) < HEAVY_TAIL * peak)
    log_plot = _both("", legend, draw(True))
    plot["wide_log"], plot["narrow_log"] = log_plot["wide"], log_plot["narrow"]
    return plot


def overlaid_distributions(series: list[tuple[str, dict]], edges: list[float] | None = None,
                           x_label: str = "", threshold: float | None = None) -> dict:
    """One line per set: its histogram as shares of its members, on common axes (bin centres)."""
    shares = []
    for _, histogram in series:
        counts = histogram.get("counts", [])
        total = sum(counts) or 1
        shares.append([c / total for c in counts])
    bins = max((len(s) for s in shares), default=0)
    if not edges or len(edges) != bins + 1:
        edges = [i / max(bins, 1) for i in range(bins + 1)]
    peak = max((max(s, default=0.0) for s in shares), default=0.0) or 1.0
    top = nice_ticks(0.0, peak, 4)
    top = top[-1] if top and top[-1] >= peak else min(1.0, peak * 1.1)
    legend = [{"name": name, "color": PALETTE[i % len(PALETTE)]} for i, (name, _) in enumerate(series)]

    def draw(f: dict) -> None:
        x_of = _linear(edges[0], edges[-1], f["left"], f["right"])
        y_of = _linear(0.0, top, f["bottom"], f["top"])
        for index, share in enumerate(shares):
            centres = [(edges[i] + edges[i + 1]) / 2 for i in range(len(share))]
            f["series"].append({"series": index, "color": legend[index]["color"], "name": legend[index]["name"],
                                "points": " ".join(f"{x_of(x):.1f},{y_of(v):.1f}" for x, v in zip(centres, share)),
                                "marks": []})
        _percent_axis(f, y_of, top)
        f["x_ticks"] = [{"at": x_of(t), "label": _label(t)}
                        for t in nice_ticks(edges[0], edges[-1], 8 if f["width"] > 600 else 4)]
        f["x_label"], f["y_label"] = x_label, "share of the set"
        if threshold is not None and edges[0] <= threshold <= edges[-1]:
            x = x_of(threshold)
            f["rules"].append({"x1": x, "x2": x, "y1": f["top"], "y2": f["bottom"], "label": f"threshold {_label(threshold)}",
                               "lx": x + 4, "ly": f["top"] + 10, "anchor": "start"})

    return _both(f"distributions of {x_label}", legend, draw)


def interval_points(points: list[dict], y_label: str = "memorization ratio", ordered: bool = False,
                    highlight: str | None = None, x_label: str = "") -> dict:
    """A share per run with its 95% interval, runs in the order given on a categorical axis.

    ``points``: ``{"name", "fraction", "ci95"}`` and optionally a shorter tick ``"label"``. Runs are joined by a line only when ``ordered``
    (snapshots of one training run); unrelated runs stay separate points. ``highlight`` names the
    point drawn red (the reported snapshot), with its own legend entry.
    """
    legend = ([{"name": "per snapshot", "color": PALETTE[0]}] if ordered
              else [{"name": p["name"], "color": PALETTE[i % len(PALETTE)]} for i, p in enumerate(points)])
    if highlight is not None:
        legend.append({"name": f"reported ({highlight})", "color": MEMORIZED})

    def draw(f: dict) -> None:
        step = (f["right"] - f["left"]) / max(1, len(points))
        y_of = _linear(0.0, 1.0, f["bottom"], f["top"])
        chars = max(3, int(step / 7))
        every = max(1, math.ceil(len(points) * 7 * 6 / (f["right"] - f["left"]))) if ordered else 1
        marks = []
        for i, point in enumerate(points):
            low, high = point["ci95"]
            series = len(legend) - 1 if highlight is not None and point["name"] == highlight else (0 if ordered else i)
            x = f["left"] + (i + 0.5) * step
            marks.append({"x": x, "y": y_of(point["fraction"]), "y_low": y_of(low), "y_high": y_of(high),
                          "series": series, "color": legend[series]["color"],
                          "title": f"{point['name']}: {100 * point['fraction']:.1f}% "
                                   f"(95% interval {100 * low:.1f}% to {100 * high:.1f}%)",
                          "text": f"{100 * point['fraction']:.1f}%" if len(points) * 48 < f["right"] - f["left"] else "",
                          "anchor": "end" if x > f["right"] - 48 else "start"})  # keep the value inside the drawing
            name = str(point.get("label", point["name"]))
            if i % every == 0:
                f["x_ticks"].append({"at": x, "label": name if len(name) <= chars else name[:chars - 1] + "\u2026"})
        if ordered:
            f["series"].append({"series": 0, "color": legend[0]["color"], "name": legend[0]["name"], "marks": [],
                                "points": " ".join(f"{m['x']:.1f},{m['y']:.1f}" for m in marks)})
        f["series"].append({"series": None, "points": "", "marks": marks})
        _percent_axis(f, y_of)
        f["x_label"], f["y_label"] = x_label or ("snapshot" if ordered else "run"), y_label

    return _both(f"{y_label} by {'snapshot' if ordered else 'run'}", legend, draw)


def size_curves(series: list[dict], threshold: float) -> dict:
    """Memorization ratio against training-set size (log2 axis), one curve per search.

    ``series``: ``{"name", "sizes": [{"size", "mean", "ci95"}]}``. Sizes are an ordered sweep, so
    each search is a line; the threshold 1 - eps is a dashed rule; each point has its 95% interval.
    """
    sizes = sorted({s["size"] for line in series for s in line["sizes"]}) or [1]
    low, high = math.log2(sizes[0]), math.log2(sizes[-1])
    legend = [{"name": line["name"], "color": PALETTE[i % len(PALETTE)]} for i, line in enumerate(series)]

    def draw(f: dict) -> None:
        inset = 12  # keep end points and their intervals off the frame
        x_log = _linear(low, high, f["left"] + inset, f["right"] - inset)
        x_of = (lambda s: (f["left"] + f["right"]) / 2) if high == low else (lambda s: x_log(math.log2(s)))
        y_of = _linear(0.0, 1.0, f["bottom"], f["top"])
        for index, line in enumerate(series):
            marks = [{"x": x_of(s["size"]), "y": y_of(s["mean"]), "y_low": y_of(s["ci95"][0]), "y_high": y_of(s["ci95"][1]),
                      "series": index, "color": legend[index]["color"], "text": "",
                      "title": f"{line['name']}: |D| = {s['size']}, {100 * s['mean']:.1f}%"} for s in line["sizes"]]
            f["series"].append({"series": index, "color": legend[index]["color"], "name": line["name"], "marks": marks,
                                "points": " ".join(f"{m['x']:.1f},{m['y']:.1f}" for m in marks)})
        room = max(1, int((f["right"] - f["left"]) / 44))  # tick labels need about 44 px each
        every = max(1, math.ceil(len(sizes) / room))
        f["x_ticks"] = [{"at": x_of(s), "label": f"{s:g}"} for s in sizes[::every]]
        _percent_axis(f, y_of)
        y = y_of(threshold)
        f["rules"].append({"x1": f["left"], "x2": f["right"], "y1": y, "y2": y, "label": f"1 \u2212 \u03b5 = {100 * threshold:g}%",
                           "lx": f["right"] - 4, "ly": y + 14, "anchor": "end"})  # under the rule: small sizes sit above it
        f["x_label"], f["y_label"] = "training-set size |D| (log scale)", "memorization ratio"

    return _both("memorization ratio against training-set size", legend, draw)


def roc_curves(series: list[dict], floor: float = 1e-3) -> dict:
    """ROC curves on a log FPR axis (Carlini et al. 2022: the low-FPR region is what matters).

    ``series``: ``{"name", "fpr": [...], "tpr": [...]}``. FPR below ``floor`` is drawn at the floor;
    the chance line TPR = FPR is the last legend entry.
    """
    low = math.log10(floor)
    legend = [{"name": line["name"], "color": PALETTE[i % len(PALETTE)]} for i, line in enumerate(series)]
    legend.append({"name": "chance", "color": REFERENCE})

    def draw(f: dict) -> None:
        x_log = _linear(low, 0.0, f["left"], f["right"])

        def x_of(fpr: float) -> float:
            return x_log(math.log10(max(fpr, floor)))

        y_of = _linear(0.0, 1.0, f["bottom"], f["top"])
        for index, line in enumerate(series):
            f["series"].append({"series": index, "color": legend[index]["color"], "name": line["name"], "marks": [],
                                "points": " ".join(f"{x_of(a):.1f},{y_of(min(max(b, 0.0), 1.0)):.1f}"
                                                   for a, b in zip(line["fpr"], line["tpr"]))})
        grid = [10 ** (low + i * -low / 40) for i in range(41)]
        f["series"].append({"series": len(legend) - 1, "color": REFERENCE, "name": "chance", "marks": [], "dashed": True,
                            "points": " ".join(f"{x_of(v):.1f},{y_of(v):.1f}" for v in grid)})
        f["x_ticks"] = [{"at": x_of(10.0 ** e), "label": f"{10.0 ** e:g}"} for e in range(math.ceil(low), 1)]
        f["y_ticks"] = [{"at": y_of(v), "label": f"{v:g}"} for v in nice_ticks(0.0, 1.0, 4)]
        f["x_label"], f["y_label"] = "false-positive rate (log scale)", "true-positive rate"

    return _both("ROC curves", legend, draw)
