import numpy as np
import pytest
import torch
from PIL import Image

from maskdit.data.datasets import load_dataset, load_digits, load_folder, load_npz, to_uint8
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


def test_image_folder_of_any_size_is_centre_cropped_and_resized(tmp_path):
    # a 40x20 (W x H) picture: a bright centre band 20 wide between dark sides; and a 9x9 one
    wide = np.zeros((20, 40), np.uint8)
    wide[:, 10:30] = 200
    (tmp_path / "a").mkdir()
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    Image.fromarray(np.full((9, 9), 50, np.uint8)).save(tmp_path / "a" / "small.png")
    d = load_folder(tmp_path, resize=8)
    assert d.shape == (1, 8, 8)
    # the short side (20) is halved once (>= 2 x 8), scaled to 8 and the centre kept: the band fills it
    small, wide = d.images  # files in name order
    assert wide.float().mean() > 190 and wide.min() > 150
    assert torch.all(small == 50)  # upscaled by bicubic filtering: a flat image stays flat
    from maskdit.config import load_config

    with pytest.raises(ConfigError, match="data.resize applies to image folders"):
        load_config("digits", overrides=["data.resize=8"])


def test_flip_shows_every_example_as_stored_and_mirrored_each_epoch(tmp_path):
    from conftest import SMALL

    from maskdit.config import load_config
    from maskdit.training.trainer import Trainer

    np.savez(tmp_path / "d.npz", images=np.arange(8 * 4 * 4, dtype=np.uint8).reshape(8, 4, 4),
             labels=np.arange(8) % 2)
    cfg = load_config("digits", overrides=[*SMALL, "data.name=npz", f"data.path={tmp_path / 'd.npz'}",
                                           "batch_size=4", "data.flip=true", f"run_dir={tmp_path / 'run'}"])
    trainer = Trainer(cfg, progress=False)
    epoch = torch.cat([trainer.inputs.draw(s).index for s in range(4)])  # 16 = 2 x 8 indices per epoch
    assert sorted(epoch.tolist()) == list(range(16))
    x, y = trainer.examples(torch.tensor([3, 11]))
    assert torch.equal(x[1], x[0].flip(-1)) and y.tolist() == [1, 1]
    assert torch.equal(to_uint8(x[0]), trainer.dataset.images[3])


def test_dataloader_workers_prepare_exactly_the_same_steps(tmp_path):
    from conftest import SMALL
    from safetensors.torch import load_file

    from maskdit.checkpoint import latest_checkpoint
    from maskdit.config import load_config
    from maskdit.training.trainer import train

    for workers in (0, 2):
        train(load_config("digits", overrides=[*SMALL, "steps=4", "data.flip=true", "mask.ratio=0.5",
                                               f"data.workers={workers}", f"run_dir={tmp_path / str(workers)}"]),
              progress=False)
    a, b = (load_file(latest_checkpoint(tmp_path / w) / "model.safetensors") for w in ("0", "2"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_digits_read_from_scikit_learns_file_are_exactly_scikit_learns_digits():
    from sklearn.datasets import load_digits as sk_load_digits

    from maskdit.data.datasets import digits_arrays

    images, labels = digits_arrays()
    reference = sk_load_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
    assert labels.dtype == np.int64 and images.shape == (1797, 8, 8)
