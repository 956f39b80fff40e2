"""The command line as a new user meets it: --version, grouped help with readable defaults,
usage errors in one line, the cache options, warnings for settings that make no sense."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

import memaudit
from memaudit.cli import app

runner = CliRunner()


def run(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def plain(text: str) -> str:
    """Help text without the boxes and line wrapping of rich's layout."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"memaudit {memaudit.__version__}"


def test_audit_help_groups_options_and_shows_defaults_as_written():
    result = run("audit", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    panels = re.findall(r"╭─ (\w+) ─", result.stdout)
    assert panels == ["Arguments", "Options", "Data", "Model", "Sampling", "Search", "Criteria", "Output"]
    text = plain(result.stdout)
    assert "[default: 1/3]" in text and "0.333" not in text
    # MODEL is described with every form README's table lists
    for form in ("optimal", "diffusers pipeline folder", "hf:ORG/NAME", "checkpoint-N folder", "network-snapshot-*.pkl",
                 "TorchScript denoiser", "written by memaudit emm", "fine-tuned UNet/transformer folder", "--factory file.py:build", "file.py:factory",
                 "package.module:factory", "folder of snapshots"):
        assert form in text, form
    for option in ("--cache-dir", "--no-cache"):
        assert option in text


@pytest.mark.parametrize("args, fragment", [
    (["audit", "optimal", "--train", "digits:20", "--out", "x", "--nope"], "No such option: --nope"),
    (["audit", "optimal", "--out", "x"], "Missing option '--train'"),
    (["audit", "optimal", "--train", "digits:20", "--out", "x", "--n", "many"], "Invalid value for '--n'"),
    (["no-such-command"], "No such command 'no-such-command'"),
])
def test_usage_errors_are_one_line_and_exit_2(args, fragment):
    result = run(*args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("memaudit: error: ") and fragment in message, message
    assert "╭" not in result.output and "Usage:" not in result.output


def test_usage_error_of_the_installed_command_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "memaudit", "audit", "--train", "digits", "--out", str(tmp_path),
                             "--nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("memaudit: error: No such option: --nope")


def test_threshold_takes_fractions(tmp_path):
    out = tmp_path / "run"
    result = run("audit", "optimal", "--train", "digits:20", "--n", 4, "--out", out, "--quiet", "--threshold", "1/4")
    assert result.exit_code == 0, result.output
    criterion = json.loads((out / "audit.json").read_text())["spaces"]["pixel"]["criteria"]["nn-ratio"]
    assert criterion["threshold"] == 0.25
    bad = run("audit", "optimal", "--train", "digits:20", "--n", 4, "--out", tmp_path / "bad", "--threshold", "1/0")
    assert bad.exit_code == 2 and bad.stderr.strip() == (
        "memaudit: error: --threshold 1/0: expected a number such as 0.25 or a fraction such as 1/3")


def test_cache_dir_replaces_memaudit_cache_for_one_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path / "env-cache"))
    result = run("index", "digits:20", "--space", "pixel-4", "--json", "--quiet", "--cache-dir", tmp_path / "mine")
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert Path(row["path"]).parent == tmp_path / "mine" / "features" and Path(row["path"]).is_file()
    assert not (tmp_path / "env-cache").exists()
    assert os.environ["MEMAUDIT_CACHE"] == str(tmp_path / "env-cache")  # put back after the command


def test_no_cache_reads_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path / "env-cache"))
    args = ["audit", "optimal", "--train", "digits:30", "--n", 6, "--space", "pixel-4", "--quiet", "--json"]
    cached = run(*args, "--out", tmp_path / "cached")
    assert cached.exit_code == 0, cached.output
    features = sorted((tmp_path / "env-cache" / "features").iterdir())
    assert features
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "env-cache").rglob("*")}
    uncached = run(*args, "--out", tmp_path / "uncached", "--no-cache")
    assert uncached.exit_code == 0, uncached.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "env-cache").rglob("*")} == before  # untouched
    assert not list(Path(tempfile.gettempdir()).glob("memaudit-no-cache-*"))  # the private cache is removed
    first, second = (json.loads(r.stdout) for r in (cached, uncached))
    assert first["spaces"] == second["spaces"]  # the same results
    both = run(*args, "--out", tmp_path / "both", "--no-cache", "--cache-dir", tmp_path / "c")
    assert both.exit_code == 2 and "--cache-dir and --no-cache" in both.stderr


def test_guidance_on_an_unconditional_pipeline_is_refused(tiny_pipeline_dir, tmp_path):
    result = run("audit", tiny_pipeline_dir, "--train", "digits:20", "--n", 2, "--out", tmp_path / "run",
                 "--guidance", 3)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "--guidance 3.0 does not apply to an unconditional DDIMPipeline" in result.stderr


@pytest.mark.parametrize("lower, upper, status, text", [
    (10, 20, "bracketed", "EMM in [10, 20)"), (None, 10, "below-range", "EMM < 10"),
    (100, None, "above-range", "EMM >= 100"), (None, None, "bracketed", "EMM not measured"),
    (None, None, "undetermined", "EMM undetermined at this budget")])
def test_emm_bracket_reads_without_none(lower, upper, status, text):
    from memaudit.retraining.budget import bracket_text

    assert bracket_text(lower, upper, status) == text


def test_warmup_longer_than_the_training_is_said(tmp_path):
    from memaudit.data import load_image_set
    from memaudit.retraining.recipe import EMMConfig, make_recipe

    full = load_image_set("digits")
    recipe = make_recipe(EMMConfig(train="digits", out=tmp_path, epochs=5, batch_size=64, warmup_steps=200), full,
                         audit=None)
    # 10 images x 5 epochs / batch 64: 1 step; 200 steps need more than 199 x 64 / 5 = 2547.2 images
    line = recipe.warmup_warning(10)
    assert line == ("--epochs 5 with --batch-size 64 trains |D| = 10 for 1 step, fewer than --warmup 200: below "
                    "about 2548 images the learning rate never reaches --lr; raise --epochs or lower --warmup")
    assert recipe.train_config(2547, 0).steps == 199 and recipe.train_config(2548, 0).steps == 200
    assert recipe.warmup_warning(2548) is None
    default = make_recipe(EMMConfig(train="digits", out=tmp_path), full, audit=None)
    assert default.warmup_warning(10) is None  # 2000 epochs: 313 steps


def test_emm_help_groups_its_options():
    result = run("emm", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert re.findall(r"╭─ (\w+) ─", result.stdout) == ["Options", "Data", "Model", "Training", "Search", "Sampling",
                                                          "Output"]
    text = plain(result.stdout)
    # the training budget's settings come from --budget unless given; other defaults read as typed
    assert "[default: default]" in text and "(budget) Training duration in epochs" in text
    assert "2000.0" not in text and "[default: 0.0]" not in text and "[default: 1.25]" in text
