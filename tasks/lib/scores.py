"""How one model scored on a labelled split: accuracy, macro-F1, ECE, sklearn's per-class report, the
confusion matrix. Shared by the evaluate stage and the review report (neither imports the other for it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from weakflow.tasks.core.metrics import expected_calibration_error


@dataclass
class ModelScores:
    accuracy: float
    macro_f1: float
    ece: float
    report: dict  # sklearn's per-class report
    confusion: np.ndarray


def score(probs: np.ndarray, y: np.ndarray, classes: list[int]) -> ModelScores:
    pred = probs.argmax(axis=1)
    labels = list(range(len(classes)))
    return ModelScores(
        accuracy=float(accuracy_score(y, pred)),
        macro_f1=float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        ece=expected_calibration_error(probs, y),
        report=classification_report(y, pred, labels=labels, target_names=[str(c) for c in classes],
                                      output_dict=True, zero_division=0),
        confusion=confusion_matrix(y, pred, labels=labels),
    )
