"""The decoding policy every format shares, folder metadata, --on-error and --resize."""

import io
import json

import numpy as np
import pytest
from conftest import write_png
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from memaudit.data import load_image_set
from memaudit.errors import DataError
from memaudit.formats.decode import LoadOptions, decode, parse_size

RNG = np.random.default_rng(0)


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_sixteen_bit_grayscale_keeps_the_high_byte():
    wide = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4099)  # 0 .. 61485
    image = Image.fromarray(wide)  # uint16: mode I;16
    array = decode(encoded(image), "wide.png")
    assert array.shape == (4, 4, 1)
    np.testing.assert_array_equal(array[..., 0], (wide.astype(np.int64) * 255 // 65535).astype(np.uint8))


def test_rgba_is_composited_on_black_and_palette_becomes_rgb():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [128, 255]]
    array = decode(encoded(Image.fromarray(rgba, "RGBA")), "alpha.png")
    assert array.shape == (2, 2, 3)
    np.testing.assert_allclose(array[..., 0], [[200, 0], [100, 200]], atol=1)
    palette = Image.fromarray(RNG.integers(0, 256, (5, 5, 3), dtype=np.uint8)).convert("P")
    np.testing.assert_array_equal(decode(encoded(palette), "p.png"), np.asarray(palette.convert("RGB")))


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    array = decode(encoded(cmyk, "JPEG", quality=100), "cmyk.jpg")
    assert array.shape == (8, 8, 3)
    assert array[..., 0].min() > 230 and array[..., 1:].max() < 25


def test_exif_orientation_is_applied():
    pixels = np.zeros((2, 4, 3), np.uint8)
    pixels[0, 0] = 255  # a marker in the top-left corner of a 2x4 landscape image
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    array = decode(encoded(image, exif=exif), "rotated.png")
    assert array.shape == (4, 2, 3)  # shown as portrait
    np.testing.assert_array_equal(array, np.rot90(pixels, k=-1))


def test_decompression_bombs_are_refused_by_name(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(DataError, match="huge.png: refused as a decompression bomb"):
        decode(encoded(Image.new("L", (64, 64))), "huge.png")


def test_folder_metadata_gives_captions_and_labels(tmp_path):
    images = RNG.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        write_png(tmp_path / "train" / f"{i}.png", image)
    rows = [{"file_name": "0.png", "text": "a red <b>thing</b>", "label": "cat"},
            {"file_name": "1.png", "text": "two", "label": "ant"},
            {"file_name": "2.png", "caption": "three", "label": "cat"}]
    (tmp_path / "train" / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    image_set = load_image_set(str(tmp_path))
    assert image_set.captions == ["a red <b>thing</b>", "two", "three"]
    assert image_set.labels.tolist() == [1, 0, 1]  # class names numbered in sorted order
    np.testing.assert_array_equal(image_set.images, images)


def test_csv_metadata_and_integer_labels(tmp_path):
    for i in range(2):
        write_png(tmp_path / f"{i}.png", RNG.integers(0, 256, (4, 4, 1), dtype=np.uint8))
    (tmp_path / "metadata.csv").write_text("file_name,label\n0.png,7\n1.png,3\n")
    assert load_image_set(f"folder:{tmp_path}").labels.tolist() == [7, 3]


def test_metadata_naming_a_missing_file(tmp_path):
    write_png(tmp_path / "0.png", np.zeros((4, 4, 1), np.uint8))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}))
    with pytest.raises(DataError, match="file_name 'gone.png' names a missing file"):
        load_image_set(str(tmp_path))


def test_class_folders_become_labels(tmp_path):
    for name, count in (("dog", 2), ("cat", 1)):
        for i in range(count):
            write_png(tmp_path / name / f"{i}.png", np.full((4, 4, 1), i, np.uint8))
    image_set = load_image_set(str(tmp_path))
    assert image_set.ids == ["cat/0.png", "dog/0.png", "dog/1.png"] and image_set.labels.tolist() == [0, 1, 1]


def test_on_error_skip_records_unreadable_files_in_the_audit(tmp_path):
    from typer.testing import CliRunner

    from memaudit.cli import app

    digits = load_image_set("digits:20").images
    for i, image in enumerate(digits):
        write_png(tmp_path / "train" / f"{i:02d}.png", image)
    (tmp_path / "train" / "05.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "train" / "empty.png").write_bytes(b"")
    runner = CliRunner()
    failed = runner.invoke(app, ["audit", "optimal", "--train", str(tmp_path / "train"), "--out", str(tmp_path / "a"),
                                 "--n", "4", "--quiet"])
    assert failed.exit_code == 2 and "05.png: not a readable image" in failed.stderr and "--on-error skip" in failed.stderr
    result = runner.invoke(app, ["audit", "optimal", "--train", str(tmp_path / "train"), "--out", str(tmp_path / "b"),
                                 "--n", "4", "--on-error", "skip", "--quiet"])
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "b" / "audit.json").read_text())["train"]
    assert train["n"] == 19 and [s["id"] for s in train["skipped"]] == ["05.png", "empty.png"]


def test_center_crop_and_resize_to_the_model_resolution(tmp_path):
    wide = np.zeros((4, 8, 1), np.uint8)
    wide[:, 2:6, 0] = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10  # the centre 4x4
    write_png(tmp_path / "a.png", wide)
    write_png(tmp_path / "b.png", np.full((8, 8, 1), 77, np.uint8))
    with pytest.raises(DataError, match=r"a.png is 4x8x1 but b.png is 8x8x1.*--resize"):
        load_image_set(str(tmp_path))
    cropped = load_image_set(str(tmp_path), options=LoadOptions(resize="center-crop", size=(4, 4)))
    np.testing.assert_array_equal(cropped.images[0], wide[:, 2:6])  # the crop alone: no resampling needed
    assert (cropped.images[1] == 77).all()
    resized = load_image_set(str(tmp_path), options=LoadOptions(resize="resize", size=(2, 2)))
    assert resized.images.shape == (2, 2, 2, 1)


@pytest.mark.parametrize("options, message", [
    (LoadOptions(on_error="ignore"), "--on-error ignore: expected one of fail, skip"),
    (LoadOptions(resize="stretch"), "--resize stretch: expected one of none, center-crop, resize"),
    (LoadOptions(resize="resize"), "needs a target size"),
])
def test_bad_load_options(options, message):
    with pytest.raises(DataError, match=message):
        load_image_set("digits:20", options=options)


@pytest.mark.parametrize("text, size", [("32", (32, 32)), ("64x48", (64, 48)), (None, None)])
def test_image_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "ax3", "3x4x5", "-2"])
def test_bad_image_size(text):
    with pytest.raises(DataError, match="expected N or HxW"):
        parse_size(text)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        array = decode(data, "fuzz.png")
    except DataError:
        return
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] in (1, 3)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.binary(max_size=256), st.sampled_from(["x.npz", "x.npy", "metadata.jsonl", "metadata.csv"]))
def test_random_files_never_crash_the_loaders(tmp_path_factory, data, name):
    folder = tmp_path_factory.mktemp("fuzz")
    if name.startswith("metadata"):
        write_png(folder / "0.png", np.zeros((4, 4, 1), np.uint8))
    (folder / name).write_bytes(data)
    try:
        load_image_set(str(folder if name.startswith("metadata") else folder / name))
    except DataError:
        pass


def test_decoded_sets_are_stored_once_and_memory_mapped_after(tmp_path, monkeypatch):
    import memaudit.formats.folder as folder

    images = RNG.integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        write_png(tmp_path / "set" / f"{i}.png", image)
    first = load_image_set(str(tmp_path / "set"))
    assert isinstance(first.images, np.memmap)  # decoded straight into the store
    np.testing.assert_array_equal(first.images, images)

    def no_decoding(*args):
        raise AssertionError("a stored set was decoded again")

    monkeypatch.setattr(folder, "decode", no_decoding)
    again = load_image_set(str(tmp_path / "set"))
    assert again.ids == first.ids and again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.images, images)
    monkeypatch.undo()

    changed = images[2].copy()
    changed[0, 0, 0] ^= 1
    write_png(tmp_path / "set" / "2.png", changed)  # one pixel of one file: a new store
    fresh = load_image_set(str(tmp_path / "set"))
    assert fresh.fingerprint != first.fingerprint
    np.testing.assert_array_equal(fresh.images[2], changed)


def test_a_failed_decode_leaves_no_store(tmp_path):
    from memaudit.features.cache import cache_root

    write_png(tmp_path / "set" / "a.png", np.zeros((4, 4, 1), np.uint8))
    (tmp_path / "set" / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="b.png: not a readable image"):
        load_image_set(str(tmp_path / "set"))
    stores = cache_root() / "stores"
    assert not [p for p in stores.iterdir() if p.name.startswith(".staging")] if stores.exists() else True
