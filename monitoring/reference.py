"""The drift reference saved with every registered model: a sample of its training features (the model's
own: numbers as they are, text as its text features) and its predictions on them, so later drift checks
compare live traffic with what the model was built on."""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from weakflow.tasks.core.training import predict_proba
from weakflow.tasks.lib.data import PROVENANCE, PipelineData


def reference_sample(data: PipelineData, model: nn.Module, size: int = 1000, seed: int = 0, device: str = "auto") -> pd.DataFrame:
    """Up to ``size`` training rows (any provenance; never test rows) with prediction and confidence."""
    rows = data.train.sample(n=min(size, len(data.train)), random_state=seed)
    x = data.x(rows)
    probs = predict_proba(model, x, device=device)
    out = pd.DataFrame(x, columns=data.features)
    out[PROVENANCE] = rows[PROVENANCE].to_numpy()
    out["prediction"] = np.asarray(data.classes)[probs.argmax(axis=1)]
    out["confidence"] = probs.max(axis=1)
    return out
