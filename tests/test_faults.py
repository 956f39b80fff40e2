"""Fault injection: kill -9 at every write point, concurrent audits on one cache, a full disk, a
read-only --out, hostile file names and links. Every case ends in the right numbers or one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.reports import render_report

runner = CliRunner()
RUNNER = Path(__file__).parent / "fault_runner.py"
AUDIT = ["audit", "optimal", "--train", "digits:100", "--n", "300", "--steps", "4", "--space", "pixel-4", "--quiet"]
OUTPUTS = ("samples.npz", "neighbors.csv", "audit.json", "report.html")


def run_faulty(args, cache: Path, timeout=300, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "MEMAUDIT_CACHE": str(cache), **env}
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=environment)


def run_here(args, cache: Path, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_CACHE", str(cache))
    return runner.invoke(app, [str(a) for a in args])


def without_timings(audit: dict) -> dict:
    provenance = {k: v for k, v in audit["provenance"].items() if k not in ("created", "timings")}
    return {**audit, "provenance": provenance}


def assert_same_run(run: Path, reference: Path) -> None:
    """Byte for byte, less the run's timings (and the report's provenance, rendered from them)."""
    for name in ("samples.npz", "neighbors.csv"):
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    audit, expected = (json.loads((d / "audit.json").read_text()) for d in (run, reference))
    assert without_timings(audit) == without_timings(expected)
    expected["provenance"] = audit["provenance"]
    assert (run / "report.html").read_text() == render_report(expected, "none")
    assert json.loads((run / "run.json").read_text())["state"] == "complete"


def leftovers(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*")
            if p.name.endswith(".tmp") or p.name.endswith(".chunks") or p.name.startswith(".staging-")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, and a complete run of other seeds to start each kill from (the
    killed run overwrites it part-way: the mixed folder)."""
    from _pytest.monkeypatch import MonkeyPatch

    base = tmp_path_factory.mktemp("reference")
    with MonkeyPatch.context() as monkeypatch:
        assert run_here([*AUDIT, "--out", base / "run"], base / "cache", monkeypatch).exit_code == 0
        assert run_here([*AUDIT, "--seed", "5000", "--out", base / "old"], base / "cache", monkeypatch).exit_code == 0
    return base


# point: (where the process dies, FAULT_KILL_AT)
KILL_POINTS = {
    "manifest (start)": r"/run\.json$#1",
    "sample shard": r"/seeds-256-44\.npz$",
    "feature chunk": r"\.chunks/rows-",
    "feature cache file": r"/features/[0-9a-f]{64}\.npy$",
    "search": "search",
    "samples.npz": r"/samples\.npz$",
    "neighbors.csv": r"/neighbors\.csv$",
    "audit.json": r"/audit\.json$",
    "report.html": r"/report\.html$",
    "manifest (complete)": r"/run\.json$#2",
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun_equals_an_uninterrupted_run(tmp_path, reference, monkeypatch, point):
    out, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(reference / "old", out)
    old_audit = (out / "audit.json").read_bytes()
    killed = run_faulty([*AUDIT, "--out", out], cache, FAULT_KILL_AT=KILL_POINTS[point])
    assert killed.returncode == -9, killed.stderr[-2000:]

    # The folder after the kill: the old complete run, or marked incomplete (report and compare refuse).
    state = json.loads((out / "run.json").read_text())["state"]
    report = runner.invoke(app, ["report", str(out)])
    if point == "manifest (start)":
        assert state == "complete" and (out / "audit.json").read_bytes() == old_audit  # untouched old run
        assert report.exit_code == 0
    else:
        assert state == "running"
        assert report.exit_code == 2 and "an incomplete run" in report.stderr and len(report.stderr.splitlines()) == 1

    rerun = run_here([*AUDIT, "--out", out], cache, monkeypatch)
    assert rerun.exit_code == 0, rerun.output
    assert_same_run(out, reference / "run")
    assert leftovers(out, cache) == []


def test_two_audits_filling_one_feature_cache(tmp_path, reference, monkeypatch):
    """The second audit reaches the cache after the first published it and removed the chunks it
    was about to read (it used to die with FileNotFoundError on rows-*.npy)."""
    np.savez(tmp_path / "samples.npz", images=np.load(reference / "run" / "samples.npz")["images"])
    args = ["audit", "--samples", tmp_path / "samples.npz", "--train", "digits:100", "--space", "pixel-4", "--quiet"]
    sync, cache = tmp_path / "sync", tmp_path / "sync" / "cache"
    sync.mkdir()
    env = {"FAULT_SYNC": str(sync), "FAULT_CHUNK_ROWS": "32"}
    environment = {**os.environ, "MEMAUDIT_CACHE": str(cache), **env}
    processes = [subprocess.Popen([sys.executable, str(RUNNER), *map(str, [*args, "--out", tmp_path / role])],
                                  env={**environment, "FAULT_HOLD": role}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for role in ("first", "second")]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in results]
    assert run_here([*args, "--out", tmp_path / "alone"], tmp_path / "fresh-cache", monkeypatch).exit_code == 0
    alone = json.loads((tmp_path / "alone" / "audit.json").read_text())
    alone.pop("provenance")  # the command line differs: each run names its own --out
    for role in ("first", "second"):
        audit = json.loads((tmp_path / role / "audit.json").read_text())
        audit.pop("provenance")
        assert audit == alone
        assert (tmp_path / role / "neighbors.csv").read_bytes() == (tmp_path / "alone" / "neighbors.csv").read_bytes()
    assert leftovers(cache) == []


# --- full disk, read-only --out -----------------------------------------------------------------


def test_full_disk_is_one_line_and_keeps_the_earlier_run(tmp_path, reference, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor writes")
    out, cache = tmp_path / "run", tmp_path / "cache"
    shutil.copytree(reference / "old", out)
    old = {name: (out / name).read_bytes() for name in ("audit.json", "report.html")}
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up while audit.json is written
        if ".audit.json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = run_here([*AUDIT, "--out", out], cache, monkeypatch)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{out / 'audit.json'}: No space left on device (ENOSPC)" in lines[0]
    assert {name: (out / name).read_bytes() for name in old} == old  # nothing lost
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["state"] == "failed" and "ENOSPC" in manifest["reason"] and leftovers(out) == []
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert run_here([*AUDIT, "--out", out], cache, monkeypatch).exit_code == 0
    assert_same_run(out, reference / "run")


def _read_only_runner(tmp_path):
    """A command prefix and a --out on a read-only filesystem (a read-only tmpfs in a private mount
    namespace when root; a folder without write permission otherwise)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return None, folder / "run"
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("root without mount namespaces: no read-only filesystem to try")
    mount = tmp_path / "ro"
    mount.mkdir()
    return mount, mount / "run"


def test_read_only_out_is_one_line(tmp_path):
    mount, out = _read_only_runner(tmp_path)
    args = " ".join([sys.executable, str(RUNNER), *AUDIT[:4], "--n", "8", "--out", str(out), "--quiet"])
    if mount is not None:
        command = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs {mount} && exec {args}"]
    else:
        command = ["sh", "-c", f"exec {args}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MEMAUDIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0], result.stderr
    assert "Read-only file system (EROFS)" in lines[0] or "Permission denied (EACCES)" in lines[0]


# --- file names and links -------------------------------------------------------------------


def _write_png(path, image):
    from PIL import Image

    Image.fromarray(image[..., 0]).save(path, format="PNG")


def test_a_training_file_name_that_is_not_utf8_loads(tmp_path, monkeypatch):
    from memaudit.data import load_image_set

    digits = load_image_set("digits:20").images
    folder = tmp_path / "train"
    folder.mkdir()
    for i, image in enumerate(digits):
        name = (b"caf\xe9-%02d.png" % i) if i < 5 else (b"ok-%02d.png" % i)  # Latin-1, not UTF-8
        _write_png(os.fsdecode(os.fsencode(folder) + b"/" + name), image)
    samples = os.fsdecode(os.fsencode(tmp_path) + b"/\xff-samples.npz")
    np.savez(samples, images=digits[:6])
    result = run_here(["audit", "--samples", samples, "--train", folder, "--out", tmp_path / "run", "--quiet"],
                      tmp_path / "cache", monkeypatch)
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit["memorization_ratio"] == 1.0  # the samples are training images
    ids = {n["id"] for f in audit["findings"] for n in f["neighbors"]}
    assert os.fsdecode(b"caf\xe9-00.png") in ids  # the exact name, kept as JSON escapes
    (tmp_path / "run" / "report.html").read_bytes().decode("utf-8")  # the page stays valid UTF-8


def test_links_and_metadata_outside_the_folder_share_one_policy(tmp_path, monkeypatch):
    digits = load_digits_images()
    outside = tmp_path / "private.png"
    _write_png(outside, digits[0])
    folder = tmp_path / "train"
    folder.mkdir()
    for i, image in enumerate(digits[1:6]):
        _write_png(folder / f"{i}.png", image)
    (folder / "inside-link.png").symlink_to(folder / "0.png")  # within the folder: followed
    args = ["audit", "--samples", f"npz:{tmp_path / 's.npz'}", "--train", folder, "--out", tmp_path / "run", "--quiet"]
    np.savez(tmp_path / "s.npz", images=digits[1:3])
    assert run_here(args, tmp_path / "cache", monkeypatch).exit_code == 0
    (folder / "z-link.png").symlink_to(outside)
    result = run_here(args, tmp_path / "cache", monkeypatch)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"{folder / 'z-link.png'}: a link to {outside}, outside {folder}" in result.stderr
    (folder / "z-link.png").unlink()
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "../private.png", "text": "x"}) + "\n")
    result = run_here(args, tmp_path / "cache", monkeypatch)
    assert result.exit_code == 2 and "points outside" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def load_digits_images():
    from memaudit.data import load_image_set

    return load_image_set("digits:20").images


# --- the bad-input table of issue 28: one line, exit 2, nothing computed lost ---------------------


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Files a hostile user hands memaudit: truncated, random, mismatched, hostile pickles."""
    import torch

    folder = tmp_path_factory.mktemp("bad")
    digits = load_digits_images()
    np.savez(folder / "good.npz", images=digits)
    data = (folder / "good.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(data[: len(data) // 2])
    rng = np.random.default_rng(0)
    (folder / "random.npz").write_bytes(rng.bytes(500))
    (folder / "random.npy").write_bytes(rng.bytes(500))
    np.savez(folder / "labels-5.npz", images=digits, labels=np.arange(5))
    np.savez(folder / "labels-nan.npz", images=digits, labels=np.full(len(digits), np.nan))
    np.savez(folder / "seeds-5.npz", images=digits, seeds=np.arange(5))
    np.savez(folder / "seeds-negative.npz", images=digits, seeds=-np.arange(len(digits)))
    np.savez(folder / "seeds-nan.npz", images=digits, seeds=np.full(len(digits), np.nan))
    torch.save({"weights": 1}, folder / "dict.pt")
    torch.save(3, folder / "int.pt")
    (folder / "a-file").write_text("not a folder")
    (folder / "empty").mkdir()
    (folder / "prompts.txt").write_text("a prompt\n")
    return folder


MIA = ["--members", "digits:10", "--nonmembers", "digits:10:rest"]
# (name, arguments with {bad} for the fixture's folder and {out} for a fresh run folder, fragments of the line)
BAD_INPUTS = [
    ("truncated npz --train", ["audit", "optimal", "--train", "{bad}/truncated.npz"], ["truncated.npz: not a readable .npz file, truncated"]),
    ("truncated npz --samples", ["audit", "--samples", "{bad}/truncated.npz", "--train", "digits"], ["truncated.npz: not a readable .npz"]),
    ("truncated npz dedup", ["dedup", "{bad}/truncated.npz"], ["truncated.npz: not a readable .npz"]),
    ("random bytes npz", ["audit", "optimal", "--train", "{bad}/random.npz"], ["random.npz: not an .npz file"]),
    ("random bytes npy", ["audit", "optimal", "--train", "{bad}/random.npy"], ["random.npy: not an .npy file"]),
    ("--out under a file", ["audit", "optimal", "--train", "digits:20", "--out", "{bad}/a-file/run"], ["a-file is a file, not a folder"]),
    ("--out a file", ["audit", "optimal", "--train", "digits:20", "--out", "{bad}/a-file"], ["a-file: exists and is not a folder"]),
    ("--cache-dir under a file", ["audit", "optimal", "--train", "digits:20", "--cache-dir", "{bad}/a-file/cache"], ["--cache-dir", "a-file is a file"]),
    ("compare --out a file", ["compare", "{bad}/x", "{bad}/y", "--out", "{bad}/a-file"], ["--out", "a-file: a file, not a folder"]),
    ("dedup --out a file", ["dedup", "digits:20", "--out", "{bad}/a-file"], ["--out", "a-file: a file, not a folder"]),
    ("dedup --threshold nan", ["dedup", "digits:100", "--threshold", "nan"], ["--threshold nan", "[0, 1]"]),
    ("dedup --threshold -1", ["dedup", "digits:100", "--threshold", "-1"], ["--threshold -1.0", "[0, 1]"]),
    ("dedup --threshold 2", ["dedup", "digits:100", "--threshold", "2"], ["--threshold 2.0", "[0, 1]"]),
    ("--image-size 50000", ["audit", "optimal", "--train", "digits", "--resize", "resize", "--image-size", "50000"], ["--image-size 50000x50000", "of memory"]),
    ("emm --resolution 100000", ["emm", "--train", "digits", "--resolution", "100000", "--epochs", "1"], ["--resolution 100000", "of memory"]),
    ("emm ddpmpp-32 with edm", ["emm", "--train", "digits", "--arch", "ddpmpp-32", "--precond", "edm", "--epochs", "1"], ["--arch ddpmpp-32 --precond edm", "ddpm only"]),
    ("audit dict checkpoint", ["audit", "{bad}/dict.pt", "--trust-checkpoint", "--train", "digits"], ["dict.pt: holds a dict (keys 'weights'), not a network"]),
    ("audit int checkpoint", ["audit", "{bad}/int.pt", "--trust-checkpoint", "--train", "digits"], ["int.pt: holds an int, not a network"]),
    ("mia dict checkpoint", ["mia", "{bad}/dict.pt", "--trust-checkpoint", *MIA], ["dict.pt: holds a dict"]),
    ("extract dict checkpoint", ["extract", "{bad}/dict.pt", "--trust-checkpoint", "--n", "4"], ["dict.pt: holds a dict"]),
    ("detect dict checkpoint", ["detect", "{bad}/dict.pt", "--trust-checkpoint", "--prompts", "{bad}/prompts.txt"], ["dict.pt: holds a dict"]),
    ("5 labels for 20 images", ["audit", "optimal", "--train", "{bad}/labels-5.npz"], ["'labels' has shape (5,) but there are 20 images"]),
    ("NaN labels", ["audit", "optimal", "--train", "{bad}/labels-nan.npz"], ["'labels' holds NaN"]),
    ("emm labels mismatch", ["emm", "--train", "{bad}/labels-5.npz", "--epochs", "1"], ["'labels' has shape (5,)"]),
    ("seeds of another length", ["audit", "--samples", "{bad}/seeds-5.npz", "--train", "digits"], ["'seeds' has shape (5,) but there are 20"]),
    ("negative seeds", ["audit", "--samples", "{bad}/seeds-negative.npz", "--train", "digits"], ["'seeds' holds negative values"]),
    ("NaN seeds", ["audit", "--samples", "{bad}/seeds-nan.npz", "--train", "digits"], ["'seeds' holds NaN"]),
    ("--n past 64 bits", ["audit", "optimal", "--train", "digits", "--n", "99999999999999999999"], ["--n 99999999999999999999"]),
    ("unknown format prefix", ["audit", "optimal", "--train", "foo:{bad}/good.npz"], ["unknown format 'foo'"]),
    ("mia of the optimal denoiser", ["mia", "optimal", *MIA], ["optimal: the closed-form optimal denoiser", "not a trained network"]),
    ("detect --prompts a folder", ["detect", "none", "--prompts", "{bad}/empty"], ["--prompts", "empty: a folder, not a file"]),
]


@pytest.mark.parametrize("name, args, fragments", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_table(bad, tmp_path, monkeypatch, name, args, fragments):
    """Each case is one line naming the input, exit code 2, no traceback, and no folder claimed for
    nothing: a new --out holds at most a manifest that says failed and why."""
    if "--out" not in args and args[0] != "report":
        args = [*args, "--out", "{out}"]
    if args[0] in ("audit", "mia", "extract", "detect", "dedup", "emm") and "--quiet" not in args:
        args = [*args, "--quiet"]
    out = tmp_path / "run"
    result = run_here([a.replace("{bad}", str(bad)).replace("{out}", str(out)) for a in args], tmp_path / "cache",
                      monkeypatch)
    assert result.exit_code == 2, result.output[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    if (out / "run.json").exists():
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["state"] == "failed" and lines[0].endswith(manifest["reason"])


def test_a_nan_in_audit_json_is_refused_by_its_schema(tmp_path, reference):
    out = tmp_path / "run"
    shutil.copytree(reference / "run", out)
    audit = json.loads((out / "audit.json").read_text())
    audit["memorization_ratio"] = float("nan")
    (out / "audit.json").write_text(json.dumps(audit))  # Python writes NaN; JSON has none
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "memorization_ratio is nan, expected a finite number" in result.stderr


def test_index_with_few_training_vectors_warns_once_not_once_per_kmeans(tmp_path):
    """faiss printed a line per k-means (32 for --nbits 3 on 200 vectors), past --quiet."""
    result = subprocess.run([sys.executable, str(RUNNER), "index", "digits:200", "--space", "pixel", "--index", "ivf-pq",
                             "--nbits", "3", "--quiet", "--cache-dir", str(tmp_path / "cache")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "memaudit: warning: the ivf-pq index is trained on 200 vectors, fewer than the 312 faiss advises for 8 "
        "centroids; its search setting is still tuned to --target-recall (a smaller --nlist or --nbits trains better)"]


def test_the_optimal_denoiser_takes_a_read_only_memory_map_without_a_warning(tmp_path):
    import warnings

    from memaudit.adapters.optimal import OptimalDenoiser

    np.save(tmp_path / "train.npy", load_digits_images())
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        denoiser = OptimalDenoiser(mapped)
    assert not [w for w in caught if "not writable" in str(w.message)]
    np.testing.assert_allclose(denoiser.train.numpy(), mapped.reshape(len(mapped), -1) / 127.5 - 1.0)


# --- compare killed at any point -----------------------------------------------------------------

COMPARE_KILL_POINTS = {"manifest (start)": r"/run\.json$#1", "compare.json": r"/compare\.json$",
                       "compare.html": r"/compare\.html$", "manifest (complete)": r"/run\.json$#2"}


@pytest.mark.parametrize("point", list(COMPARE_KILL_POINTS))
def test_compare_killed_anywhere_leaves_the_old_result_or_a_folder_marked_incomplete(tmp_path, reference, point):
    out = tmp_path / "cmp"
    runs = [reference / "run", reference / "old"]
    assert runner.invoke(app, ["compare", *map(str, runs[::-1]), "--out", str(out)]).exit_code == 0
    old = {name: (out / name).read_bytes() for name in ("compare.json", "compare.html", "run.json")}
    killed = run_faulty(["compare", *runs, "--out", out], tmp_path / "cache", FAULT_KILL_AT=COMPARE_KILL_POINTS[point])
    assert killed.returncode == -9, killed.stderr[-2000:]
    manifest = json.loads((out / "run.json").read_text())
    if manifest["state"] == "complete":  # killed before it began: the old comparison, whole
        assert point == "manifest (start)" and {n: (out / n).read_bytes() for n in old} == old
    else:
        assert manifest["state"] == "running" and point != "manifest (start)"
    assert runner.invoke(app, ["compare", *map(str, runs), "--out", str(out)]).exit_code == 0
    assert [r["run_dir"] for r in json.loads((out / "compare.json").read_text())["runs"]] == list(map(str, runs))
    assert json.loads((out / "run.json").read_text())["state"] == "complete"
