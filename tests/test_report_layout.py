"""The report, compare and emm pages in real Chromium at a desktop and a phone width: nothing wider
than the screen, plots that fill their card with legible text, and legends whose colours are the
colours of the marks they name."""

import json

import numpy as np
import pytest
from test_page_values import emm_run
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.reports import render_report

runner = CliRunner()
PHONE, DESKTOP = 390, 1280

# Elements wider than the screen are allowed only inside a container that scrolls them (a table in its card).
LAYOUT = """() => {
  const W = document.documentElement.clientWidth;
  const scrolls = e => { for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) {
      if (['auto', 'scroll'].includes(getComputedStyle(p).overflowX)) return true; } return false; };
  const outside = [...document.querySelectorAll('body *')].filter(e => {
      const r = e.getBoundingClientRect(); return r.width > 0 && (r.right > W + 0.5 || r.left < -0.5) && !scrolls(e); })
    .map(e => e.tagName + '.' + e.className);
  const plots = [...document.querySelectorAll('.plot')].map(plot => {
    const shown = [...plot.querySelectorAll('svg')].filter(s => getComputedStyle(s).display !== 'none');
    const svg = shown[0], box = svg.getBoundingClientRect(), holder = plot.getBoundingClientRect();
    const legend = {};
    plot.querySelectorAll('.legend .key').forEach(k => {
      legend[k.dataset.series] = getComputedStyle(k.querySelector('.swatch')).backgroundColor; });
    const marks = [...svg.querySelectorAll('[data-series]')].map(e => {
      const s = getComputedStyle(e);
      return [e.dataset.series, ['polyline', 'line'].includes(e.tagName) ? s.stroke : s.fill]; });
    const text = [...svg.querySelectorAll('text')].filter(t => t.textContent.trim())
      .map(t => t.getBoundingClientRect().height);
    const inside = [...svg.querySelectorAll('circle, rect, polyline, text')].every(e => {
      const r = e.getBoundingClientRect();
      return r.width === 0 || (r.left >= box.left - 1 && r.right <= box.right + 1 && r.top >= box.top - 1 && r.bottom <= box.bottom + 1); });
    return {id: plot.id, shown: shown.length, kind: svg.getAttribute('class'), right: box.right, width: box.width,
            holder: holder.width, legend, marks, minText: Math.min(...text), inside};
  });
  return {W, scrollWidth: document.documentElement.scrollWidth, outside, plots};
}"""


def check_page(visit, path, width):
    """Layout facts of one page at one width, asserted; returns them for page-specific checks."""
    page = visit(path, width)
    assert page.errors == [] and page.external_requests() == []
    facts = page.page.evaluate(LAYOUT)
    assert facts["scrollWidth"] <= width, f"{path.name} at {width} px is {facts['scrollWidth']} px wide"
    assert facts["outside"] == [], f"{path.name} at {width} px: outside the screen: {facts['outside'][:5]}"
    assert facts["plots"], f"{path.name} has no plot"
    for plot in facts["plots"]:
        where = f"{path.name} #{plot['id']} at {width} px"
        assert plot["shown"] == 1, where  # one drawing per plot: the wide or the narrow one
        assert plot["kind"].startswith("wide" if width > 640 else "narrow"), where
        assert plot["right"] <= width and plot["width"] >= 0.95 * plot["holder"], where  # fills its card, fits
        assert plot["inside"], f"{where}: a mark or label is clipped by the drawing's edge"
        assert plot["minText"] >= 9, f"{where}: text {plot['minText']:.1f} px high"
        assert plot["marks"], where
        for series, colour in plot["marks"]:
            assert plot["legend"].get(series) == colour, f"{where}: series {series} drawn {colour}, legend {plot['legend']}"
        assert {s for s, _ in plot["marks"]} == set(plot["legend"]), f"{where}: a legend entry names nothing drawn"
    return page, facts


def audit(out, *args, train="digits:50", model="optimal", n=30):
    result = runner.invoke(app, ["audit", *([model] if model else []), "--train", str(train), "--out", str(out),
                                 "--n", str(n), "--quiet", *map(str, args)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "audit.json").read_text())


@pytest.fixture(scope="module")
def report_with_every_plot(tmp_path_factory):
    """A real audit with held-out images (score histograms, the distance overlay), rendered again
    with a snapshot trajectory added to its audit.json (the over-training plot)."""
    out = tmp_path_factory.mktemp("report") / "a-run-folder-with-a-rather-long-name-for-a-checkpoint"
    document = audit(out, "--holdout", "digits:50:rest", n=40)
    document["snapshots"] = {"max_at": "snapshot-000300", "tied_at": ["snapshot-000300"], "skipped": [],
                             "trajectory": [{"snapshot": f"snapshot-{s:06d}", "step": s, "memorized": m, "n": 40,
                                             "memorization_ratio": m / 40, "ci95": [max(m / 40 - 0.1, 0), min(m / 40 + 0.1, 1)]}
                                            for s, m in ((100, 4), (200, 22), (300, 40), (400, 39), (500, 30), (600, 31))]}
    (out / "report.html").write_text(render_report(document))
    return out / "report.html"


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_report_fits_and_legends_match(report_with_every_plot, visit, width):
    page, facts = check_page(visit, report_with_every_plot, width)
    ids = [p["id"] for p in facts["plots"]]
    assert ids == ["trajectory", *[f"histogram-{i}" for i in range(1, 6)], "holdout-1"]


def test_histogram_log_scale_is_a_click_away(report_with_every_plot, visit):
    page = visit(report_with_every_plot, PHONE)
    shown = "() => [...document.querySelectorAll('#histogram-1 svg')].filter(s => getComputedStyle(s).display !== 'none').map(s => s.getAttribute('class'))"
    assert page.page.evaluate(shown) == ["narrow linear"]  # 40 samples in one bin: no heavy tail
    page.page.locator("label[for='histogram-1-log']").click()
    assert page.page.evaluate(shown) == ["narrow log"]
    assert "samples (log scale)" in page.page.locator("#histogram-1 svg.narrow.log").text_content()


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """Three audits of the same training set: the optimal denoiser (100%, at the top of the axis),
    noise (0%), and a half-copying mixture, under long folder names."""
    root = tmp_path_factory.mktemp("compare")
    copies = root / "optimal-denoiser-copies-every-training-image"
    audit(copies, n=20)
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    np.savez(root / "noise.npz", images=noise)
    audit(root / "uniform-noise-memorizes-nothing-at-all", "--samples", root / "noise.npz", model=None)
    mixed = np.concatenate([np.load(copies / "samples.npz")["images"][:10], noise[:10]])
    np.savez(root / "mixed.npz", images=mixed)
    audit(root / "half-and-half", "--samples", root / "mixed.npz", model=None)
    names = ["optimal-denoiser-copies-every-training-image", "uniform-noise-memorizes-nothing-at-all", "half-and-half"]
    result = runner.invoke(app, ["compare", *[str(root / n) for n in names], "--out", str(root / "cmp")])
    assert result.exit_code == 0, result.output
    return root / "cmp" / "compare.html"


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_compare_fits_and_plots_runs_as_points(comparison, visit, width):
    page, facts = check_page(visit, comparison, width)
    by_run = next(p for p in facts["plots"] if p["id"] == "by-run")
    assert len(by_run["legend"]) == 3
    # separate runs are points with interval bars: no line joins them
    kind = "wide" if width > 640 else "narrow"
    assert page.page.locator(f"#by-run svg.{kind} polyline").count() == 0
    assert page.page.locator(f"#by-run svg.{kind} circle").count() == 3
    assert page.page.locator(f"#by-run svg.{kind} line[data-series]").count() == 3 * 3  # bar and two caps each
    titles = page.page.locator(f"#by-run svg.{kind} circle title").all_text_contents()
    assert titles[0].startswith("optimal-denoiser-copies-every-training-image: 100.0%")


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_emm_page_fits_and_legends_match(tmp_path, monkeypatch, visit, width):
    emm_run(tmp_path, monkeypatch)
    page, facts = check_page(visit, tmp_path / "emm.html", width)
    curves = facts["plots"][0]
    assert curves["id"] == "size-curves" and len(curves["legend"]) == 2


@pytest.fixture(scope="module")
def mia_page(tmp_path_factory):
    """mia.html of two attacks on the shipped digits-100 checkpoint (30 members, 30 non-members)."""
    from pathlib import Path

    import memaudit

    out = tmp_path_factory.mktemp("mia") / "mia"
    checkpoint = Path(memaudit.__file__).parent / "assets" / "digits100-ddim"
    result = runner.invoke(app, ["mia", str(checkpoint), "--members", "digits:100", "--nonmembers", "digits:100:rest",
                                 "--limit", "30", "--attack", "pia", "--attack", "score-norm", "--out", str(out),
                                 "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    return out / "mia.html"


@pytest.mark.parametrize("width", [PHONE, DESKTOP])
def test_mia_page_fits_and_legends_match(mia_page, visit, width):
    page, facts = check_page(visit, mia_page, width)
    roc = facts["plots"][0]
    assert roc["id"] == "roc" and len(roc["legend"]) == 3  # two attacks and chance
