"""Datasets (embedded MNIST-5k, MNIST IDX, CIFAR-10 batches, sklearn digits) and MIMO batches."""

from mat_dist.data.datasets import (
    DATASET_SHAPES,
    NUM_CLASSES,
    DatasetName,
    DataSplits,
    ImageDataset,
    load_splits,
)
from mat_dist.data.mimo_batches import MimoBatches

__all__ = [
    "DATASET_SHAPES",
    "NUM_CLASSES",
    "DataSplits",
    "DatasetName",
    "ImageDataset",
    "MimoBatches",
    "load_splits",
]
