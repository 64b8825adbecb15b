"""cleanlab's ``find_label_issues``, always in this process.

With ``n_jobs`` left unset cleanlab opens a ``multiprocessing.Pool`` (fork, on Linux) over the physical
cores. Forking a process in which Prefect's and MLflow's threads run can hand the child a lock some thread
held at that instant; the child then waits on it forever and the pool's ``__exit__`` with it (seen in the
evaluate stage: a run hung until killed). The per-class work is small, so one process costs little.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def find_label_issues(labels: np.ndarray, pred_probs: np.ndarray, **kwargs: Any) -> np.ndarray:
    """``cleanlab.filter.find_label_issues`` with ``n_jobs=1`` (no forked pool); same arguments and result."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    return cleanlab_find(labels=labels, pred_probs=pred_probs, n_jobs=1, **kwargs)
