"""A linear probe: logistic regression from frozen features to a label, scored on held-out images.

Features are standardised with the training objects' mean and standard deviation, then scikit-learn's
``LogisticRegression`` (L2, ``C`` = 0.5) fits all classes at once. The chance baseline is the majority class
of the training objects: its accuracy on the held-out ones is what a probe that reads nothing scores.
A held-out object whose class never occurs in training counts as wrong.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

__all__ = ["HELDOUT_FRACTION", "ProbeScore", "fit_probe", "is_heldout"]

HELDOUT_FRACTION = 0.3


def is_heldout(image_id: str, fraction: float = HELDOUT_FRACTION) -> bool:
    """Whether an image (a hex hash, see :func:`~vlcoattn.probe.objects.image_id`) is held out: its hash read as
    a number in [0, 1) is below ``fraction``. An image keeps its side whatever else is read with it."""
    return int(image_id[:8], 16) / 16**8 < fraction


@dataclass(frozen=True)
class ProbeScore:
    """Train and held-out accuracy of one probe, the majority-class baseline, and what it was fitted on."""

    train: float
    heldout: float
    chance: float
    train_objects: int
    heldout_objects: int
    classes: int  # distinct labels among the training objects


def _logistic_regression(c: float):
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ModuleNotFoundError(
            "the feature probe needs scikit-learn: pip install 'vlcoattn[probe]' (or scikit-learn)") from None
    return LogisticRegression(max_iter=2000, C=c)


def fit_probe(x_train: np.ndarray, y_train: list[str], x_test: np.ndarray, y_test: list[str],
              c: float = 0.5) -> ProbeScore:
    """Fit on (x_train, y_train), score on both sides; ``x`` are (N, C) features, ``y`` class names."""
    if not len(y_train) or not len(y_test):
        raise ValueError(f"a probe needs objects on both sides: {len(y_train)} train, {len(y_test)} held out")
    majority = Counter(y_train).most_common(1)[0][0]
    y_tr, y_te = np.asarray(y_train), np.asarray(y_test)
    chance = float(np.mean(y_te == majority))
    if len(set(y_train)) < 2:  # one class: the probe can only say it
        return ProbeScore(1.0, chance, chance, len(y_tr), len(y_te), 1)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_tr, x_te = (x_train - mean) / std, (x_test - mean) / std
    with warnings.catch_warnings():  # many classes for few objects: the report's object counts show it
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
        clf = _logistic_regression(c).fit(x_tr, y_tr)
    return ProbeScore(float(clf.score(x_tr, y_tr)), float(clf.score(x_te, y_te)), chance,
                      len(y_tr), len(y_te), len(clf.classes_))
