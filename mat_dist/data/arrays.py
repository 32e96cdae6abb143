"""``data.name: arrays``: your own images and labels, from one ``.npz`` file (``numpy.savez``).

    np.savez("mine.npz", x_train=..., y_train=..., x_test=..., y_test=...)   # a given split
    np.savez("mine.npz", x=..., y=...)                                       # mat-dist makes the split
    matd train --config mnist5k-mat data.name=arrays data.root=mine.npz

Keys of the file:

``x_train``, ``y_train``, ``x_test``, ``y_test``
    a given train/test split; or
``x``, ``y``
    all the labelled images: mat-dist holds out the last ``TEST_SHARE`` of a
    fixed permutation (seed 0, whatever the run's seed) as the test set, so
    every run and every evaluation of the file sees the same test images;
``mean``, ``std`` (optional)
    per-channel normalisation constants in pixel units ([0, 1]); without them
    they are measured on the training images.

Images are uint8 (0..255) or float in [0, 1], shaped N x C x H x W, N x H x W x C
or N x H x W (one channel); the channel axis is the one of length 1, 3 or 4
(when both ends could be, the one that leaves square images). Labels are integers 0..K-1, one per image; K,
the number of classes, is the largest label plus one. Every file that does not
fit is refused with one line naming the file, the key and what is wrong.
Nothing is unpickled: the file is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mat_dist.plumbing.errors import UserError

TEST_SHARE = 0.2        # of x, y: the test set when the file gives no split
_SPLIT_SEED = 0         # fixed: the test images do not depend on a run's seed
_GIVEN = ("x_train", "y_train", "x_test", "y_test")
_POOLED = ("x", "y")
_OPTIONAL = ("mean", "std")
_CHANNELS = (1, 3, 4)   # lengths a channel axis may have


@dataclass(frozen=True)
class ArraySplits:
    """Train and test images (N, C, H, W) float32 in [0, 1], int64 labels, K classes, mean/std per channel."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def check_file(path: Path | None) -> list[str]:
    """The array names of a readable ``.npz`` that has a split mat-dist knows; one UserError line otherwise.

    Cheap: it reads the archive's table of contents, not the arrays.
    """
    if path is None:
        raise UserError("data.name=arrays needs data.root: the .npz file of your images and labels "
                        "(numpy.savez(path, x_train=, y_train=, x_test=, y_test=) or (path, x=, y=))")
    if not path.exists():
        raise UserError(f"data.root {path} does not exist; give the .npz file of your images and labels")
    if path.is_dir():
        raise UserError(f"data.root {path} is a folder; data.name=arrays reads one .npz file (numpy.savez)")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a .npz file (numpy.savez writes one); save your arrays with "
                        f"np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as err:
        raise UserError(f"cannot read {path} ({err}); it is truncated or corrupt, write it again") from None
    has_given, has_pooled = all(k in names for k in _GIVEN), all(k in names for k in _POOLED)
    if has_given == has_pooled:
        found = ", ".join(sorted(names)) or "no arrays"
        problem = "both a split and x, y" if has_given else f"{found}"
        raise UserError(f"{path} holds {problem}; give either x_train, y_train, x_test, y_test (your split) or "
                        f"x, y (mat-dist holds out {TEST_SHARE:.0%} as test images)")
    unknown = sorted(set(names) - set(_GIVEN if has_given else _POOLED) - set(_OPTIONAL))
    if unknown:
        raise UserError(f"{path}: unknown array {unknown[0]!r}; known: "
                        f"{', '.join((_GIVEN if has_given else _POOLED) + _OPTIONAL)}")
    return names


def load_arrays(path: Path | None) -> ArraySplits:
    """Read, check and convert the file (see the module docstring); one UserError line for any bad content."""
    names = check_file(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in names}
    except ValueError as err:  # object arrays need pickle, which is refused
        raise UserError(f"{path} holds Python objects ({err}); save plain numeric arrays") from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"cannot read {path} ({err}); it is truncated or corrupt, write it again") from None
    if "x" in arrays:
        x, y = _images(arrays["x"], path, "x"), _labels(arrays["y"], path, "y", len(arrays["x"]))
        x_train, y_train, x_test, y_test = _split(x, y, path)
    else:
        x_train, x_test = _images(arrays["x_train"], path, "x_train"), _images(arrays["x_test"], path, "x_test")
        y_train = _labels(arrays["y_train"], path, "y_train", len(x_train))
        y_test = _labels(arrays["y_test"], path, "y_test", len(x_test))
        if x_train.shape[1:] != x_test.shape[1:]:
            raise UserError(f"{path}: x_train holds {_shape(x_train)} images but x_test {_shape(x_test)}; "
                            f"give both sets the same image shape")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if num_classes < 2:
        raise UserError(f"{path}: every label is 0; a classifier needs labels 0..K-1 with K >= 2 classes")
    mean, std = _normalisation(arrays, x_train, path)
    return ArraySplits(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, num_classes=num_classes,
                       mean=mean, std=std)


def _shape(images: torch.Tensor) -> str:
    return "x".join(str(d) for d in images.shape[1:])


def _images(array: np.ndarray, path: Path, key: str) -> torch.Tensor:
    """(N, C, H, W) float32 in [0, 1] from uint8 or float images in any of the accepted layouts."""
    if array.ndim == 3:
        array = array[:, None]  # N x H x W: one channel
    if array.ndim != 4:
        raise UserError(f"{path}: {key} has shape {array.shape}; give images as N x C x H x W, N x H x W x C "
                        f"or N x H x W")
    if len(array) == 0:
        raise UserError(f"{path}: {key} holds no images")
    _, d1, d2, d3 = array.shape
    first = d1 in _CHANNELS and (d3 not in _CHANNELS or d2 == d3)   # N x C x H x W (square images break a tie)
    last = d3 in _CHANNELS and (d1 not in _CHANNELS or d1 == d2)    # N x H x W x C
    if first and not last:
        pass
    elif last and not first:
        array = array.transpose(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
    else:
        raise UserError(f"{path}: cannot tell the channel axis of {key} (shape {array.shape}); store it as "
                        f"N x C x H x W with C in 1, 3, 4")
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32) / 255.0)
    if array.dtype.kind != "f":
        raise UserError(f"{path}: {key} is {array.dtype}; give uint8 images (0..255) or floats in [0, 1]")
    if not np.isfinite(array).all():
        raise UserError(f"{path}: {key} holds NaN or infinite values; give finite pixels in [0, 1]")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        hint = "; divide by 255" if high <= 255 and low >= 0 else ""
        raise UserError(f"{path}: {key} has pixels in [{low:g}, {high:g}], not [0, 1]{hint} (radii are in "
                        f"[0, 1] pixel units)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _labels(array: np.ndarray, path: Path, key: str, count: int) -> torch.Tensor:
    if array.ndim != 1 or len(array) != count:
        raise UserError(f"{path}: {key} has shape {array.shape}; give one integer label per image ({count},)")
    if array.dtype.kind not in "iu":
        raise UserError(f"{path}: {key} is {array.dtype}; give integer labels 0..K-1 (not one-hot, not floats)")
    if array.min() < 0:
        raise UserError(f"{path}: {key} has a label {int(array.min())}; give labels 0..K-1")
    return torch.from_numpy(array.astype(np.int64))


def _split(x: torch.Tensor, y: torch.Tensor, path: Path):
    n = len(x)
    n_test = int(round(TEST_SHARE * n))
    if n_test < 1 or n - n_test < 2:
        raise UserError(f"{path}: {n} images are too few to hold out {TEST_SHARE:.0%} as test images; give more, "
                        f"or your own split (x_train, y_train, x_test, y_test)")
    perm = torch.from_numpy(np.random.default_rng(_SPLIT_SEED).permutation(n))
    train, test = perm[: n - n_test].sort().values, perm[n - n_test:].sort().values
    return x[train], y[train], x[test], y[test]


def _normalisation(arrays: dict[str, np.ndarray], x_train: torch.Tensor, path: Path):
    channels = x_train.shape[1]
    if ("mean" in arrays) != ("std" in arrays):
        raise UserError(f"{path}: give both mean and std (per channel) or neither (then they are measured)")
    if "mean" not in arrays:
        mean = x_train.mean(dim=(0, 2, 3))
        std = x_train.std(dim=(0, 2, 3)).clamp_min(1e-6)  # a constant channel must not divide by 0
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    mean = np.asarray(arrays["mean"], dtype=np.float64).reshape(-1)
    std = np.asarray(arrays["std"], dtype=np.float64).reshape(-1)
    if len(mean) != channels or len(std) != channels:
        raise UserError(f"{path}: mean and std need one value per channel ({channels}); got {len(mean)} and "
                        f"{len(std)}")
    if (std <= 0).any() or not np.isfinite(np.concatenate([mean, std])).all():
        raise UserError(f"{path}: std must be positive and mean, std finite (pixel units, [0, 1])")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
