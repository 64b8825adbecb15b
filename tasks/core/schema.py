"""A model's input schema: which raw columns a row carries and how they become the feature vector.

Part of the torch core (no Prefect, no MLflow): a registered model loads it with its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from weakflow.tasks.core.images import ImageFeaturizer
from weakflow.tasks.core.picture_rows import PictureRows
from weakflow.tasks.core.text import TextFeaturizer


@dataclass(frozen=True)
class InputSchema:
    """What a row carries (numeric, text and picture input columns) and how it becomes the model's feature
    vector: the numbers as they are, the text through a fitted :class:`tasks.core.text.TextFeaturizer`, the
    picture through an :class:`tasks.core.images.ImageFeaturizer` (its pixels last, so the picture network
    finds them at the end)."""

    numeric: list[str]
    text: list[str]
    featurizer: TextFeaturizer | None = None
    images: ImageFeaturizer | None = None

    @property
    def image_columns(self) -> list[str]:
        return [self.images.column] if self.images is not None else []

    @property
    def inputs(self) -> list[str]:
        return [*self.numeric, *self.text, *self.image_columns]

    @property
    def names(self) -> list[str]:
        """The model's feature names: the numeric columns, then the text features, then the pixels."""
        return [*self.numeric, *(self.featurizer.names if self.featurizer is not None else []),
                *(self.images.names if self.images is not None else [])]

    @property
    def image_shape(self) -> tuple[int, int, int] | None:
        return self.images.fmt.shape if self.images is not None else None

    def side(self, frame: pd.DataFrame) -> np.ndarray:
        """The features before the pixels: numbers and text features."""
        numbers = frame[self.numeric].to_numpy(dtype=np.float32)
        if self.featurizer is None:
            return numbers
        return np.hstack([numbers, self.featurizer.transform(frame)])

    def table(self, frame: pd.DataFrame) -> np.ndarray | PictureRows:
        """A training table: :meth:`x`, or for pictures above the stream policy's budget a :class:`PictureRows`
        that reads the pixels from the decoded cache as training needs them."""
        side = self.side(frame)
        if self.images is not None:
            lazy = self.images.on_disk(frame, side)
            if lazy is not None:
                return lazy
        return self.x(frame, side)

    def x(self, frame: pd.DataFrame, side: np.ndarray | None = None) -> np.ndarray:
        """The feature matrix of ``frame``, float32, in memory (``side``: its :meth:`side`, when already made)."""
        side = self.side(frame) if side is None else side
        if self.images is None:
            return side
        return np.hstack([side, self.images.transform(frame)]) if side.shape[1] else self.images.transform(frame)
