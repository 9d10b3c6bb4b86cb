import numpy as np
import pytest
import torch
from PIL import Image

from maskdit.data import load_dataset, load_digits, load_folder, load_npz, to_uint8
from maskdit.errors import ConfigError, DataError


def test_digits_are_real_and_in_range():
    d = load_digits()
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == torch.uint8
    assert d.num_classes == 10 and set(d.labels.tolist()) == set(range(10))
    x, y = d.batch(torch.arange(5))
    assert x.min() >= -1 and x.max() <= 1 and torch.equal(to_uint8(x), d.images[:5])


def test_npz_gray_and_color(tmp_path):
    np.savez(tmp_path / "g.npz", images=np.zeros((5, 6, 4), np.uint8), labels=np.array([0, 1, 2, 1, 0]))
    d = load_npz(tmp_path / "g.npz")
    assert d.shape == (1, 6, 4) and d.num_classes == 3
    np.savez(tmp_path / "c.npz", images=np.full((3, 4, 4, 3), 7, np.uint8))
    d = load_npz(tmp_path / "c.npz")
    assert d.shape == (3, 4, 4) and d.labels is None and int(d.images[0, 2, 1, 1]) == 7


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, 1])}, "2 labels for 3 images"),
        ({"images": np.zeros((3, 4, 4), np.float32)}, "must be uint8"),
        ({"pixels": np.zeros((3, 4, 4), np.uint8)}, "no 'images' array"),
        ({"images": np.zeros((0, 4, 4), np.uint8)}, "holds no images"),
    ],
)
def test_bad_npz_is_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_missing_and_damaged_npz(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_npz(tmp_path / "junk.npz")


def _folder(root, sizes):
    for i, (cls, size) in enumerate(sizes):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((size, size), 10 * i, np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder_loads_classes(tmp_path):
    _folder(tmp_path, [("cat", 4), ("cat", 4), ("dog", 4)])
    d = load_folder(tmp_path)
    assert d.shape == (1, 4, 4) and d.class_names == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1]


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_folder(tmp_path / "empty")
    _folder(tmp_path / "mixed", [("a", 4), ("b", 5)])
    with pytest.raises(DataError, match="mixed sizes"):
        load_folder(tmp_path / "mixed")
    _folder(tmp_path / "corrupt", [("a", 4)])
    (tmp_path / "corrupt" / "a" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="broken.png"):
        load_folder(tmp_path / "corrupt")


def test_dataset_kind_needs_path():
    with pytest.raises(ConfigError, match="data.path"):
        load_dataset("npz")
