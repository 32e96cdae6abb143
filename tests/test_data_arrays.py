"""``data.name: arrays``: your own images and labels from one .npz file; every bad file is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mat_dist.data import check_data, load_splits
from mat_dist.plumbing.errors import UserError

RNG = np.random.default_rng(0)


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _images(n: int, layout: str = "nchw", dtype=np.uint8, size: int = 8, channels: int = 1) -> np.ndarray:
    shape = {"nchw": (n, channels, size, size), "nhwc": (n, size, size, channels), "nhw": (n, size, size)}[layout]
    if dtype == np.uint8:
        return RNG.integers(0, 256, shape, dtype=np.uint8)
    return RNG.random(shape).astype(dtype)


@pytest.mark.parametrize("layout, channels", [("nchw", 1), ("nhwc", 3), ("nhw", 1), ("nchw", 3)])
def test_a_given_split_in_every_layout_becomes_nchw_floats_in_0_1(tmp_path: Path, layout: str, channels: int):
    path = _npz(tmp_path / "d.npz", x_train=_images(60, layout, channels=channels), y_train=RNG.integers(0, 4, 60),
                x_test=_images(20, layout, channels=channels), y_test=RNG.integers(0, 4, 20))
    splits = load_splits("arrays", root=path, val_size=10)
    assert splits.train.images.shape == (50, channels, 8, 8) and splits.val.images.shape == (10, channels, 8, 8)
    assert splits.test.images.shape == (20, channels, 8, 8)
    assert splits.train.images.dtype == torch.float32
    assert 0.0 <= float(splits.train.images.min()) and float(splits.train.images.max()) <= 1.0
    assert splits.num_classes == 4 and len(splits.mean) == len(splits.std) == channels


def test_a_channels_last_image_keeps_its_pixels(tmp_path: Path):
    x = _images(10, "nhwc", channels=3)
    path = _npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(10) % 2, x_test=x[:4], y_test=np.arange(4) % 2)
    splits = load_splits("arrays", root=path, val_size=0)
    # pixel (row 2, column 5, channel 1) of image 3 in the file is channel 1, row 2, column 5 here
    assert float(splits.test.images[3, 1, 2, 5]) == pytest.approx(x[3, 2, 5, 1] / 255)


def test_x_y_alone_get_a_fixed_test_split_whatever_the_seed(tmp_path: Path):
    path = _npz(tmp_path / "d.npz", x=_images(100, dtype=np.float32), y=RNG.integers(0, 3, 100))
    a = load_splits("arrays", root=path, val_size=5, seed=0)
    b = load_splits("arrays", root=path, val_size=5, seed=7)
    assert len(a.test) == 20 and len(a.train) + len(a.val) == 80
    assert torch.equal(a.test.images, b.test.images)          # the test images do not depend on the run's seed
    assert not torch.equal(a.val.images, b.val.images)        # the validation slice does


def test_normalisation_is_measured_or_taken_from_the_file(tmp_path: Path):
    x = np.zeros((20, 1, 4, 4), np.float32)
    x[:10] = 1.0  # half white, half black: mean 0.5, std about 0.5
    measured = load_splits("arrays", root=_npz(tmp_path / "a.npz", x=x, y=np.arange(20) % 2), val_size=0)
    train = measured.train.images
    assert measured.mean == pytest.approx((float(train.mean()),)) and measured.std[0] > 0.4
    given = load_splits("arrays", root=_npz(tmp_path / "b.npz", x=x, y=np.arange(20) % 2, mean=[0.25], std=[0.125]),
                        val_size=0)
    assert given.mean == (0.25,) and given.std == (0.125,)


def test_a_model_trains_on_your_own_arrays_with_their_own_number_of_classes(tmp_path: Path, tiny_raw):
    from mat_dist.core.run_config import config_from_dict
    from mat_dist import load_model
    from mat_dist.training import train

    path = _npz(tmp_path / "d.npz", x_train=_images(96, "nhwc", size=10, channels=3),
                y_train=RNG.integers(0, 5, 96), x_test=_images(16, "nhwc", size=10, channels=3),
                y_test=RNG.integers(0, 5, 16))
    tiny_raw["data"] = {"name": "arrays", "root": str(path), "val_size": 16, "batch_size": 16}
    tiny_raw["train"]["epochs"] = 1
    tiny_raw["eval"]["examples"] = 8
    train(config_from_dict(tiny_raw), tmp_path / "run")
    model = load_model(tmp_path / "run")
    assert model(torch.rand(2, 3, 10, 10)).shape == (2, 5)


def _bad(tmp_path: Path, name: str) -> Path:
    """Each bad file of the table, written under ``tmp_path``."""
    good_x, good_y = _images(20), RNG.integers(0, 3, 20)
    path = tmp_path / "bad.npz"
    if name == "text file":
        path.write_text("x,y\n1,2\n")
    elif name == "a .npy, not a .npz":
        np.save(tmp_path / "bad.npy", good_x)
        (tmp_path / "bad.npy").rename(path)
    elif name == "no known keys":
        _npz(path, images=good_x, labels=good_y)
    elif name == "half a split":
        _npz(path, x_train=good_x, y_train=good_y)
    elif name == "unknown extra array":
        _npz(path, x=good_x, y=good_y, weights=np.ones(3))
    elif name == "float pixels in 0..255":
        _npz(path, x=good_x.astype(np.float32), y=good_y)
    elif name == "NaN pixels":
        x = good_x.astype(np.float32) / 255
        x[0, 0, 0, 0] = np.nan
        _npz(path, x=x, y=good_y)
    elif name == "float labels":
        _npz(path, x=good_x, y=good_y.astype(np.float32))
    elif name == "one-hot labels":
        _npz(path, x=good_x, y=np.eye(3, dtype=np.int64)[good_y])
    elif name == "negative label":
        _npz(path, x=good_x, y=good_y - 1)
    elif name == "labels of another length":
        _npz(path, x=good_x, y=good_y[:5])
    elif name == "no channel axis to be found":
        _npz(path, x=RNG.integers(0, 256, (20, 3, 4, 3), dtype=np.uint8), y=good_y)
    elif name == "train and test of other shapes":
        _npz(path, x_train=good_x, y_train=good_y, x_test=_images(5, size=6), y_test=good_y[:5])
    elif name == "one class only":
        _npz(path, x=good_x, y=np.zeros(20, np.int64))
    elif name == "objects (pickle)":
        _npz(path, x=np.array([good_x[0], "a"], dtype=object), y=good_y[:2])
    elif name == "mean without std":
        _npz(path, x=good_x, y=good_y, mean=[0.5])
    elif name == "a folder":
        path = tmp_path / "folder"
        path.mkdir()
    elif name == "missing":
        path = tmp_path / "nope.npz"
    return path


BAD = [
    ("text file", "is not a .npz file"),
    ("a .npy, not a .npz", "is not a .npz file"),
    ("no known keys", "give either x_train, y_train, x_test, y_test"),
    ("half a split", "give either x_train, y_train, x_test, y_test"),
    ("unknown extra array", "unknown array 'weights'"),
    ("float pixels in 0..255", "not [0, 1]; divide by 255"),
    ("NaN pixels", "NaN or infinite"),
    ("float labels", "give integer labels 0..K-1"),
    ("one-hot labels", "one integer label per image"),
    ("negative label", "has a label -1"),
    ("labels of another length", "one integer label per image (20,)"),
    ("no channel axis to be found", "cannot tell the channel axis"),
    ("train and test of other shapes", "the same image shape"),
    ("one class only", "K >= 2 classes"),
    ("objects (pickle)", "Python objects"),
    ("mean without std", "both mean and std"),
    ("a folder", "is a folder"),
    ("missing", "does not exist"),
]


@pytest.mark.parametrize("name, fragment", BAD, ids=[b[0] for b in BAD])
def test_every_bad_file_is_refused_with_one_line(tmp_path: Path, name: str, fragment: str):
    path = _bad(tmp_path, name)
    with pytest.raises(UserError) as err:
        load_splits("arrays", root=path, val_size=0)
    message = str(err.value)
    assert fragment in message and "\n" not in message, message
    assert str(path) in message or "data.root" in message, message


def test_check_data_finds_what_loading_would_refuse_first_without_reading_images(tmp_path: Path):
    with pytest.raises(UserError, match="needs data.root"):
        check_data("arrays", None)
    with pytest.raises(UserError, match="/no/such/mnist does not exist"):
        check_data("mnist", "/no/such/mnist")
    with pytest.raises(UserError, match="has no train-images-idx3-ubyte"):
        check_data("mnist", tmp_path)
    with pytest.raises(UserError, match="unknown dataset 'mnits'"):
        check_data("mnits", None)
    with pytest.raises(UserError, match="is not a .npz file"):
        check_data("arrays", _bad(tmp_path, "text file"))
    check_data("arrays", _npz(tmp_path / "ok.npz", x=_images(10), y=np.arange(10) % 2))
    check_data("digits", None)
