"""Realistic traffic for a running model server, with or without a distribution shift.

Rows come from the configured test split (the demo's held-out rows by default; never trained on). Shifts:

- ``none``: the rows as they are (no drift: the checks must stay quiet);
- ``noise``: Gaussian sensor noise (sd ``3``, on the demo's 0-16 pixel scale), clipped to the data's range;
- ``brightness``: every pixel dimmed to 60% and lifted by 2 (a darker, lower-contrast camera);
- ``prior``: the class mix changes: 60% of rows from classes 0 and 1 (features per class unchanged).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

Shift = Literal["none", "noise", "brightness", "prior"]
SHIFTS: tuple[str, ...] = ("none", "noise", "brightness", "prior")


def shifted_rows(test: pd.DataFrame, features: list[str], label: str, shift: Shift, n: int,
                 seed: int = 0) -> pd.DataFrame:
    """``n`` rows drawn from ``test`` (without replacement while rows last) under ``shift``; keeps the label.
    Shifted values are clipped to the range of ``test``'s features (0-16 for the demo); unshifted rows are
    left exactly as they are."""
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {SHIFTS}, got {shift!r}")
    rng = np.random.default_rng(seed)
    if shift == "prior":
        heavy = test[label].isin([0, 1]).to_numpy()
        p = np.where(heavy, 0.6 / max(heavy.sum(), 1), 0.4 / max((~heavy).sum(), 1))
        idx = rng.choice(len(test), size=n, replace=True, p=p / p.sum())
    else:
        idx = np.concatenate([rng.permutation(len(test)) for _ in range(-(-n // len(test)))])[:n]
    rows = test.iloc[idx].reset_index(drop=True)
    x = rows[features].to_numpy(np.float64)
    if shift in ("noise", "brightness"):  # the shifted values stay in the data's own range (0-16 for the demo)
        lo, hi = test[features].to_numpy().min(), test[features].to_numpy().max()
        x = x + rng.normal(0.0, 3.0, x.shape) if shift == "noise" else x * 0.6 + 2.0
        rows[features] = np.clip(x, lo, hi)
    return rows


@dataclass
class TrafficResult:
    requests: int = 0
    answered: int = 0  # requests with 200
    records: int = 0
    versions: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    feedback: list[dict] = field(default_factory=list)  # request_id, row_index, label of answered rows


def batches(rows: pd.DataFrame, size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(rows), size):
        yield rows.iloc[start : start + size]


def send(client, rows: pd.DataFrame, features: list[str], label: str, batch: int = 10,
         path: str = "/predict") -> TrafficResult:
    """POST ``rows`` in batches with an httpx-compatible ``client`` (a real ``httpx.Client`` or
    FastAPI's ``TestClient``); collects what feedback would need."""
    out = TrafficResult()
    for part in batches(rows, batch):
        out.requests += 1
        r = client.post(path, json={"records": part[features].astype(float).to_dict("records")})
        if r.status_code != 200:
            out.errors.append(f"{r.status_code}: {r.text[:200]}")
            continue
        body = r.json()
        out.answered += 1
        out.records += len(part)
        out.versions.add(body["model_version"])
        out.feedback += [{"request_id": body["request_id"], "row_index": i, "label": int(y)}
                         for i, y in enumerate(part[label])]
    return out
