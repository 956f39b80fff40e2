"""memaudit emm under a stated training budget T: the presets (the paper's numbers checked against
DiffMemorize's formulas), the answer naming T, "still rising at the end of T" as information, and
"undetermined at this budget" when the budget is too small to judge."""

import dataclasses
import json
import math
import re

import pytest
from test_cli import assert_one_line_error, run

from memaudit.emm.budget import BUDGETS, budget_changes, judge
from memaudit.emm.recipe import EMMConfig
from memaudit.emm.search import Point, search_emm


def test_the_paper_preset_is_gu_et_als_cifar10_recipe(tmp_path):
    """DiffMemorize's train.py with --duration=2000 --batch 512 --lr=2e-4 --precond=vp --arch=ddpmpp and
    its default --ema 0.5: total_kimg = duration x |D| / 50, lr_rampup_kimg = |D| / 5, EMA half-life
    ema x |D| / 50 kimg compensated by data_ratio = 50000 / |D| (ema_mode mode2), at |D| = 1000."""
    size, duration, batch, ema = 1000, 2000, 512, 0.5
    total_images = duration * size / 50 * 1000
    halflife_images = ema * size / 50 * 1000
    beta = 0.5 ** (batch / halflife_images / (50000 / size))
    config = EMMConfig(train="digits", out=tmp_path, budget="paper")
    assert (config.precond, config.arch, config.batch_size, config.learning_rate) == ("vp", "ddpmpp", 512, 2e-4)
    assert config.epochs == total_images / size == 40000
    assert config.warmup_steps == math.ceil(size / 5 * 1000 / batch)  # 200 epochs at |D| = 1000: 391 steps
    assert config.ema_decay == pytest.approx(beta, abs=1e-6)
    assert config.n == 10000 and config.extend == 0  # seeds 0-9999 per snapshot
    assert config.snapshots == total_images / (50 * 50 * 1000)  # a snapshot every 50 ticks of 50 kimg


def test_an_option_given_overrides_its_preset_and_is_recorded(tmp_path):
    config = EMMConfig(train="digits", out=tmp_path, budget="quick", epochs=100)
    assert config.epochs == 100 and config.batch_size == BUDGETS["quick"].settings["batch_size"]
    assert budget_changes(config) == {"epochs": 100}
    again = dataclasses.replace(config, labels="true")  # a sweep's copy keeps the values, not the preset's
    assert again.epochs == 100 and budget_changes(again) == {"epochs": 100}
    default = EMMConfig(train="digits", out=tmp_path)
    assert (default.budget, default.epochs, default.extend, default.n) == ("default", 2000.0, 0, 250)
    assert budget_changes(default) == {}


def test_bad_budgets_are_one_line(tmp_path):
    assert_one_line_error(run("emm", "--out", tmp_path / "a", "--budget", "huge"),
                          "--budget huge: expected one of quick, default, paper")
    with pytest.raises(Exception, match="epochs='many': expected float"):
        EMMConfig(train="digits", out=tmp_path, epochs="many").validate()


def _fake_search(monkeypatch, ratios: dict, rising: set = frozenset()):
    """measure_point replaced by fixed ratios (no training); the steps are the recipe's own."""
    import memaudit.emm.run

    def fake(recipe, size, seed, stop_at=None):
        steps = recipe.train_config(size, seed).steps
        snapshots = [{"step": steps, "memorization_ratio": ratios[size]}]
        return Point(size, seed, ratios[size], memorized=round(ratios[size] * 100), n=100,
                     info={"ci95": [0.0, 1.0], "train_steps": steps, "converged": size not in rising,
                           "snapshots": snapshots})

    monkeypatch.setattr(memaudit.emm.run, "measure_point", fake)


def test_the_answer_names_its_budget_and_a_point_still_rising_is_information(tmp_path, monkeypatch):
    """EMM in [a, b) under T, T written out (the largest size trained is 80: 1500 x 80 / 64 = 1875
    steps); the failing upper end still rising leaves the bracket and is said on the terminal and page."""
    _fake_search(monkeypatch, {20: 1.0, 40: 0.95, 80: 0.5, 60: 0.8, 50: 0.92}, rising={60, 80})
    result = run("emm", "--train", "digits", "--out", tmp_path, "--budget", "quick", "--workers", "1", "--quiet")
    assert result.exit_code == 0, result.output
    answer = ("EMM in [50, 60) under T = precond edm, arch tiny, 1500 epochs, batch 64, lr 0.002, EMA 0.999, "
              "1875 steps at |D| = 80 (budget quick)")
    lines = result.stdout.splitlines()
    assert lines[0] == answer
    assert lines[2].startswith("still rising at the end of T: |D| = 60 was still memorizing more")
    emm = json.loads((tmp_path / "emm.json").read_text())
    assert emm["schema_version"] == 2
    assert {k: emm["emm"][k] for k in ("lower", "upper", "status", "still_rising", "answer", "advice")} == {
        "lower": 50, "upper": 60, "status": "bracketed", "still_rising": True, "answer": answer, "advice": None}
    assert emm["emm"]["budget"] == {"preset": "quick", "changed": {}, "precond": "edm", "arch": "tiny",
                                    "epochs": 1500.0, "batch_size": 64, "learning_rate": 2e-3, "warmup_steps": 200,
                                    "ema_decay": 0.999, "snapshots": 2, "extend": 0, "largest_size": 80,
                                    "largest_steps": 1875}
    assert emm["searches"][0]["settings"]["n_samples"] == 250
    html = (tmp_path / "emm.html").read_text()
    assert answer in html and "Still rising at the end of T" in html
    assert len(re.findall(r"<th[ >]", html)) == html.count("</th>")  # every header cell closed once
    assert "<th>EMM under T (passed &le; EMM &lt; failed)</th>" in html
    # an option off the preset is part of T
    _fake_search(monkeypatch, {20: 1.0, 40: 0.95, 80: 0.5, 60: 0.8, 50: 0.92})
    changed = run("emm", "--out", tmp_path / "b", "--budget", "quick", "--epochs", "1000", "--workers", "1", "--quiet")
    assert changed.stdout.splitlines()[0].endswith("1250 steps at |D| = 80 (budget quick with epochs 1000)")
    assert "still rising" not in changed.stdout


def _result(points: list[Point]):
    by_size = {p.size: p for p in points}
    return search_emm(lambda size: [by_size[size]], threshold=0.9, start=min(by_size), min_size=min(by_size),
                      max_size=max(by_size), unit=10)


def _point(size: int, steps: int, ratios: list[float]) -> Point:
    snapshots = [{"step": steps * (i + 1) // len(ratios), "memorization_ratio": r} for i, r in enumerate(ratios)]
    return Point(size, 0, max(ratios), info={"train_steps": steps, "snapshots": snapshots, "size": size})


@pytest.mark.parametrize("points, undetermined", [
    ([_point(10, 500, [0.0, 0.0]), _point(20, 1000, [0.0, 0.0])], "no snapshot of any size memorized a sample"),
    ([_point(10, 16, [0.0, 0.3])], "|D| = 10 trained 16 steps, fewer than the 200 warm-up steps"),
    ([_point(10, 16, [0.5, 0.95]), _point(20, 32, [0.2, 0.4])], None),  # a pass, however short: a bracket
    ([_point(10, 500, [0.1, 0.5])], None),  # it began to copy: EMM < 10 under this T
])
def test_undetermined_only_when_the_budget_cannot_judge(tmp_path, points, undetermined):
    config = EMMConfig(train="digits", out=tmp_path)
    settings = {"precond": "edm", "arch": "tiny", "epochs": 2000.0, "batch_size": 64, "learning_rate": 2e-3,
                "warmup_steps": 200, "ema_decay": 0.999, "snapshots": 2, "extend": 0}
    result = _result(points)
    answer = judge(result, config, settings, [p.info for p in points])
    if undetermined is None:
        assert answer["status"] != "undetermined" and answer["advice"] is None
        assert (answer["lower"], answer["upper"]) == (result.lower, result.upper)
    else:
        assert (answer["status"], answer["lower"], answer["upper"]) == ("undetermined", None, None)
        assert answer["advice"].startswith(undetermined) and "raise --epochs to at least" in answer["advice"]
        assert answer["answer"].startswith("EMM undetermined at this budget, T = precond edm")


def test_the_issue_command_too_small_to_judge_answers_undetermined(tmp_path):
    """`memaudit emm --start 10 --max-size 20 --epochs 100`: |D| = 10 trains ceil(100 x 10 / 64) = 16
    steps, inside the 200-step warm-up, and memorizes nothing: no bracket, exit 0, one advice line."""
    result = run("emm", "--start", 10, "--max-size", 20, "--epochs", 100, "--out", tmp_path, "--workers", 1, "--quiet")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("EMM undetermined at this budget, T = precond edm, arch tiny, 100 epochs, batch 64, "
                               "lr 0.002, EMA 0.999, 16 steps at |D| = 10 (budget default with epochs 100)")
    advice = [line for line in lines if line.startswith("advice: ")]
    assert len(advice) == 1 and "|D| = 10 trained 16 steps, fewer than the 200 warm-up steps" in advice[0]
    assert "raise --epochs to at least 1280 (budget default: 2000)" in advice[0]  # 200 steps x 64 / 10 images
    emm = json.loads((tmp_path / "emm.json").read_text())
    assert (emm["emm"]["status"], emm["emm"]["lower"], emm["emm"]["upper"]) == ("undetermined", None, None)
    assert emm["emm"]["budget"]["largest_steps"] == 16
    assert "Undetermined at this budget" in (tmp_path / "emm.html").read_text()
