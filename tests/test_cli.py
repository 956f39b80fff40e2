"""The CLI end to end on tiny real data, and every bad input the foundation promises to catch."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_png
from typer.testing import CliRunner

from memaudit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("memaudit: error: ")
    for fragment in fragments:
        assert fragment in message, message


def test_optimal_audit_writes_the_run(tmp_path):
    out = tmp_path / "run"
    result = run("audit", "optimal", "--train", "digits:50", "--out", out, "--n", 40, "--seed", 3, "--quiet")
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    assert audit["schema_version"] == 1 and audit["n_samples"] == 40
    assert audit["memorization_ratio"] >= 0.99
    assert audit["train"] == {"spec": "digits:50", "n": 50, "fingerprint": audit["train"]["fingerprint"],
                              "image_shape": [8, 8, 1], "skipped": []}
    assert audit["preprocessing"] == {"resize": "none", "image_size": None, "on_error": "fail"}
    assert audit["train"]["fingerprint"].startswith("sha256:") and audit["model"]["fingerprint"].startswith("sha256:")
    criterion = audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
    assert criterion["threshold"] == pytest.approx(1 / 3)
    assert criterion["fraction"] == audit["memorization_ratio"] == criterion["memorized"] / 40
    assert criterion["ci95"][0] <= criterion["fraction"] <= criterion["ci95"][1]

    with open(out / "neighbors.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["sample", "seed", "space", "nn1", "d1", "nn2", "d2", "ratio", "memorized"]
    assert [int(r["seed"]) for r in rows] == list(range(3, 43))
    assert sum(r["memorized"] == "true" for r in rows) == criterion["memorized"]

    samples = np.load(out / "samples.npz")
    assert samples["images"].shape == (40, 8, 8, 1) and samples["seeds"].tolist() == list(range(3, 43))
    # neighbors.csv agrees with an independent brute-force search over the saved samples
    from memaudit.data import load_image_set

    train = load_image_set("digits:50").images.reshape(50, -1).astype(float)
    d = np.sqrt(((samples["images"].reshape(40, -1)[:, None].astype(float) - train[None]) ** 2).sum(-1))
    assert [int(r["nn1"]) for r in rows] == np.argsort(d, axis=1, kind="stable")[:, 0].tolist()

    html = (out / "report.html").read_text()
    assert "Memorization audit" in html and "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html and " src=\"http" not in html
    assert html.count("<script") == 1 and "<script>" in html  # only the inline table sorter, no src
    assert "memorized" in result.stdout and "report:" in result.stdout


def test_diffusers_pipeline_audit_and_json(tmp_path, tiny_pipeline_dir):
    result = run("audit", tiny_pipeline_dir, "--train", "digits:50", "--out", tmp_path, "--n", 12,
                 "--steps", 5, "--batch-size", 5, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert summary["memorization_ratio"] == audit["memorization_ratio"]
    assert audit["model"]["settings"]["pipeline"] == "DDIMPipeline" and audit["model"]["settings"]["steps"] == 5


def test_samples_mode_audits_given_images(tmp_path):
    from memaudit.data import load_image_set

    train = load_image_set("digits:50").images
    noise = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "given.npz", images=np.concatenate([train[:4], noise]))
    result = run("audit", "--samples", tmp_path / "given.npz", "--train", "digits:50", "--out", tmp_path / "r", "--quiet")
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert audit["spaces"]["pixel"]["criteria"]["nn-ratio"]["memorized"] == 4
    assert audit["model"]["spec"] is None and audit["seeds"] is None
    with open(tmp_path / "r" / "neighbors.csv") as handle:
        assert next(csv.DictReader(handle))["seed"] == ""


def test_fail_above_gates_with_exit_code_3(tmp_path):
    args = ["audit", "optimal", "--train", "digits:20", "--out", tmp_path, "--n", 10, "--quiet"]
    result = run(*args, "--fail-above", 0.5)
    assert result.exit_code == 3
    assert "release gate failed: 10 exact copies" in result.stderr  # the optimal denoiser reproduces its digits
    assert json.loads((tmp_path / "audit.json").read_text())["gate"] == {
        "fail_above": 0.5, "fraction": 1.0, "exact_copies": 10, "passed": False,
        "not_computed": ["pixel/carlini-relative", "pixel/tiled-l2"]}  # 8x8 digits: they could not speak
    assert run(*args, "--fail-above", 1.0).exit_code == 3  # an exact copy fails the gate whatever the limit


def test_fail_above_gates_the_memorized_share_without_copies(tmp_path):
    from memaudit.data import load_image_set

    train = load_image_set("digits:200").images
    rng = np.random.default_rng(0)  # 4 noisy copies (not exact) and 16 unseen digits
    near = np.clip(train[:4].astype(int) + rng.integers(-8, 9, (4, 8, 8, 1)), 0, 255)
    np.savez(tmp_path / "s.npz", images=np.concatenate([near, load_image_set("digits:200:rest").images[:16]]).astype(np.uint8))
    args = ["audit", "--samples", tmp_path / "s.npz", "--train", "digits:200", "--out", tmp_path / "r", "--quiet"]
    result = run(*args, "--fail-above", 0.1)
    audit = json.loads((tmp_path / "r" / "audit.json").read_text())
    assert audit["headline"]["exact_copies"] == [] and audit["memorization_ratio"] == 0.2
    assert result.exit_code == 3 and "memorized share 20.0% is above --fail-above 10.0%" in result.stderr
    assert run(*args, "--fail-above", 0.2).exit_code == 0


def test_report_rerenders_from_audit_json(tmp_path):
    assert run("audit", "optimal", "--train", "digits:20", "--out", tmp_path, "--n", 5, "--quiet").exit_code == 0
    (tmp_path / "report.html").unlink()
    result = run("report", tmp_path)
    assert result.exit_code == 0 and (tmp_path / "report.html").is_file()


def test_rerun_reuses_finished_samples(tmp_path):
    args = ["audit", "optimal", "--train", "digits:20", "--out", tmp_path, "--n", 30, "--quiet"]
    assert run(*args).exit_code == 0
    first = np.load(tmp_path / "samples.npz")["images"]
    shards = sorted((tmp_path / ".cache").rglob("seeds-*.npz"))
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert run(*args, "--batch-size", 7).exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npz")["images"], first)
    assert [p.stat().st_mtime_ns for p in shards] == stamps


# --- bad input: one line naming the input, exit code 2 ----------------------------------------


def test_missing_training_path(tmp_path):
    assert_one_line_error(run("audit", "optimal", "--train", tmp_path / "nope", "--out", tmp_path / "o"),
                          "nope: no such file or folder", "digits")


def test_empty_training_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("audit", "optimal", "--train", tmp_path / "empty", "--out", tmp_path / "o"),
                          "empty: the folder holds no images")


def test_corrupt_training_image(tmp_path):
    write_png(tmp_path / "train" / "ok.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "train" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert_one_line_error(run("audit", "optimal", "--train", tmp_path / "train", "--out", tmp_path / "o"),
                          "bad.png: not a readable image")


def test_mixed_resolutions(tmp_path):
    write_png(tmp_path / "train" / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "train" / "b.png", np.zeros((9, 8, 3), np.uint8))
    assert_one_line_error(run("audit", "optimal", "--train", tmp_path / "train", "--out", tmp_path / "o"),
                          "a.png is 8x8x3 but b.png is 9x8x3")


@pytest.mark.parametrize("arrays, fragment", [
    ({"pics": np.zeros((3, 8, 8, 1), np.uint8)}, "expected key 'images' or 'arr_0'"),
    ({"images": np.zeros((3, 8, 8, 1), np.int16)}, "dtype int16; expected uint8"),
    ({"images": np.zeros((3, 8, 8, 5), np.uint8)}, "expected (N, H, W, C) with C = 1 or 3"),
])
def test_bad_npz(tmp_path, arrays, fragment):
    np.savez(tmp_path / "t.npz", **arrays)
    assert_one_line_error(run("audit", "optimal", "--train", tmp_path / "t.npz", "--out", tmp_path / "o"), fragment)


def test_training_set_of_one_image(tmp_path):
    np.savez(tmp_path / "one.npz", images=np.zeros((1, 8, 8, 1), np.uint8))
    assert_one_line_error(run("audit", "optimal", "--train", tmp_path / "one.npz", "--out", tmp_path / "o"),
                          "holds 1 image", "at least 2")


def test_samples_of_another_resolution(tmp_path):
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 16, 16, 1), np.uint8))
    assert_one_line_error(run("audit", "--samples", tmp_path / "s.npz", "--train", "digits", "--out", tmp_path / "o"),
                          "16x16x1", "8x8x1")


def test_pipeline_of_another_resolution(tmp_path, tiny_pipeline_dir):
    np.savez(tmp_path / "t.npz", images=np.zeros((4, 16, 16, 1), np.uint8))
    assert_one_line_error(run("audit", tiny_pipeline_dir, "--train", tmp_path / "t.npz", "--out", tmp_path / "o"),
                          "8x8x1", "16x16x1")


def test_unknown_model(tmp_path):
    assert_one_line_error(run("audit", "stable-diffusion-9", "--train", "digits", "--out", tmp_path),
                          "stable-diffusion-9: unknown model", "optimal", "diffusers")


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "m").mkdir()
    assert_one_line_error(run("audit", tmp_path / "m", "--train", "digits", "--out", tmp_path / "o"),
                          "no adapter recognises this path")


def test_pickled_pipeline_weights_are_refused(tmp_path, tiny_pipeline_dir):
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_pipeline_dir, pickled)
    weights = pickled / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), pickled / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    assert_one_line_error(run("audit", pickled, "--train", "digits", "--out", tmp_path / "o"),
                          "cannot load as a diffusers pipeline with safetensors weights")


@pytest.mark.parametrize("args, fragment", [
    (["--n", "0"], "--n 0"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--fail-above", "1.5"], "--fail-above 1.5"),
    (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
])
def test_bad_options(tmp_path, args, fragment):
    assert_one_line_error(run("audit", "optimal", "--train", "digits:20", "--out", tmp_path, *args), fragment)


def test_model_and_samples_together(tmp_path):
    assert_one_line_error(run("audit", "optimal", "--samples", "x.npz", "--train", "digits", "--out", tmp_path),
                          "give exactly one")


def test_report_of_a_folder_without_audit(tmp_path):
    assert_one_line_error(run("report", tmp_path), "no audit.json here")


def test_console_script_runs_as_a_subprocess(tmp_path):
    """The installed entry point, as a user runs it: exit codes and stderr are real."""
    bad = subprocess.run([sys.executable, "-m", "memaudit", "audit", "optimal", "--train", str(tmp_path / "x"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_every_criterion_has_verdicts_findings_and_a_headline(tmp_path):
    """Samples that copy training images only in part: tiled-l2 and the Carlini criteria can
    disagree with nn-ratio, and whatever any criterion flags is in verdicts.csv, audit.json's
    findings and the report."""
    from memaudit.data import load_image_set

    train = load_image_set("digits:200").images
    rng = np.random.default_rng(0)
    copies = np.clip(train[:12].astype(int) + rng.integers(-20, 21, (12, 8, 8, 1)), 0, 255)
    np.savez(tmp_path / "samples.npz", images=np.concatenate([copies, train[150:180].astype(int)[::-1] // 2]).astype(np.uint8))
    out = tmp_path / "run"
    result = run("audit", "--samples", tmp_path / "samples.npz", "--train", "digits:200", "--out", out, "--quiet",
                 "--criterion-threshold", "pixel/tiled-l2=0.12", "--criteria", "all")
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    with open(out / "verdicts.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["sample", "seed", "space", "criterion", "score", "threshold", "memorized", "nn"]
    criteria = audit["spaces"]["pixel"]["criteria"]
    assert set(criteria) == {"nn-ratio", "nn-ratio-dedup", "carlini-l2", "carlini-relative", "tiled-l2"}
    assert len(rows) == 42 * len(criteria) and criteria["tiled-l2"]["threshold"] == 0.12
    for name, summary in criteria.items():
        mine = [r for r in rows if r["criterion"] == name]
        assert sum(r["memorized"] == "true" for r in mine) == summary["memorized"]
        flagged = {f["sample"] for f in audit["findings"] if f["criterion"] == name and f["space"] == "pixel"}
        if name != "nn-ratio":  # every flagged sample is a finding of its criterion (fewer than 24 here)
            assert flagged == {int(r["sample"]) for r in mine if r["memorized"] == "true"}
    assert criteria["tiled-l2"]["memorized"] > 0 and criteria["carlini-l2"]["memorized"] > 0
    headline = audit["headline"]
    assert headline["memorized"] == criteria["nn-ratio"]["memorized"]
    # every other criterion that flags samples is named: among those allowed to speak, or as informational
    # (on 8x8 digits without --holdout, every one but the paper's is outside its threshold's regime)
    named = {(o["space"], o["criterion"]): o for o in headline["others_flagging"] + headline["informational"]}
    assert set(named) == {("pixel", name) for name, c in criteria.items() if name != "nn-ratio" and c["memorized"]}
    assert headline["others_flagging"] == [] and all(o["why"] for o in headline["informational"])
    html = (out / "report.html").read_text()
    assert "Flagged by tiled-l2 (pixel): informational" in html and "Informational (not part of the verdict)" in html
    assert "near-copy of a training image under any criterion" not in html
    # tiled-l2's nn is the training image with the smallest tiled distance, by brute force
    from memaudit.tiled import tiled_l2

    samples = np.load(out / "samples.npz")["images"]
    brute = tiled_l2(samples, train)
    tiled = [r for r in rows if r["criterion"] == "tiled-l2"]
    assert [int(r["nn"]) for r in tiled] == brute.argmin(1).tolist()
    np.testing.assert_allclose([float(r["score"]) for r in tiled], brute.min(1), rtol=1e-9)


@pytest.mark.parametrize("value", ["nn-ratio=nan", "nn-ratio=inf", "nn-ratio=-3", "pixel/carlini-l2=0",
                                   "clip:x/cosine=0.5", "pixel/cosine=0.5"])
def test_bad_thresholds_exit_2_before_any_sampling(value, tmp_path):
    out = tmp_path / "run"
    result = run("audit", "optimal", "--train", "digits:20", "--criterion-threshold", value, "--out", out, "--n", 4,
                 "--quiet")
    assert_one_line_error(result, f"--criterion-threshold {value.split('=')[0]}")
    assert not out.exists()  # refused before the run folder, the samples or the search
