"""Geometry of the report's inline SVG plots (no plotting library, no scripts)."""

from __future__ import annotations

import math

PALETTE = ("#b3261e", "#1f5fa8", "#2f8a4c", "#8a4fb3", "#c07a12", "#197a7a", "#5b6472", "#a8326e")
WIDTH, HEIGHT, MARGIN = 560, 180, 24


def histogram_bars(histogram: dict, threshold: float, memorized_below: bool = True) -> dict:
    """Bars of a score histogram over its own edges, red where a bin lies wholly on the memorized
    side of the threshold (below it, or above it for similarities)."""
    counts = list(histogram.get("counts", []))
    edges = list(histogram.get("edges", [])) or [0.0, 1.0]
    low, high = float(edges[0]), float(edges[-1])
    span = (high - low) or 1.0
    peak = max(counts, default=0) or 1
    plot_h = HEIGHT - MARGIN
    width = WIDTH / max(1, len(counts))
    bars = []
    for i, count in enumerate(counts):
        height = plot_h * count / peak
        left = edges[i] if i < len(edges) else low
        right = edges[i + 1] if i + 1 < len(edges) else high
        bars.append({"x": i * width, "y": plot_h - height, "w": max(width - 1, 0.5), "h": height, "count": count,
                     "low": left, "high": right,
                     "memorized": right <= threshold if memorized_below else left >= threshold})
    return {"bars": bars, "width": WIDTH, "height": HEIGHT, "plot_height": plot_h, "low": low, "high": high,
            "mid": (low + high) / 2, "threshold_x": WIDTH * min(max((threshold - low) / span, 0.0), 1.0)}


def overlaid_distributions(series: list[tuple[str, dict]]) -> dict:
    """One polyline per run: its histogram as shares of its samples, on a common scale."""
    plot_h = HEIGHT - MARGIN
    shares = []
    for _, histogram in series:
        counts = histogram.get("counts", [])
        total = sum(counts) or 1
        shares.append([c / total for c in counts])
    peak = max((max(s, default=0) for s in shares), default=0) or 1
    lines = []
    for index, ((name, _), share) in enumerate(zip(series, shares)):
        step = WIDTH / max(1, len(share))
        points = " ".join(f"{(i + 0.5) * step:.1f},{plot_h - plot_h * v / peak:.1f}" for i, v in enumerate(share))
        lines.append({"name": name, "points": points, "color": PALETTE[index % len(PALETTE)]})
    return {"lines": lines, "width": WIDTH, "height": HEIGHT, "plot_height": plot_h, "peak": peak}


def trend(points: list[dict]) -> dict:
    """Memorization ratio per run with its 95% interval, runs in the order given."""
    plot_h = HEIGHT - MARGIN
    step = WIDTH / max(1, len(points))
    marks = []
    for i, point in enumerate(points):
        low, high = point["ci95"]
        x = (i + 0.5) * step
        marks.append({"x": x, "y": plot_h * (1 - point["fraction"]), "y_low": plot_h * (1 - low),
                      "y_high": plot_h * (1 - high), "name": point["name"], "fraction": point["fraction"],
                      "color": PALETTE[i % len(PALETTE)]})
    path = " ".join(f"{m['x']:.1f},{m['y']:.1f}" for m in marks)
    return {"marks": marks, "path": path, "width": WIDTH, "height": HEIGHT, "plot_height": plot_h}


def size_curves(series: list[dict], threshold: float) -> dict:
    """Memorization ratio against training-set size (log2 axis), one curve per search.

    ``series``: ``{"name", "sizes": [{"size", "mean", "ci95"}]}``. The threshold 1 - eps is a
    dashed line; each point has its 95% interval.
    """
    plot_h, left, right = HEIGHT - MARGIN, 36, 12
    sizes = [s["size"] for line in series for s in line["sizes"]] or [1]
    low, high = math.log2(min(sizes)), math.log2(max(sizes))
    span = (high - low) or 1.0

    def x_of(size: float) -> float:
        centre = 0.5 if high == low else (math.log2(size) - low) / span
        return left + (WIDTH - left - right) * centre

    def y_of(value: float) -> float:
        return plot_h * (1 - min(max(value, 0.0), 1.0)) + 4

    lines = []
    for index, line in enumerate(series):
        marks = [{"x": x_of(s["size"]), "y": y_of(s["mean"]), "y_low": y_of(s["ci95"][0]), "y_high": y_of(s["ci95"][1]),
                  "size": s["size"], "mean": s["mean"]} for s in line["sizes"]]
        lines.append({"name": line["name"], "color": PALETTE[index % len(PALETTE)], "marks": marks,
                      "points": " ".join(f"{m['x']:.1f},{m['y']:.1f}" for m in marks)})
    ticks = sorted({s for s in sizes})
    return {"lines": lines, "width": WIDTH, "height": HEIGHT + 16, "plot_height": plot_h + 4, "left": left,
            "threshold_y": y_of(threshold), "threshold": threshold,
            "ticks": [{"x": x_of(s), "label": s} for s in ticks], "y_ticks": [{"y": y_of(v), "label": v} for v in (0, 0.5, 1)]}


def roc_curves(series: list[dict], floor: float = 1e-3) -> dict:
    """ROC curves on a log FPR axis (Carlini et al. 2022: the low-FPR region is what matters).

    ``series``: ``{"name", "fpr": [...], "tpr": [...]}``. FPR below ``floor`` is drawn at the floor;
    the chance line is TPR = FPR.
    """
    plot_h, left, right = HEIGHT + 60, 40, 12
    low = math.log10(floor)

    def x_of(fpr: float) -> float:
        return left + (WIDTH - left - right) * (math.log10(max(fpr, floor)) - low) / -low

    def y_of(tpr: float) -> float:
        return 4 + plot_h * (1 - min(max(tpr, 0.0), 1.0))

    lines = []
    for index, line in enumerate(series):
        points = " ".join(f"{x_of(f):.1f},{y_of(t):.1f}" for f, t in zip(line["fpr"], line["tpr"]))
        lines.append({"name": line["name"], "color": PALETTE[index % len(PALETTE)], "points": points})
    chance = " ".join(f"{x_of(10 ** (low + i * -low / 20)):.1f},{y_of(10 ** (low + i * -low / 20)):.1f}" for i in range(21))
    ticks = [{"x": x_of(10.0 ** e), "label": f"{10.0 ** e:g}"} for e in range(int(low), 1)]
    return {"lines": lines, "chance": chance, "width": WIDTH, "height": plot_h + 24, "plot_height": plot_h + 4,
            "left": left, "ticks": ticks, "y_ticks": [{"y": y_of(v), "label": v} for v in (0, 0.5, 1)]}
