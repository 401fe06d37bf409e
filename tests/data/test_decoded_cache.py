"""Decode once: the decoded-image store gives back exactly what decoding gives, survives a killed writer,
and is shared by processes and stages."""

import numpy as np
import pytest

from cxr_audit.data.decoded import PREPROCESSING, DecodedImageStore, image_sha256, load_images
from cxr_audit.data.images import load_resized


@pytest.fixture()
def real_images(shared_data):
    return sorted((shared_data / "nih621" / "images").glob("*.png"))[:70]


def test_cached_images_are_bit_identical_to_decoding(real_images, tmp_path):
    plain = load_images(real_images, 96, workers=0)
    first = load_images(real_images, 96, cache_dir=tmp_path, workers=2)  # decodes, fills the store
    store = DecodedImageStore(tmp_path, 96)
    assert len(store.rows) == len(real_images) and store.folder.name == f"96px-{PREPROCESSING}"
    again = load_images(real_images, 96, cache_dir=tmp_path, workers=0)  # every image from the store
    assert plain.dtype == np.float32 and plain.shape == (70, 1, 96, 96)
    assert np.array_equal(plain, first) and np.array_equal(plain, again)
    assert np.array_equal(store.get(image_sha256(real_images[3])), load_resized(real_images[3], 96))
    # another size is another entry, never a resized copy of this one
    assert not DecodedImageStore(tmp_path, 64).rows


def test_the_store_never_serves_an_image_that_was_not_fully_written(real_images, tmp_path):
    store = DecodedImageStore(tmp_path, 32)
    hashes = [image_sha256(p) for p in real_images[:3]]
    store.add({h: load_resized(p, 32) for h, p in zip(hashes[:2], real_images)})
    # a writer killed mid-row (pixels half written, no index line) and a torn index line
    with open(store.pixels_path, "ab") as pixels:
        pixels.write(b"\0" * 100)
    with open(store.index_path, "a") as index:
        index.write(hashes[2][:20])
    reopened = DecodedImageStore(tmp_path, 32)
    assert set(reopened.rows) == set(hashes[:2])
    reopened.add({hashes[2]: load_resized(real_images[2], 32)})  # the partial row is dropped, not built on
    assert store.pixels_path.stat().st_size == 3 * 32 * 32 * 4
    final = DecodedImageStore(tmp_path, 32)
    assert all(np.array_equal(final.get(h), load_resized(p, 32)) for h, p in zip(hashes, real_images))


def test_a_changed_file_is_decoded_again(real_images, tmp_path):
    import shutil

    image = tmp_path / "a.png"
    shutil.copy(real_images[0], image)
    first = load_images([image], 48, cache_dir=tmp_path / "cache")
    shutil.copy(real_images[1], image)  # same path, other content
    second = load_images([image], 48, cache_dir=tmp_path / "cache")
    assert np.array_equal(second[0, 0], load_resized(real_images[1], 48)) and not np.array_equal(first, second)


def test_an_undecodable_image_is_named(tmp_path):
    from cxr_audit.errors import UserInputError

    bad = tmp_path / "cut.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(UserInputError, match="cut.png"):
        load_images([bad], 32, cache_dir=tmp_path / "cache", workers=0)
    assert not DecodedImageStore(tmp_path / "cache", 32).rows


def test_a_cache_that_is_a_file_is_a_clear_error(phantom_dataset, phantom_model, tmp_path, monkeypatch, run_cli):
    blocker = tmp_path / "cache-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CXR_AUDIT_CACHE", str(blocker))
    result = run_cli("evaluate", "--out", tmp_path / "run", "--data", phantom_dataset / "labels.csv", "--model",
                     phantom_model, "--spec", "coverage_specs/phantom.yaml")
    assert result.exit_code == 2 and "cache-file" in result.stderr and "CXR_AUDIT_CACHE" in result.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
