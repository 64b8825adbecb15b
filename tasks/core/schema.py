"""A model's input schema: which raw columns a row carries and how they become the feature vector.

Part of the torch core (no Prefect, no MLflow): a registered model loads it with its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from weakflow.tasks.core.text import TextFeaturizer


@dataclass(frozen=True)
class InputSchema:
    """What a row carries (numeric and text input columns) and how it becomes the model's feature vector:
    the numbers as they are, the text through a fitted :class:`tasks.core.text.TextFeaturizer`."""

    numeric: list[str]
    text: list[str]
    featurizer: TextFeaturizer | None = None

    @property
    def inputs(self) -> list[str]:
        return [*self.numeric, *self.text]

    @property
    def names(self) -> list[str]:
        """The model's feature names: the numeric columns, then the text features."""
        return [*self.numeric, *(self.featurizer.names if self.featurizer is not None else [])]

    def x(self, frame: pd.DataFrame) -> np.ndarray:
        numbers = frame[self.numeric].to_numpy(dtype=np.float32)
        if self.featurizer is None:
            return numbers
        return np.hstack([numbers, self.featurizer.transform(frame)])
