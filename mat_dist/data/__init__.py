"""Datasets (embedded MNIST-5k, MNIST IDX, CIFAR-10 batches, sklearn digits, your own .npz)."""

from mat_dist.data.datasets import (
    DATASET_SHAPES,
    NUM_CLASSES,
    DatasetName,
    DataSplits,
    ImageDataset,
    check_data,
    load_splits,
)

__all__ = [
    "DATASET_SHAPES",
    "NUM_CLASSES",
    "DataSplits",
    "DatasetName",
    "ImageDataset",
    "check_data",
    "load_splits",
]
