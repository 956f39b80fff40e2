"""What the pages draw and print: plot geometry against the data, settings as people write them,
and the figures the run files record (no browser; see test_report_layout.py for the pages in Chromium)."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.reports import plots, render_emm, render_report, show

runner = CliRunner()


# --- plot geometry (coordinates are rounded to 0.1 px of the viewBox) ------------------------------


@pytest.mark.parametrize("lo,hi,target", [(0, 1, 4), (0, 792.578072, 8), (0, 4, 8), (0.002, 0.97, 5), (0, 37, 4),
                                          (-3, 3, 6)])
def test_nice_ticks_are_round_evenly_spaced_and_inside(lo, hi, target):
    ticks = plots.nice_ticks(lo, hi, target)
    assert ticks and all(lo - 1e-9 <= t <= hi + 1e-9 for t in ticks)
    steps = np.diff(ticks)
    assert np.allclose(steps, steps[0])
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    assert target / 2.5 <= len(ticks) <= 2 * target + 1
    # no round value of that step is left out at either end
    assert ticks[0] - steps[0] < lo - 1e-9 and ticks[-1] + steps[0] > hi + 1e-9


def test_histogram_bars_follow_counts_and_edges():
    edges = [0.0, 0.25, 0.5, 0.75, 1.0]
    counts = [40, 10, 0, 5]
    plot = plots.histogram_bars({"edges": edges, "counts": counts}, threshold=0.5, memorized_below=True)
    for kind in ("wide", "narrow"):
        f = plot[kind]
        height = f["bottom"] - f["top"]
        width = f["right"] - f["left"]
        for bar, count, left in zip(f["bars"], counts, edges):
            assert bar["h"] == pytest.approx(height * count / 40, abs=0.051)  # linear: height proportional to the count
            assert bar["x"] - 0.5 == pytest.approx(f["left"] + width * left, abs=0.051)
        assert [b["series"] for b in f["bars"]] == [1, 1, 0, 0]  # memorized: bins wholly below 0.5
        # y ticks label the counts at their heights
        for tick in f["y_ticks"]:
            assert f["bottom"] - tick["at"] == pytest.approx(height * float(tick["label"]) / 40, abs=0.11)
        assert f["rules"][0]["x1"] == pytest.approx(f["left"] + width * 0.5, abs=0.051)
    log = plot["wide_log"]
    height = log["bottom"] - log["top"]
    for bar, count in zip(log["bars"], counts):  # log axis: height proportional to log10(1 + count)
        assert bar["h"] == pytest.approx(height * math.log10(1 + count) / math.log10(41), abs=0.051)
    assert [t["label"] for t in log["y_ticks"]] == ["0", "1", "10"]


def test_histograms_open_on_a_log_axis_only_for_heavy_tails():
    heavy = plots.histogram_bars({"edges": [0, 1, 2, 3], "counts": [5000, 40, 3]}, 1.0)
    even = plots.histogram_bars({"edges": [0, 1, 2, 3], "counts": [50, 40, 3]}, 1.0)
    assert heavy["log_default"] and not even["log_default"]


def test_similarity_histograms_colour_bins_above_the_threshold():
    plot = plots.histogram_bars({"edges": [0.0, 0.5, 1.0], "counts": [3, 4]}, 0.5, memorized_below=False)
    assert [b["series"] for b in plot["wide"]["bars"]] == [0, 1]


def test_runs_are_points_with_intervals_and_no_line_and_100_percent_fits():
    points = [{"name": "a", "fraction": 1.0, "ci95": [0.9, 1.0]}, {"name": "b", "fraction": 0.25, "ci95": [0.1, 0.4]}]
    plot = plots.interval_points(points)
    for kind in ("wide", "narrow"):
        f = plot[kind]
        assert all(not s["points"] for s in f["series"])  # separate runs: nothing joins them
        marks = f["series"][0]["marks"]
        height = f["bottom"] - f["top"]
        for mark, point in zip(marks, points):
            assert mark["y"] == pytest.approx(f["bottom"] - height * point["fraction"], abs=0.051)
            assert mark["y_low"] == pytest.approx(f["bottom"] - height * point["ci95"][0], abs=0.051)
            assert mark["y_high"] == pytest.approx(f["bottom"] - height * point["ci95"][1], abs=0.051)
        assert marks[0]["y"] - 4.5 >= 0  # the 100% point and its marker lie inside the drawing
    assert [k["color"] for k in plot["legend"]] == [m["color"] for m in plot["wide"]["series"][0]["marks"]]
    ordered = plots.interval_points(points, ordered=True, highlight="a")
    assert any(s["points"] for s in ordered["wide"]["series"])  # snapshots of one run: a line
    assert ordered["legend"][-1]["color"] == plots.MEMORIZED and ordered["wide"]["series"][-1]["marks"][0]["series"] == 1


def test_series_colours_never_use_the_memorized_red():
    assert plots.MEMORIZED not in plots.PALETTE
    curves = plots.size_curves([{"name": f"s{i}", "sizes": [{"size": 10, "mean": 0.5, "ci95": [0.4, 0.6]}]}
                                for i in range(9)], 0.9)
    assert plots.MEMORIZED not in [k["color"] for k in curves["legend"]]


def test_size_curves_use_a_log2_axis():
    sizes = [{"size": s, "mean": m, "ci95": [m, m]} for s, m in ((10, 1.0), (20, 0.9), (40, 0.5), (80, 0.1))]
    f = plots.size_curves([{"name": "x", "sizes": sizes}], 0.9)["wide"]
    xs = [m["x"] for m in f["series"][0]["marks"]]
    assert np.allclose(np.diff(xs), np.diff(xs)[0], atol=0.11)  # doubling |D| is one equal step
    assert f["rules"][0]["y1"] == pytest.approx(f["series"][0]["marks"][1]["y"], abs=0.11)  # 1 - eps at 90%


# --- values as people write them -----------------------------------------------------------------


def test_show_writes_settings_as_people_write_them():
    assert show(None) == "none" and show(True) == "yes" and show(False) == "no"
    assert show({"width": 16, "attention": None}) == "width 16, attention none"
    assert show([1, 2, 4]) == "1, 2, 4" and show(0.1 + 0.2) == "0.3" and show("edm") == "edm"


def test_report_provenance_prints_no_python_reprs(tmp_path):
    result = runner.invoke(app, ["audit", "optimal", "--train", "digits:30", "--out", str(tmp_path), "--n", "10", "--quiet"])
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "audit.json").read_text())
    audit["model"]["settings"].update(guidance_scale=None, eta=0.0, clip_sample=True, kwargs={"width": 16})
    audit["provenance"]["torch"] = None
    html = render_report(audit)
    provenance = html[html.index("<h2>Provenance</h2>"):]
    assert "None" not in provenance and "True" not in provenance and "{&#39;" not in provenance
    assert "<th>guidance scale</th><td class=\"mono\">none</td>" in provenance
    assert "<th>kwargs</th><td class=\"mono\">width 16</td>" in provenance and "torch none" in provenance


def test_emm_page_recipe_and_caption(tmp_path, monkeypatch):
    """emm.html from a real `memaudit emm` run (the trainings replaced by fixed ratios): the recipe
    table prints settings, not Python reprs, and red in the table is never a curve's colour."""
    emm = emm_run(tmp_path, monkeypatch)
    search = emm["searches"][0]
    search["settings"].update(arch_kwargs={"width": 16}, resume=None, ema=True)
    html = render_emm(emm)
    recipe = html[html.index("<h2>Recipe</h2>"):]
    assert "None" not in recipe and "True" not in recipe and "{&#39;" not in recipe
    assert "width 16" in recipe and ">yes<" in recipe
    # one seed: passing points stopped at their first pass, and the page says so rather than "converged"
    stopped = [p for s in emm["searches"] for p in s["points"] if p["stopped_at_pass"] is not None]
    assert stopped and all(p["memorization_ratio"] >= 0.9 for p in stopped)
    assert html.count("stopped at its first pass") == len(stopped)
    assert "red: memorizes" not in html and plots.MEMORIZED.lower() not in [k["color"] for k in
                                                                         plots.size_curves([], 0.9)["legend"]]
    curve_colours = {c for c in plots.PALETTE[:len(emm["searches"])]}
    assert all(f'stroke="{c}"' in html for c in curve_colours) and f'stroke="{plots.MEMORIZED}"' not in html


RATIOS = {"none": (0.95, 0.37), "random:10": (1.0, 0.05)}  # ratio = top - slope * log2(|D| / 10)


def emm_run(out, monkeypatch) -> dict:
    """`memaudit emm --sweep` with each training replaced by a fixed ratio: a real emm.json and emm.html."""
    import memaudit.retraining.run
    from memaudit.retraining.search import Point

    def fake(recipe, size, seed, stop_at=None):
        top, slope = RATIOS[recipe.config.labels]
        ratio = round(min(max(top - slope * math.log2(size / 10), 0.0), 1.0), 2)
        stopped = stop_at if stop_at is not None and ratio >= stop_at else None  # as measure_point records it
        return Point(size, seed, ratio, memorized=round(ratio * 100), n=100,
                     info={"ci95": [max(ratio - 0.08, 0.0), min(ratio + 0.05, 1.0)], "stopped_at_pass": stopped,
                           "converged": None if stopped is not None else True})

    monkeypatch.setattr(memaudit.retraining.run, "measure_point", fake)
    result = runner.invoke(app, ["emm", "--train", "digits", "--out", str(out), "--start", "10", "--max-size", "40",
                                 "--grid", "10,20,40", "--sweep", "labels=none,random:10", "--arch", "tiny",
                                 "--width", "8", "--epochs", "1", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "emm.json").read_text())


def test_dedup_json_records_the_threshold_applied(tmp_path):
    result = runner.invoke(app, ["dedup", "digits:60", "--out", str(tmp_path / "d"), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d" / "dedup.json").read_text())
    assert report["threshold"] == 0.02 and report["threshold_kind"] == "rms pixel difference"
    result = runner.invoke(app, ["dedup", "digits:60", "--threshold", "0.1", "--out", str(tmp_path / "e"), "--quiet"])
    assert json.loads((tmp_path / "e" / "dedup.json").read_text())["threshold"] == 0.1


def test_run_pages_without_a_command_line_print_no_none():
    """A run made from Python has no command line: the detect and extract pages say nothing of it."""
    from memaudit.reports import render_extract, _environment

    provenance = {"command": None, "created": "2026-01-01T00:00:00+00:00"}
    detect = {"method": "Wen et al. 2024", "model": {"spec": "pipe"}, "settings": {"steps": 50, "guidance": None},
              "prompts": [], "provenance": provenance}
    html = _environment().get_template("detect.html.j2").render(detect=detect)
    assert "None" not in html and "guidance none" in html and "2026-01-01" in html
    extract = {"model": {"spec": "optimal"}, "n_samples": 10, "grouping": "seed", "threshold": 0.1, "min_clique": 3,
               "n_cliques": 0, "samples_in_cliques": 0, "cliques": [], "provenance": provenance}
    html = render_extract(extract)
    assert "None" not in html and "2026-01-01" in html
