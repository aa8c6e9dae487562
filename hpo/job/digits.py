"""scikit-learn's digits, the built-in image dataset, as plain arrays: no torch, so that
``hpo create`` checks it without importing torch."""

from __future__ import annotations

import numpy as np

DIGITS_LEVELS = 16.0
"""scikit-learn's digits are grey levels 0..16: divided by this to [0, 1]."""
DIGITS_CLASSES = [str(i) for i in range(10)]
"""The class names of digits: its labels as text."""


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (images ``[1797, 8, 8]`` of grey levels 0..16, labels).

    Read from the file scikit-learn ships, as ``sklearn.datasets.load_digits`` reads it, without
    importing scikit-learn: its import costs every worker and ``hpo create`` about 3 s of CPU.
    Where the file is not where it was, ``load_digits`` itself."""
    from hpo.provenance import DIGITS_FILE, package_file

    path = package_file(*DIGITS_FILE)
    if not path.is_file():
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, np.asarray(digits.target, dtype=np.int64)
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
