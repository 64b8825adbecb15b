"""What is recorded of a pseudo-label set (by the pseudo_label stage, and by the full training for every
self-training round's relabelled set): its figures, per-class table, kept rows and confidence histogram,
into the active MLflow run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import mlflow
import numpy as np

from weakflow.tasks.core.pseudo import HIST_BINS
from weakflow.tasks.lib import tracking
from weakflow.tasks.lib.data import PipelineData
from weakflow.tasks.lib.pseudo_labels import SMALL_ENOUGH_TO_LOG, PseudoLabels, pseudo_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def log_pseudo_labels(pseudo: PseudoLabels, data: PipelineData, prefix: str = "pseudo_labels") -> None:
    """Metrics, the per-class table, the kept set (or a sample of a huge one) and the confidence histogram."""
    import matplotlib.pyplot as plt

    mlflow.log_metrics(pseudo_metrics(pseudo, data))
    mlflow.log_table(pseudo.per_class, f"{prefix}/per_class.json")
    tracking.log_frame(pseudo.per_class, prefix, "per_class")
    if pseudo.kept_count <= SMALL_ENOUGH_TO_LOG:
        tracking.log_frame(pseudo.kept, prefix, "kept")
    else:  # the full set stays in the workspace; MLflow gets its location and a sample to look at
        mlflow.set_tag("pseudo_labels.path", str(pseudo.path.resolve()))
        import pyarrow.parquet as pq

        sample = next(pq.ParquetFile(pseudo.path).iter_batches(batch_size=10_000)).to_pandas()
        tracking.log_frame(sample, prefix, "kept_sample")
    fig = confidence_histogram(pseudo)
    mlflow.log_figure(fig, f"{prefix}/confidence_histogram.png")
    plt.close(fig)


def confidence_histogram(pseudo: PseudoLabels) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges = np.linspace(0, 1, HIST_BINS + 1)
    ax.bar(edges[:-1], pseudo.stream.histogram, width=1 / HIST_BINS, align="edge", color="#4c72b0")
    lo, hi = float(pseudo.stream.thresholds.min()), float(pseudo.stream.thresholds.max())
    ax.axvline(lo, color="#c44e52", linestyle="--", label=f"threshold {lo:.3g}" if lo == hi else f"thresholds {lo:.3g}-{hi:.3g}")
    if hi != lo:
        ax.axvline(hi, color="#c44e52", linestyle="--")
    ax.set_xlabel(f"calibrated confidence (T = {pseudo.calibration.temperature:.2f})")
    ax.set_ylabel("rows")
    ax.set_title(f"{pseudo.policy.kind}: {pseudo.kept_count} of {pseudo.candidates} kept")
    ax.legend()
    fig.tight_layout()
    return fig
