import numpy as np
import pytest
from conftest import write_png

from memaudit.data import load_image_set
from memaudit.errors import DataError


def test_digits_are_the_real_scikit_learn_digits_as_uint8():
    from sklearn.datasets import load_digits

    digits = load_digits()
    image_set = load_image_set("digits")
    assert image_set.images.shape == (1797, 8, 8, 1) and image_set.images.dtype == np.uint8
    assert image_set.images.max() == 255 and image_set.images.min() == 0
    np.testing.assert_array_equal(image_set.images[..., 0], np.rint(digits.images * 255 / 16).astype(np.uint8))
    assert image_set.ids[5] == "digits/5"


def test_digits_subsets_are_class_balanced_and_nested():
    small, large = load_image_set("digits:50"), load_image_set("digits:100")
    assert np.bincount(large.labels).tolist() == [10] * 10
    assert set(small.ids) < set(large.ids)
    assert small.fingerprint != large.fingerprint


@pytest.mark.parametrize("spec, message", [
    ("digits:7", "multiple of the 10 classes"),
    ("digits:abc", "integer from 2 to 1797"),
    ("digits:5000", "integer from 2 to 1797"),
])
def test_bad_digits_subsets(spec, message):
    with pytest.raises(DataError, match=message):
        load_image_set(spec)


def test_folder_is_read_recursively_in_a_stable_order(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "b.png", images[1])
    write_png(tmp_path / "a" / "z.png", images[0])
    from PIL import Image

    Image.fromarray(images[2]).save(tmp_path / "c.webp", lossless=True)
    (tmp_path / "notes.txt").write_text("not an image")
    image_set = load_image_set(str(tmp_path))
    assert image_set.ids == ["a/z.png", "b.png", "c.webp"]
    np.testing.assert_array_equal(image_set.images, images)


def test_grayscale_folder_keeps_one_channel(tmp_path):
    write_png(tmp_path / "x.png", np.full((4, 4, 1), 9, np.uint8))
    write_png(tmp_path / "y.png", np.full((4, 4, 1), 200, np.uint8))
    assert load_image_set(str(tmp_path)).images.shape == (2, 4, 4, 1)


def test_npz_under_either_key(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=images, seeds=np.arange(10, 14))
    np.savez(tmp_path / "b.npz", images)  # arr_0
    a, b = load_image_set(str(tmp_path / "a.npz")), load_image_set(str(tmp_path / "b.npz"))
    np.testing.assert_array_equal(a.images, images)
    np.testing.assert_array_equal(b.images, images)
    assert a.seeds.tolist() == [10, 11, 12, 13] and b.seeds is None


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"no such file or folder; expected one of digits"):
        load_image_set(str(tmp_path / "nope"))


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="holds no images"):
        load_image_set(str(tmp_path))


def test_corrupt_and_truncated_images_are_named(tmp_path):
    good = write_png(tmp_path / "good.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "zz_truncated.png").write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match=r"zz_truncated.png: not a readable image"):
        load_image_set(str(tmp_path))
    (tmp_path / "zz_truncated.png").unlink()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match=r"broken.jpg: not a readable image"):
        load_image_set(str(tmp_path))


def test_mixed_resolutions_name_both_files(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    write_png(tmp_path / "b.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match=r"a.png is 8x8x3 but b.png is 16x16x3"):
        load_image_set(str(tmp_path))


@pytest.mark.parametrize("arrays, message", [
    ({"pixels": np.zeros((2, 4, 4, 3), np.uint8)}, "expected key 'images' or 'arr_0', found \\['pixels'\\]"),
    ({"images": np.zeros((2, 4, 4, 3), np.float32)}, "dtype float32; expected uint8"),
    ({"images": np.zeros((2, 3, 4, 4), np.uint8)}, r"shape \(2, 3, 4, 4\); expected \(N, H, W, C\)"),
    ({"images": np.zeros((5,), np.uint8)}, r"shape \(5,\)"),
])
def test_bad_npz(tmp_path, arrays, message):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_image_set(str(tmp_path / "x.npz"))


def test_npz_that_is_not_a_zip(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"hello")
    with pytest.raises(DataError, match=r"x.npz: not an .npz file \(it does not start as one\)"):
        load_image_set(str(tmp_path / "x.npz"))


def test_pickled_npz_is_refused(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot be read"):
        load_image_set(str(tmp_path / "x.npz"))


def test_unknown_file_type(tmp_path):
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unknown image-set format"):
        load_image_set(str(tmp_path / "x.csv"))


def test_photos_are_tiles_of_the_scikit_learn_photographs():
    import os

    import sklearn.datasets
    from PIL import Image

    photos = load_image_set("photos")
    assert photos.images.shape == (520, 32, 32, 3) and photos.ids[21] == "china.jpg@32,32"
    china = np.asarray(Image.open(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")))
    np.testing.assert_array_equal(photos.images[21], china[32:64, 32:64])
    assert load_image_set("photos:40").ids == photos.ids[:40]
