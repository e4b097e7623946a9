"""The calibration slice: normal training images held out of training and of the memory bank, so that the default
threshold is set on scores of normal images the detector has never seen.

The default threshold of a :class:`doc_core.model.detector.DOCDetector` is a percentile (95 by default) of normal
scores. Leave-one-out scores of the very images the compactness loss pulled together and that form the k-NN bank are
optimistic (they sit closer to the bank than new normal images do), so "5 % false alarms" would be a hope. Scores of
a held-out slice are an honest estimate of what new normal images score.

Rule (:func:`calibration_split`): ``m = max(ceil(fraction * n), minimum)`` of the ``n`` normal images are held out,
chosen by a seeded permutation. When that would leave fewer than ``2 m`` images to train on (with the defaults 10 %
and 30: fewer than 90 normal images), calibration is turned off automatically and the reason is recorded: the
threshold then falls back to the leave-one-out training scores, as before calibration existed. ``fraction = 0``
turns it off on purpose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_CALIBRATION_FRACTION = 0.1
"""Share of the normal training images held out for calibration by default."""
MIN_CALIBRATION = 30
"""Fewest images in a calibration slice: a 95th percentile of fewer scores says little."""
MAX_CALIBRATION_FRACTION = 0.5
_SEED_SALT = 0xCA1  # the slice's random stream differs from the training's stream of the same seed


@dataclass(frozen=True)
class CalibrationSplit:
    """Which normal images train (and form the bank) and which calibrate the threshold.

    Attributes
    ----------
    train_index : np.ndarray, int64, shape (n - m,)
        Increasing indices of the images used for training and for the bank.
    calibration_index : np.ndarray, int64, shape (m,)
        Increasing indices of the held-out images; empty when calibration is off.
    note : str
        Why calibration is off ("" when on).
    """

    train_index: np.ndarray
    calibration_index: np.ndarray
    note: str = ""

    @property
    def enabled(self) -> bool:
        return len(self.calibration_index) > 0


def calibration_size(n: int, fraction: float, minimum: int = MIN_CALIBRATION) -> tuple[int, str]:
    """Size ``m`` of the calibration slice of ``n`` normal images, and why it is 0 ("" when it is not).

    Raises
    ------
    ValueError
        ``fraction`` outside ``[0, 0.5]`` or ``minimum < 1``.
    """
    if not 0.0 <= fraction <= MAX_CALIBRATION_FRACTION or not math.isfinite(fraction):
        raise ValueError(f"calibration fraction must be in [0, {MAX_CALIBRATION_FRACTION}], got {fraction}")
    if minimum < 1:
        raise ValueError(f"the smallest calibration slice must be at least 1 image, got {minimum}")
    if fraction == 0:
        return 0, "calibration is turned off (fraction 0)"
    m = max(math.ceil(fraction * n - 1e-9), minimum)
    if n - m < 2 * m:
        return 0, (f"calibration is turned off: holding out {m} of {n} normal images (at least {minimum}) would "
                   f"leave fewer than {2 * m} to train on; the threshold rests on leave-one-out training scores")
    return m, ""


def calibration_split(n: int, fraction: float = DEFAULT_CALIBRATION_FRACTION, minimum: int = MIN_CALIBRATION,
                      seed: int = 0) -> CalibrationSplit:
    """Split ``n`` normal images into training and calibration images (see the module's rule).

    The same ``(n, fraction, minimum, seed)`` always gives the same split.
    """
    m, note = calibration_size(n, fraction, minimum)
    if m == 0:
        return CalibrationSplit(np.arange(n, dtype=np.int64), np.zeros(0, np.int64), note)
    perm = np.random.default_rng([int(seed), _SEED_SALT]).permutation(n)
    return CalibrationSplit(np.sort(perm[m:]).astype(np.int64), np.sort(perm[:m]).astype(np.int64))
