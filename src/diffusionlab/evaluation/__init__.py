"""Sample-quality evaluation: a cached MNIST digit classifier, feature-space Frechet
distance, class coverage and memorisation checks
(see :mod:`diffusionlab.evaluation.digits`)."""
from .digits import (
    CLASSIFIER_FILENAME,
    DigitClassifier,
    default_cache_dir,
    digit_metrics,
    extract_features,
    feature_stats,
    format_digit_metrics,
    frechet_distance,
    load_digit_classifier,
    train_digit_classifier,
)

__all__ = [
    "CLASSIFIER_FILENAME",
    "DigitClassifier",
    "default_cache_dir",
    "digit_metrics",
    "extract_features",
    "feature_stats",
    "format_digit_metrics",
    "frechet_distance",
    "load_digit_classifier",
    "train_digit_classifier",
]
