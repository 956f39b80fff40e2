"""report.html: one self-contained page rendered from audit.json alone.

Everything reaches the page through jinja2 with autoescaping; images are inline PNG data URIs and
any image field that is not one is dropped, so a crafted audit.json cannot make the page load or
run anything. The page has no scripts and requests nothing from the network.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2

from memaudit import outputs
from memaudit.storage import write_text_atomic

_PNG_URI = re.compile(r"^data:image/png;base64,[A-Za-z0-9+/=]+$")
_HIST_WIDTH, _HIST_HEIGHT = 560, 160


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("memaudit.reports", "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = lambda value: f"{100.0 * float(value):.1f}%"
    env.filters["num"] = lambda value: f"{float(value):.4g}"
    env.filters["safe_png"] = lambda value: value if isinstance(value, str) and _PNG_URI.match(value) else ""
    return env


def _histogram_bars(histogram: dict, threshold: float) -> dict:
    """Bar rectangles of the nn-ratio histogram, in SVG user units."""
    counts = histogram.get("counts", [])
    edges = histogram.get("edges", [])
    peak = max(counts, default=0) or 1
    width = _HIST_WIDTH / max(1, len(counts))
    bars = []
    for i, count in enumerate(counts):
        height = (_HIST_HEIGHT - 20) * count / peak
        bars.append({"x": i * width, "y": _HIST_HEIGHT - 20 - height, "w": width - 1, "h": height,
                     "count": count, "low": edges[i] if i < len(edges) else 0,
                     "memorized": i + 1 < len(edges) and edges[i + 1] <= threshold})
    return {"bars": bars, "width": _HIST_WIDTH, "height": _HIST_HEIGHT,
            "threshold_x": _HIST_WIDTH * min(max(threshold, 0.0), 1.0)}


def render_report(audit: dict) -> str:
    """The HTML page for one audit."""
    criterion = audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
    template = _environment().get_template("report.html.j2")
    return template.render(
        audit=audit,
        criterion=criterion,
        histogram=_histogram_bars(criterion.get("histogram", {}), float(criterion["threshold"])),
    )


def write_report(run_dir: Path) -> Path:
    """Render ``run_dir/report.html`` from ``run_dir/audit.json``."""
    audit = outputs.read_audit(run_dir)
    path = Path(run_dir) / outputs.REPORT_HTML
    write_text_atomic(path, render_report(audit))
    return path
