"""What an audit computes (--criteria, --quality): the documented default set, all, off, the record
in audit.json, the verdict unchanged, criteria not computed never shown as 0 flagged, cache keys."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit import quality as q
from memaudit.cli import app
from memaudit.criteria import CRITERIA
from memaudit.data import load_image_set
from memaudit.selection import parse_criteria, select

runner = CliRunner()
CHEAP = {"nn-ratio", "nn-ratio-dedup", "carlini-l2"}  # read from the one k-NN pass (native pixel space)


def test_default_computes_the_documented_set():
    # 32x32 pixels, no holdout: the costly criteria could not speak, so they are not computed
    chosen = select("default", "pixel", (32, 32, 3), calibrated=False)
    assert set(chosen.computed) == CHEAP
    assert set(chosen.not_computed) == {"tiled-l2", "carlini-relative"}
    assert not any(m["could_speak"] for m in chosen.not_computed.values())
    assert all("--criteria all" in m["why"] for m in chosen.not_computed.values())
    # with a holdout every criterion may speak: all computed
    assert set(select("default", "pixel", (32, 32, 3), calibrated=True).computed) == CHEAP | {"tiled-l2",
                                                                                              "carlini-relative"}
    # 256 pixels a side: tiled-l2 is inside its regime (it may speak uncalibrated), carlini-relative never is
    assert set(select("default", "pixel", (256, 256, 3), calibrated=False).computed) == CHEAP | {"tiled-l2"}
    # a parameter set is a criterion asked for
    assert "tiled-l2" in select("default", "pixel", (32, 32, 3), False, frozenset({"tiled-l2"})).computed
    # resized pixels and embeddings: only what applies there
    assert set(select("default", "pixel-8", (32, 32, 3), False).computed) == {"nn-ratio", "nn-ratio-dedup"}
    assert set(select("default", "sscd:w.pt", (32, 32, 3), False).computed) == {"nn-ratio", "nn-ratio-dedup", "cosine"}


def test_all_and_lists():
    assert set(select("all", "pixel", (32, 32, 3), False).computed) == set(CRITERIA) - {"cosine"}
    assert select("all", "pixel", (32, 32, 3), False).not_computed == {}
    listed = select(parse_criteria("tiled-l2"), "pixel", (256, 256, 3), False)
    assert listed.computed == ("nn-ratio", "tiled-l2")  # the headline always
    assert listed.not_computed["carlini-l2"] == {"why": "left out by --criteria", "could_speak": True}  # in regime
    assert listed.not_computed["nn-ratio-dedup"] == {"why": "left out by --criteria", "could_speak": False}
    # left out where it could have spoken: said so
    assert select(parse_criteria("nn-ratio"), "pixel", (256, 256, 3), False).not_computed["tiled-l2"]["could_speak"]
    assert select("all", "pixel", (2, 2, 1), False).not_computed["tiled-l2"]["why"].startswith("images under 4x4")
    assert parse_criteria(["carlini-l2", "nn-ratio"]) == parse_criteria(" nn-ratio, carlini-l2") == (
        "nn-ratio", "carlini-l2")


@pytest.mark.parametrize("args, fragments", [
    (["--criteria", "tiled,nn-ratio"], ["--criteria", "'tiled'", "default, all", "tiled-l2", "carlini-relative"]),
    (["--criteria", ","], ["--criteria", "default, all"]),
    (["--quality", "full"], ["--quality full", "off, fast, exact"]),
    (["--criteria", "cosine"], ["--criteria cosine", "cosine spaces"]),
    (["--criteria", "nn-ratio", "--criterion-threshold", "tiled-l2=0.1"], ["tiled-l2 is not in --criteria"]),
    (["--criteria", "nn-ratio", "--relative-n", "20"], ["--relative-alpha/--relative-n", "carlini-relative"]),
])
def test_bad_values_are_one_line_errors(args, fragments, tmp_path):
    result = runner.invoke(app, ["audit", "optimal", "--train", "digits:20", "--out", str(tmp_path / "o"), "--n", "2",
                                 "--quiet", *args])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message and message.startswith("memaudit: error: "), message
    assert all(f in message for f in fragments), message
    assert not (tmp_path / "o" / "audit.json").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One set of samples (copies, near copies and unseen digits, 8x8: only nn-ratio speaks) audited
    with the defaults, with --criteria all --quality exact and with --quality off, into one cache."""
    root = tmp_path_factory.mktemp("selection")
    train = load_image_set("digits:120").images
    rng = np.random.default_rng(0)
    near = np.clip(train[:6].astype(int) + rng.integers(-2, 3, (6, 8, 8, 1)), 0, 255)
    unseen = load_image_set("digits").images[1000:1024]
    np.savez(root / "samples.npz", images=np.concatenate([train[10:14], near, unseen]).astype(np.uint8))
    cache = root / "cache"
    audits = {}
    for name, args in (("default", []), ("all", ["--criteria", "all", "--quality", "exact"]),
                       ("off", ["--quality", "off"]), ("rerun-all", ["--criteria", "all"]), ("again", [])):
        out = root / ("rerun" if name in ("rerun-all", "again") else name)  # "again": after --criteria all, there
        result = runner.invoke(app, ["audit", "--samples", str(root / "samples.npz"), "--train", "digits:120",
                                     "--out", str(out), "--cache-dir", str(cache), "--quiet", *args])
        assert result.exit_code == 0, result.output
        audits[name] = json.loads((out / "audit.json").read_text())
    return root, audits


def test_defaults_all_and_off_in_a_whole_audit(runs):
    root, audits = runs
    default, full, off = audits["default"], audits["all"], audits["off"]
    assert set(default["spaces"]["pixel"]["criteria"]) == CHEAP
    assert set(default["spaces"]["pixel"]["not_computed"]) == {"tiled-l2", "carlini-relative"}
    assert set(full["spaces"]["pixel"]["criteria"]) == CHEAP | {"tiled-l2", "carlini-relative"}
    assert full["spaces"]["pixel"]["not_computed"] == {}
    assert default["settings"] == {"criteria": "default", "quality": "fast"}
    assert full["settings"] == {"criteria": "all", "quality": "exact"}
    # the verdict is the same: on 8x8 digits only nn-ratio (and the copy rule) speak
    for key in ("verdict", "reason", "memorized", "exact_copies", "memorized_any", "others_flagging"):
        assert default["headline"][key] == full["headline"][key], key
    assert default["headline"]["verdict"] == "copies"
    for name in CHEAP:  # what both computed is the same figure
        assert default["spaces"]["pixel"]["criteria"][name]["memorized"] == full["spaces"]["pixel"]["criteria"][name]["memorized"]
    # the headline and gate name what was not computed, and say it could not have spoken
    assert {(m["criterion"], m["could_speak"]) for m in default["headline"]["not_computed"]} == {
        ("tiled-l2", False), ("carlini-relative", False)}
    assert default["gate"]["not_computed"] == ["pixel/carlini-relative", "pixel/tiled-l2"]
    assert full["headline"]["not_computed"] == [] and full["gate"]["not_computed"] == []
    # --quality off: no figures at all; fast: against as many training images as samples, seeded
    assert off["spaces"]["pixel"]["quality"] == {"mode": "off", "skipped": "not computed (--quality off)"}
    fast, exact = default["spaces"]["pixel"]["quality"], full["spaces"]["pixel"]["quality"]
    assert fast["mode"] == "fast" and fast["reference"] == {"points": 34, "from": 120, "seed": q.FAST_SEED}
    assert exact["mode"] == "exact" and exact["reference"] == {"points": 120, "from": 120, "seed": None}
    assert fast["precision"] is not None and exact["precision"] is not None


def test_not_computed_is_never_shown_as_zero_flagged(runs):
    root, audits = runs
    html = (root / "default" / "report.html").read_text()
    assert "Not computed in this audit" in html and html.count("not computed: by default computed only") == 2
    assert "tiled-l2 (pixel)" in html and "Flagged by tiled-l2" not in html
    off = (root / "off" / "report.html").read_text()
    assert "not computed (--quality off)" in off
    with open(root / "default" / "verdicts.csv") as handle:
        assert "tiled-l2" not in handle.read()
    # compare: a criterion one run did not compute is "not computed" there, not a mismatch and not 0
    result = runner.invoke(app, ["compare", str(root / "default"), str(root / "all"), str(root / "off"),
                                 "--out", str(root / "cmp")])
    assert result.exit_code == 0, result.output
    comparison = json.loads((root / "cmp" / "compare.json").read_text())
    assert comparison["mismatches"] == []
    assert "pixel/tiled-l2" in comparison["runs"][0]["not_computed"] and "pixel/tiled-l2" in comparison["criteria"]
    page = (root / "cmp" / "compare.html").read_text()
    assert page.count(">not computed</td>") == 4  # tiled-l2 and carlini-relative, in the default and off runs
    # the summary printed names them too
    printed = runner.invoke(app, ["audit", "--samples", str(root / "samples.npz"), "--train", "digits:120",
                                  "--out", str(root / "printed"), "--cache-dir", str(root / "cache")])
    assert "not computed: tiled-l2 (pixel)" in printed.stdout and "flags 0 of" not in printed.stdout


def test_report_command_and_python_api(runs, tmp_path):
    import memaudit

    root, audits = runs
    result = runner.invoke(app, ["report", str(root / "off")])
    assert result.exit_code == 0, result.output
    assert "not computed (--quality off)" in (root / "off" / "report.html").read_text()
    train = load_image_set("digits:60").images
    done = memaudit.audit(train=train, samples=train[:5], criteria=["nn-ratio", "carlini-l2"], quality="off")
    assert set(done.audit["spaces"]["pixel"]["criteria"]) == {"nn-ratio", "carlini-l2"}
    assert done.audit["settings"] == {"criteria": ["nn-ratio", "carlini-l2"], "quality": "off"}
    assert done.audit["spaces"]["pixel"]["not_computed"]["tiled-l2"]["why"] == "left out by --criteria"
    with pytest.raises(memaudit.MemauditError, match="--quality slow: expected one of off, fast, exact"):
        memaudit.audit(train=train, samples=train[:5], quality="slow")


def test_caches_key_on_what_is_computed(runs):
    root, audits = runs
    # the default rerun into the folder a --criteria all run wrote to (same cache): nothing of it survives
    assert set(audits["rerun-all"]["spaces"]["pixel"]["criteria"]) == set(audits["all"]["spaces"]["pixel"]["criteria"])
    again = audits["again"]
    assert set(again["spaces"]["pixel"]["criteria"]) == CHEAP and again["settings"]["criteria"] == "default"
    assert set(again["spaces"]["pixel"]["not_computed"]) == {"tiled-l2", "carlini-relative"}
    assert "tiled-l2" not in (root / "rerun" / "verdicts.csv").read_text()
    assert "Flagged by tiled-l2" not in (root / "rerun" / "report.html").read_text()
    assert again["spaces"]["pixel"]["quality"] == audits["default"]["spaces"]["pixel"]["quality"]
    # the training radii of fast (34 of 120 rows, seeded) and exact (all 120) are two files, one each
    radii = sorted((root / "cache" / "quality").iterdir())
    assert len(radii) == 2
    assert q.radii_cache_name("key", 34, q.FAST_SEED) != q.radii_cache_name("key")
    assert q.radii_cache_name("key") == q.radii_cache_name("key", q.MAX_POINTS, 0)  # exact: the name it always had


def test_fast_quality_is_the_papers_equal_sized_protocol():
    """--quality fast equals P/R/D/C and the Frechet distance computed directly on a seeded subset
    of the training set as large as the sample set."""
    rng = np.random.default_rng(5)
    train, samples = rng.standard_normal((300, 6)), rng.standard_normal((40, 6)) + 0.3
    fast = q.quality(train, samples, mode="fast")
    rows = np.sort(np.random.default_rng(q.FAST_SEED).choice(300, 40, replace=False))
    reference = q.manifold_metrics(train[rows].astype(np.float32), samples.astype(np.float32))
    for key in ("precision", "recall", "density", "coverage"):
        assert fast[key] == reference[key], key
    np.testing.assert_allclose(fast["frechet_distance"], q.frechet_distance(train[rows].astype(np.float32),
                                                                            samples.astype(np.float32)), rtol=1e-9)
    assert fast["points"] == [40, 40] and fast["reference"] == {"points": 40, "from": 300, "seed": q.FAST_SEED}
    exact = q.quality(train, samples, mode="exact")
    assert exact["points"] == [300, 40] and exact["reference"]["seed"] is None
    assert exact["recall"] == q.manifold_metrics(train, samples)["recall"]


def test_duplicate_mask_with_distances_is_the_brute_force_mask():
    from memaudit.duplicates import duplicate_mask
    from memaudit.search import knn

    rng = np.random.default_rng(6)
    train = rng.integers(0, 250, (60, 12), dtype=np.uint8)
    train[10:20] = train[:10] + rng.integers(0, 3, (10, 12)).astype(np.uint8)  # near copies of 0..9
    samples = np.concatenate([train[:10] + 1, rng.integers(0, 250, (15, 12), dtype=np.uint8)])
    distances, indices = knn(samples, train, 6, dtype=np.float64)
    limit = 8.0
    nearest = train[indices[:, :1]].astype(np.float64)
    expected = np.sqrt(((train[indices].astype(np.float64) - nearest) ** 2).sum(-1)) <= limit
    assert np.array_equal(duplicate_mask(train, indices, limit, distances), expected)
    assert np.array_equal(duplicate_mask(train, indices, limit), expected) and expected[:10, 1].all()


def test_benchmark_runs_tiny(tmp_path):
    import subprocess

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "audit_cost.py"
    done = subprocess.run([sys.executable, str(script), "--sizes", "150", "--samples", "20", "--kinds", "photo",
                           "--quality-sizes", "150"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    [row] = result["rows"]
    assert row["train"] == 150 and row["memorized"] >= 1  # the planted copies are flagged by both
    assert row["memaudit_default"]["not_computed"] == ["carlini-relative", "tiled-l2"]
    assert row["memaudit_all_exact"]["not_computed"] == [] and row["ratio_default"] > 0
    [cost] = result["quality_cost"]
    assert cost["fast_cold_points"] == [20, 20] and cost["exact_cold_points"] == [150, 20]
