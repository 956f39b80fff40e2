import numpy as np
import pytest
from batch_invariance import assert_seed_invariance

from memaudit.adapters import SamplerOptions, load_model
from memaudit.data import load_image_set
from memaudit.sampling import generate_samples, shard_ranges


class CountingAdapter:
    """Wraps an adapter; counts the seeds it samples and can fail after a number of calls."""

    def __init__(self, inner, fail_after_calls=None):
        self.inner, self.fail_after_calls = inner, fail_after_calls
        self.sampled: list[int] = []
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, seeds, batch_size, conditioning=None):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt
        self.calls += 1
        self.sampled.extend(seeds)
        return self.inner.sample(seeds, batch_size)


@pytest.fixture(scope="module")
def optimal():
    return load_model("optimal", load_image_set("digits:50"), SamplerOptions(steps=6))


def test_shard_ranges_cover_every_seed_once():
    assert shard_ranges(10, 600, 256) == [(10, 256), (266, 256), (522, 88)]
    assert shard_ranges(0, 0) == []


def test_interrupted_generation_resumes_to_the_same_result(tmp_path, optimal):
    full, seeds = generate_samples(optimal, 5, 50, batch_size=7, cache_dir=tmp_path / "a", shard_size=16)
    assert seeds.tolist() == list(range(5, 55))

    flaky = CountingAdapter(optimal, fail_after_calls=5)  # shard 1 takes 3 calls (7+7+2); dies in shard 2
    with pytest.raises(KeyboardInterrupt):
        generate_samples(flaky, 5, 50, batch_size=7, cache_dir=tmp_path / "b", shard_size=16)
    resumed = CountingAdapter(optimal)
    images, _ = generate_samples(resumed, 5, 50, batch_size=7, cache_dir=tmp_path / "b", shard_size=16)
    np.testing.assert_array_equal(images, full)
    assert resumed.sampled == list(range(21, 55))  # shard 1 (seeds 5..20) was kept

    again = CountingAdapter(optimal)
    generate_samples(again, 5, 50, batch_size=11, cache_dir=tmp_path / "b", shard_size=16)
    assert again.sampled == []


def test_shards_of_another_model_are_not_reused(tmp_path, optimal):
    generate_samples(optimal, 0, 20, batch_size=8, cache_dir=tmp_path, shard_size=16)
    other = CountingAdapter(load_model("optimal", load_image_set("digits:60"), SamplerOptions(steps=6)))
    generate_samples(other, 0, 20, batch_size=8, cache_dir=tmp_path, shard_size=16)
    assert other.sampled == list(range(20))


@pytest.mark.usefixtures("one_torch_thread")
def test_diffusers_samples_follow_their_seeds(tiny_pipeline_dir):
    model = load_model(str(tiny_pipeline_dir), load_image_set("digits:50"), SamplerOptions(steps=10))
    assert model.image_shape == (8, 8, 1)
    seeds = list(range(12))
    reference = model.sample(seeds, batch_size=12)
    assert reference.shape == (12, 8, 8, 1) and reference.dtype == np.uint8
    assert len(np.unique(reference.reshape(12, -1), axis=0)) == 12  # one noise per seed
    assert_seed_invariance(model, seeds, batch_sizes=(5,))


def test_samples_written_shard_by_shard_are_the_arrays_and_can_be_mapped(tmp_path, optimal):
    """The finished shards streamed into one uncompressed samples.npz hold what np.savez of the
    whole array holds; its images memory-map (a rank reads only the rows it uses), a compressed
    archive's do not."""
    from memaudit.outputs import mapped_samples, write_samples
    from memaudit.sampling import generate_shards
    from memaudit.storage import npz_member_memmap

    whole, seeds = generate_samples(optimal, 5, 50, batch_size=7, cache_dir=tmp_path / "cache", shard_size=16)
    shards = generate_shards(optimal, 5, 50, batch_size=7, cache_dir=tmp_path / "cache", shard_size=16)
    assert len(shards.paths) == 4 and shards.image_shape() == whole.shape[1:]
    assert np.array_equal(shards.seeds(), seeds)
    labels = np.arange(50) % 10
    write_samples(tmp_path, shards.rows(), seeds, {"labels": labels})
    with np.load(tmp_path / "samples.npz") as written:
        assert sorted(written.files) == ["images", "labels", "seeds"]
        assert np.array_equal(written["images"], whole) and np.array_equal(written["seeds"], seeds)
        assert np.array_equal(written["labels"], labels)
    mapped = mapped_samples(tmp_path)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, whole)
    np.savez(tmp_path / "plain.npz", images=whole)
    np.savez_compressed(tmp_path / "compressed.npz", images=whole)
    assert np.array_equal(npz_member_memmap(tmp_path / "plain.npz", "images"), whole)
    assert npz_member_memmap(tmp_path / "compressed.npz", "images") is None
    assert npz_member_memmap(tmp_path / "plain.npz", "labels") is None  # no such array
    # an uncompressed .npz given as a set is mapped too; a compressed one is read as before
    plain, compressed = load_image_set(str(tmp_path / "plain.npz")), load_image_set(str(tmp_path / "compressed.npz"))
    assert isinstance(plain.images, np.memmap) and np.array_equal(plain.images, compressed.images)
