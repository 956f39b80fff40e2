"""Progress that tells the truth: a plan before sampling, bars that move inside a batch, plain
lines at an interval when stderr is not a terminal, one line per feature space."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from memaudit import progress

SLOW_MODEL = '''
import time

import numpy as np


class Slow:
    """Sleeps {seconds} s per batch and reports no denoising steps: only the interval's lines can
    show that it runs."""

    image_shape = (8, 8, 1)

    def fingerprint(self):
        return "slow-model-v1"

    def settings(self):
        return {{"steps": 7}}

    def sample(self, seeds, batch_size, conditioning=None):
        time.sleep({seconds})
        return np.stack([np.random.default_rng(int(s)).integers(0, 256, (8, 8, 1), dtype=np.uint8) for s in seeds])


def build():
    return Slow()
'''


def test_a_piped_audit_prints_a_progress_line_at_least_every_interval(tmp_path):
    """The Done-when test: stderr is a pipe, the model sleeps 1.5 s per batch and says nothing;
    the lines are timed as they arrive at the reading end."""
    interval = 0.3
    model = tmp_path / "slow_model.py"
    model.write_text(SLOW_MODEL.format(seconds=1.5))
    env = {**os.environ, "MEMAUDIT_PROGRESS_INTERVAL": str(interval), "MEMAUDIT_CACHE": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "memaudit", "audit", f"{model}:build", "--train", "digits:20",
                                "--n", "6", "--batch-size", "2", "--out", str(tmp_path / "run")],
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    arrivals = []
    for line in process.stderr:
        arrivals.append((time.monotonic(), line.rstrip("\n")))
    assert process.wait(timeout=300) == 0, [text for _, text in arrivals]
    texts = [text for _, text in arrivals]
    assert not any("\x1b" in text for text in texts)  # plain lines, no terminal redraws
    plan = [i for i, text in enumerate(texts) if text.startswith("memaudit: sampling 6 images")]
    assert plan and "7 steps, batch 2, on the model's own device" in texts[plan[0]]
    sampling = [(t, text) for t, text in arrivals if text.startswith("memaudit: generating samples")]
    assert sampling[-1][1].startswith("memaudit: generating samples: done in")
    # three batches of 1.5 s: lines all along (about 15 at 0.3 s), none more than the interval after
    # the previous one, give or take the scheduling delays of a busy 2-core machine
    times = [arrivals[plan[0]][0]] + [t for t, _ in sampling]
    gaps = np.diff(times)
    assert len(sampling) >= 4.5 / interval / 2
    assert gaps.max() < interval + 2.0, gaps
    assert any("about" in text and "left" in text for _, text in sampling)
    assert any(text.startswith("memaudit: first batch of 2 took") for text in texts)


class _Recorder(io.StringIO):
    """A non-terminal stderr that keeps each write's arrival time."""

    def __init__(self):
        super().__init__()
        self.times = []

    def write(self, text):
        self.times.append((time.monotonic(), text))
        return super().write(text)

    def isatty(self):
        return False


@pytest.fixture
def plain_stderr(monkeypatch):
    from rich.console import Console

    recorder = _Recorder()
    # pytest puts its own sys.stderr back before each test body runs: hand the recorder to the
    # console factory instead (what Console(stderr=True) would write to)
    monkeypatch.setattr(progress, "_console", lambda: Console(file=recorder, emoji=False))
    progress.set_enabled(True)
    progress.set_interval(0.05)
    yield recorder
    progress.set_interval(None)
    progress.set_enabled(False)


def test_the_interval_is_a_setting_with_a_30_second_default(monkeypatch):
    monkeypatch.delenv("MEMAUDIT_PROGRESS_INTERVAL", raising=False)
    assert progress.interval() == 30.0
    monkeypatch.setenv("MEMAUDIT_PROGRESS_INTERVAL", "2.5")
    assert progress.interval() == 2.5
    progress.set_interval(0.1)
    try:
        assert progress.interval() == 0.1
    finally:
        progress.set_interval(None)
    with pytest.raises(ValueError, match="positive number of seconds"):
        progress.set_interval(0)


def test_denoising_steps_advance_the_bar_inside_a_batch(plain_stderr):
    seen = []
    with progress.task("generating samples", total=8) as advance:
        def recording(amount=1):
            advance(amount)
            seen.append(amount)

        with progress.batch(recording, 4):
            for step in range(1, 5):
                progress.denoising_step(step, 4)
        with progress.batch(recording, 4):  # a sampler that reports nothing: the whole batch at the end
            pass
    assert seen == [1.0, 1.0, 1.0, 1.0, 4]
    progress.denoising_step(1, 4)  # outside a batch: nothing happens


def test_real_samplers_report_each_step(tiny_pipeline_dir, tiny_sd_pipeline_dir):
    # the optimal denoiser (EDM Heun, 18 steps), a diffusers DDIM loop of memaudit's (5 steps) and a
    # Stable Diffusion pipeline's own __call__ (callback_on_step_end, 4 steps) move the bar per step
    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.data import ImageSet, load_image_set

    digits = load_image_set("digits:20")
    captioned = ImageSet(np.zeros((3, 16, 16, 3), np.uint8), ["a", "b", "c"], "captioned",
                         captions=["a red square", "a blue circle", "two lines"])
    for spec, train, options, steps in [("optimal", digits, SamplerOptions(), 18),
                                        (str(tiny_pipeline_dir), digits, SamplerOptions(steps=5), 5),
                                        (str(tiny_sd_pipeline_dir), captioned, SamplerOptions(steps=4, prompts="train"), 4)]:
        adapter = load_model(spec, train, options)
        advances = []
        with progress.batch(advances.append, 3):
            adapter.sample([0, 1, 2], 3)
        assert len(advances) == steps, spec
        assert sum(advances) == pytest.approx(3.0)


def test_plain_lines_at_the_interval_while_one_long_step_runs(plain_stderr):
    with progress.task("slow work", total=2) as advance:
        time.sleep(0.5)  # no advance at all: lines still come
        advance()
    lines = [text for _, text in plain_stderr.times if text.strip()]
    assert sum("memaudit: slow work: 0/2 (0%)" in text for text in lines) >= 3
    assert lines[-1].startswith("memaudit: slow work: done in")


def test_a_space_is_one_line_whatever_runs_inside(plain_stderr, monkeypatch):
    # nested work takes over the space's line: no second bar is opened
    opened = []
    original = progress._Line.open

    def counting(self):
        opened.append(self.description)
        original(self)

    monkeypatch.setattr(progress._Line, "open", counting)
    with progress.stage("space pixel"):
        for name in ("train features", "nearest neighbours", "nearest neighbours", "quality"):
            with progress.task(name, total=1) as advance:
                time.sleep(0.12)
                advance()
    assert opened == ["space pixel"]
    lines = "".join(text for _, text in plain_stderr.times)
    assert "memaudit: space pixel: nearest neighbours: 0/1" in lines
    assert lines.rstrip().splitlines()[-1].startswith("memaudit: space pixel: done in")


def test_an_audit_opens_one_line_per_space_and_one_for_sampling(plain_stderr, monkeypatch, tmp_path):
    from memaudit.auditing import run_audit
    from memaudit.auditing.config import AuditConfig

    opened = []
    original = progress._Line.open

    def counting(self):
        opened.append(self.description)
        original(self)

    monkeypatch.setattr(progress._Line, "open", counting)
    run_audit(AuditConfig(model="optimal", train="digits:20", n=4, out=tmp_path / "run",
                          holdout="digits:20:rest"))
    assert opened == ["generating samples", "space pixel"]
    text = "".join(t for _, t in plain_stderr.times)
    assert "memaudit: sampling 4 images with 18 steps, batch" in text


def test_quiet_progress_prints_nothing(capsys):
    progress.set_enabled(False)
    with progress.task("anything", total=3) as advance:
        advance(3)
    progress.say("plan")
    assert capsys.readouterr().err == ""
