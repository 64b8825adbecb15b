"""Example labelling functions for the sklearn digits demo (columns px_0..px_63: an 8x8 image, row-major, 0..16).

Each is a cheap, vectorised hunch that names one class on the rows it is sure of and abstains
(-1) elsewhere; on ``load_digits()`` both are far above the 10% chance level where they fire.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ABSTAIN = -1
PIXELS = [f"px_{i}" for i in range(64)]


def _images(batch: pd.DataFrame) -> np.ndarray:
    return batch[PIXELS].to_numpy(dtype=np.float64).reshape(-1, 8, 8)


def ink_heavy_is_eight(batch: pd.DataFrame) -> np.ndarray:
    """8: lots of ink, inked sides around both loops (rows 1-2 and 5-6) with lighter holes, and a full waist."""
    img = _images(batch)
    ink = img.sum(axis=(1, 2))
    waist = img[:, 3:5, 3:5].mean(axis=(1, 2))
    upper_sides, upper_hole = img[:, 1:3, [2, 5]].mean(axis=(1, 2)), img[:, 1:3, 3:5].mean(axis=(1, 2))
    lower_sides, lower_hole = img[:, 5:7, [2, 5]].mean(axis=(1, 2)), img[:, 5:7, 3:5].mean(axis=(1, 2))
    eight = (
        (ink > 300) & (waist > 12)
        & (upper_sides > 8) & (upper_hole < upper_sides)
        & (lower_sides > 8) & (lower_hole < lower_sides)
    )
    return np.where(eight, 8, ABSTAIN)


def empty_center_is_zero(batch: pd.DataFrame) -> np.ndarray:
    """0: a ring of ink around an almost empty centre (the middle 2x2 pixels)."""
    img = _images(batch)
    center = img[:, 3:5, 3:5].sum(axis=(1, 2))
    zero = (center < 5) & (img.sum(axis=(1, 2)) > 280)
    return np.where(zero, 0, ABSTAIN)
