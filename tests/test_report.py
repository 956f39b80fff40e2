"""report.html and compare.html: content, escaping, redaction, size, and behaviour in a real browser."""

import base64
import io
import json
import re

import numpy as np
import pytest
from conftest import write_png
from PIL import Image
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.data import load_image_set

runner = CliRunner()
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def audit(out, *args, train="digits:50", model="optimal", n=30):
    model_args = [model] if model else []
    result = runner.invoke(app, ["audit", *model_args, "--train", str(train), "--out", str(out),
                                 "--n", str(n), "--quiet", *map(str, args)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "audit.json").read_text())


def embedded_images(html: str) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(m))).convert("L")) for m in DATA_URI.findall(html)]


@pytest.fixture(scope="module")
def optimal_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimal")
    audit(out, "--criteria", "all", n=40)  # every criterion, each with its flagged samples
    return out


def test_report_in_a_real_browser(optimal_run, visit):
    page = visit(optimal_run / "report.html")
    assert page.errors == [] and [m for m in page.console if m[0] in ("error", "warning")] == []
    assert page.external_requests() == []
    assert page.page.locator("#most-memorized .finding").count() == 24
    # the optimal denoiser copies: every other pixel criterion flags all 40, and shows its 24 most memorized
    assert page.page.locator(".finding.flagged").count() == 4 * 24
    for name in ("nn-ratio-dedup", "carlini-l2", "carlini-relative", "tiled-l2"):
        assert page.page.get_by_role("heading", name=f"Flagged by {name} (pixel)").count() == 1
    assert page.page.locator("table.sortable tbody tr").count() == 40
    shot = Image.open(io.BytesIO(page.page.screenshot(full_page=True)))
    assert shot.width == 1200 and 1500 < shot.height < 30000
    # the page renders real pixels: thumbnails are not blank
    assert np.asarray(shot.convert("L")).std() > 20


def test_full_table_sorts_on_click(optimal_run, visit):
    page = visit(optimal_run / "report.html")
    header = page.page.locator("table.sortable th", has_text="d2").first
    column = [h.inner_text() for h in page.page.locator("table.sortable th").all()].index("d2") + 1

    def values():
        return [float(v) for v in page.page.locator(f"table.sortable tbody td:nth-child({column})").all_inner_texts()]

    header.click()
    assert values() == sorted(values())
    header.click()
    assert values() == sorted(values(), reverse=True)


def test_hostile_names_show_as_text_and_run_nothing(tmp_path, visit):
    images = load_image_set("digits:20").images
    hostile = "<img src=x onerror=alert(1)>"
    for i, image in enumerate(images):
        write_png(tmp_path / "train" / (f"{hostile}{i}.png" if i < 10 else f"ok{i}.png"), image)
    out = tmp_path / "run"
    result = audit(out, train=tmp_path / "train", n=20)
    # A crafted audit.json too: script in the model spec, a caption, and a non-PNG image URI.
    finding = result["findings"][0]
    finding["neighbors"][0]["caption"] = "<script>alert(2)</script>"
    finding["neighbors"][1]["image"] = "javascript:alert(3)"
    result["model"]["spec"] = "</title><script>alert(4)</script>"
    (out / "audit.json").write_text(json.dumps(result))
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    html = (out / "report.html").read_text()
    assert "<script>alert" not in html and "<img src=x" not in html and "javascript:" not in html
    page = visit(out / "report.html")
    assert page.dialogs == [] and page.errors == []
    assert page.external_requests() == []  # the would-be <img src=x> never loads
    text = page.page.inner_text("body")
    assert "<script>alert(2)</script>" in text and hostile in text and "</title><script>alert(4)</script>" in text


def test_blur_leaves_no_training_pixels(tmp_path):
    train = load_image_set("digits:50").images[..., 0]
    plain = (audit(tmp_path / "plain", "--criteria", "all", n=30), (tmp_path / "plain" / "report.html").read_text())[1]
    blurred = audit(tmp_path / "blur", "--redact", "blur", "--criteria", "all", n=30)
    assert blurred["report"] == {"redact": "blur"}
    html = (tmp_path / "blur" / "report.html").read_text()

    def shows_training_image(image):
        if image.shape == (8, 8):
            return any(np.array_equal(image, t) for t in train)
        small = np.asarray(Image.fromarray(image).resize((8, 8), Image.Resampling.NEAREST))
        return any(np.abs(small.astype(int) - t).max() <= 8 for t in train)

    assert any(shows_training_image(img) for img in embedded_images(plain))  # the check can fail
    images = embedded_images(html)
    assert len(images) == 24 * 3 + 4 * 24 * 2 and not any(shows_training_image(img) for img in images)


def test_omit_embeds_no_images_and_rerender_can_change_it(tmp_path):
    audit(tmp_path, "--redact", "omit", n=10)
    html = (tmp_path / "report.html").read_text()
    assert "data:image" not in html and "omitted" in html
    assert runner.invoke(app, ["report", str(tmp_path), "--redact", "none"]).exit_code == 0
    assert "data:image/png" in (tmp_path / "report.html").read_text()


def test_bad_redact_value(tmp_path):
    result = runner.invoke(app, ["audit", "optimal", "--train", "digits:20", "--out", str(tmp_path), "--redact", "pixelate"])
    assert result.exit_code == 2 and "--redact pixelate: expected one of none, blur, omit" in result.stderr


def test_ten_thousand_samples_stay_small_and_usable(tmp_path, visit):
    train = load_image_set("digits").images
    rng = np.random.default_rng(0)
    picks = train[rng.integers(0, len(train), 10_000)].astype(int)
    samples = np.clip(picks + rng.integers(-40, 41, picks.shape), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", images=samples)
    audit(tmp_path / "run", "--samples", tmp_path / "samples.npz", train="digits", model=None)
    report = tmp_path / "run" / "report.html"
    assert report.stat().st_size < 20 * 2**20
    page = visit(report)
    assert page.page.locator("table.sortable tbody tr").count() == 10_000
    assert page.page.locator("#most-memorized .finding img").count() == 24 * 3  # thumbnails only for the top findings
    assert page.page.locator(".finding.flagged img").count() <= 5 * 24 * 2  # and the top flagged of each criterion
    assert page.errors == [] and page.external_requests() == []


# --- compare ----------------------------------------------------------------------------------


def test_compare_matched_runs(tmp_path, visit):
    a = audit(tmp_path / "a", n=20)
    noise = np.random.default_rng(1).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", images=noise)
    b = audit(tmp_path / "b", "--samples", tmp_path / "noise.npz", model=None)
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    comparison = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["name"] for r in comparison["runs"]] == ["a", "b"] and comparison["mismatches"] == []
    assert [r["memorization_ratio"] for r in comparison["runs"]] == [a["memorization_ratio"], b["memorization_ratio"]]
    page = visit(tmp_path / "cmp" / "compare.html")
    assert page.errors == [] and page.external_requests() == []
    # runs are separate points (no line joins them); one distribution line per run
    assert page.page.locator("#by-run svg.wide polyline").count() == 0
    assert page.page.locator("#by-run svg.wide circle").count() == 2
    assert page.page.locator("#overlay svg.wide polyline").count() == 2


def test_compare_refuses_different_training_sets(tmp_path):
    audit(tmp_path / "a", train="digits:50", n=10)
    audit(tmp_path / "b", train="digits:60", n=10)
    args = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "training sets differ: a used digits:50" in result.stderr and "--allow-mismatch" in result.stderr
    assert not (tmp_path / "cmp" / "compare.html").exists()
    result = runner.invoke(app, [*args, "--allow-mismatch"])
    assert result.exit_code == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["mismatches"][0].startswith("training sets differ")
    assert "do not measure the same thing" in (tmp_path / "cmp" / "compare.html").read_text()


def test_compare_refuses_different_thresholds(tmp_path):
    audit(tmp_path / "a", n=10)
    audit(tmp_path / "b", "--threshold", "0.5", n=10)
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "criteria differ" in result.stderr


def test_compare_needs_two_runs(tmp_path):
    audit(tmp_path / "a", n=10)
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "at least two audit folders" in result.stderr
