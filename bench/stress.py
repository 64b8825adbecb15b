"""Stress matrix for weak supervision: datasets x noise kinds x gold shares x seeds, every column on the
same split and the same weak votes.

Datasets are scikit-learn's bundled ``digits`` (CNN on the 8x8 image), ``wine`` and ``breast_cancer``
(MLP 256-256); nothing is downloaded. Per (dataset, seed): 20% test (stratified, frozen); of the rest a
gold share (5% / 10%, stratified, at least 2 rows per class). The weak sources are simulated:

* ``symmetric`` (50% flipped to another class), ``pairflip`` (40%, c -> c+1), ``asymmetric``
  (class-conditional rates), ``lookalike`` (45% flipped to the class with the nearest mean): one
  annotator who labels the gold rows and 70% of the others (the other 30% stay unlabeled);
* ``annotators``: three annotators (accuracy 0.9, 0.7, 0.55), each on a random 60% of the rows;
* ``lfs``: two threshold labelling functions per class, picked from the true labels like an expert
  would, at 15-40% coverage and accuracy ~0.6-0.85 (where a one-feature rule can reach that).

Columns (test accuracy): ``oracle`` (every non-test row with its true label), ``gold_only``, ``ce`` / ``gce``
(gold rows + weak rows' majority vote), ``clean_learning`` (cleanlab's CleanLearning around the same
network), ``glc`` (Gold Loss Correction, Hendrycks et al. 2018), ``posterior`` (gold-only p(y|x) times
each source's gold-estimated confusion, as soft labels) and ``weakflow`` (the project's default
pipeline through the bring-your-own-data contract, ``bench.plain.run_config``). References train a
fixed number of epochs, no early stopping. The oracle (per dataset and seed) and the gold-only network
(per dataset, seed and gold share) are trained once and shared by every kind.

One MLflow run per cell x seed (params, every column's accuracy, the pipeline's candidates, LF coverage and
accuracy, errors as tags) in experiment ``weakflow-stress`` (``bench/results/mlflow.db``; ``--quick``:
``weakflow-stress-quick``); the summary (mean ± std, gap closed G, paired t-intervals of weakflow against
gold_only / glc / posterior) goes to docs/benchmarks.md, section ``stress`` (``--quick`` and ``--no-write``
only print it). A failing pipeline run is recorded, not fatal. Cells run on ``--workers`` spawned processes
(default 2) with one torch thread each: measured on the shared 2-core machine, a training with one thread
took 0.3-1.3x the time of the same training with two (CNN; 1.3x only once, when the machine was
otherwise idle) and 0.1x (MLP), and two one-thread processes side by side kept their one-process speed.

    python -m bench.stress                      # full matrix, 5 seeds, 60 epochs (1-2 h on 2 idle cores)
    python -m bench.stress --quick              # smoke: symmetric/annotators/lfs, 1 seed, 10% gold, 15 epochs
    python -m bench.stress --seeds 2 --datasets wine breast_cancer --kinds symmetric lfs --gold 0.1 --no-write
    python -m bench.stress --columns oracle gold_only weakflow --set weak_train.method=ce
    python -m bench.stress --reuse-references     # after a pipeline change: only the weakflow column reruns
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from functools import lru_cache
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import ROOT, mean_std, publish
from weakflow.tasks.core.models import ModelSpec, build_model
from weakflow.tasks.core.training import TrainSettings, WeightedLoss, fit, predict_proba

DATASETS = ("digits", "wine", "breast_cancer")
KINDS = ("symmetric", "pairflip", "asymmetric", "lookalike", "annotators", "lfs")
COLUMNS = ("oracle", "gold_only", "ce", "gce", "clean_learning", "glc", "posterior", "weakflow")
GOLD_SHARES = (0.05, 0.1)
QUICK_KINDS = ("symmetric", "annotators", "lfs")
TEST_SHARE, UNLABELED_SHARE = 0.2, 0.3
ANNOTATOR_ACCURACY, ANNOTATOR_SHARE = (0.9, 0.7, 0.55), 0.6
LF_COVERAGE, LF_ACCURACY, LFS_PER_CLASS = (0.15, 0.40), (0.60, 0.85), 2
ABSTAIN = -1


# ---------------------------------------------------------------- data and splits


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray  # float32 (n, d)
    y: np.ndarray  # int64 (n,)
    spec: ModelSpec


@lru_cache(maxsize=None)
def load_dataset(name: str) -> Dataset:
    """A bundled scikit-learn dataset with the network the matrix trains on it."""
    from sklearn.datasets import load_breast_cancer, load_digits, load_wine

    loader = {"digits": load_digits, "wine": load_wine, "breast_cancer": load_breast_cancer}[name]
    x, y = loader(return_X_y=True)
    k = int(y.max()) + 1
    if name == "digits":
        spec = ModelSpec("cnn", x.shape[1], k, hidden=(64,), image_shape=(1, 8, 8), pool=True)  # the pipeline's CNN
    else:
        spec = ModelSpec("mlp", x.shape[1], k, hidden=(256, 256))
    return Dataset(name, x.astype(np.float32), y.astype(np.int64), spec)


def rng_for(*keys: object) -> np.random.Generator:
    """A generator keyed by names and numbers (stable across runs, unlike ``hash``)."""
    return np.random.default_rng([zlib.crc32(str(k).encode()) for k in keys])


def holdout_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(non-test, test) row indices: 20% stratified test, frozen per seed for every gold share and kind."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(y)), test_size=TEST_SHARE, stratify=y, random_state=seed)


def pick_gold(y: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask: ``share`` of each class (at least 2 rows per class) becomes gold."""
    gold = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        gold[rng.choice(rows, size=min(len(rows), max(2, round(share * len(rows)))), replace=False)] = True
    return gold


def standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std < 1e-9, 1.0, std)


# ---------------------------------------------------------------- noise kinds


@dataclass
class Votes:
    """Weak votes of one or more sources on every non-test row (-1 = abstain), and what to record about them."""

    sources: list[str]
    matrix: np.ndarray  # (n, len(sources)) int64
    single: bool = True  # one annotator: UNLABELED_SHARE of the non-gold rows get no vote
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def flip_to_other(y: np.ndarray, flip: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``y`` with the ``flip`` rows moved to a uniformly random *other* class."""
    return np.where(flip, (y + rng.integers(1, k, size=len(y))) % k, y)


def symmetric(y: np.ndarray, x: np.ndarray, k: int, rng: np.random.Generator) -> Votes:
    """Uniform noise: half the labels flipped, so the true class stays the plurality only for k > 2."""
    return Votes(["annotator"], flip_to_other(y, rng.random(len(y)) < 0.5, k, rng)[:, None])


def pairflip(y: np.ndarray, x: np.ndarray, k: int, rng: np.random.Generator) -> Votes:
    """40% flipped to the next class: structured noise a majority vote cannot average out."""
    return Votes(["annotator"], np.where(rng.random(len(y)) < 0.4, (y + 1) % k, y)[:, None])


def asymmetric_rates(k: int) -> np.ndarray:
    """Flip rate per true class: binary 0 -> 1 at 40% and 1 -> 0 at 10%; multi-class 10%..50% evenly."""
    return np.array([0.4, 0.1]) if k == 2 else np.linspace(0.1, 0.5, k)


def asymmetric(y: np.ndarray, x: np.ndarray, k: int, rng: np.random.Generator) -> Votes:
    """Class-conditional rates: the noisy class prior is biased, which plain CE learns as signal."""
    rates = asymmetric_rates(k)
    return Votes(["annotator"], flip_to_other(y, rng.random(len(y)) < rates[y], k, rng)[:, None])


def lookalike_pairs(x: np.ndarray, y: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Greedy matching of classes by the distance of their means in standardised feature space
    (closest pair first); with an odd k one class is left unpaired."""
    z = standardise(np.asarray(x, dtype=np.float64))
    means = np.stack([z[y == c].mean(axis=0) for c in range(k)])
    dist = np.linalg.norm(means[:, None] - means[None], axis=2)
    np.fill_diagonal(dist, np.inf)
    pairs, free = [], set(range(k))
    while len(free) >= 2:
        live = sorted(free)
        sub = dist[np.ix_(live, live)]
        i, j = np.unravel_index(np.argmin(sub), sub.shape)
        pairs.append((live[i], live[j]))
        free -= {live[i], live[j]}
    return pairs


def lookalike(y: np.ndarray, x: np.ndarray, k: int, rng: np.random.Generator) -> Votes:
    """An annotator who confuses similar classes: 45% of each paired class goes to its partner."""
    partner = np.arange(k)
    for a, b in lookalike_pairs(x, y, k):
        partner[a], partner[b] = b, a
    flip = (rng.random(len(y)) < 0.45) & (partner[y] != y)
    pairs = ", ".join(f"{a}<->{b}" for a, b in lookalike_pairs(x, y, k))
    return Votes(["annotator"], np.where(flip, partner[y], y)[:, None], params={"lookalike_pairs": pairs})


def annotators(y: np.ndarray, x: np.ndarray, k: int, rng: np.random.Generator) -> Votes:
    """Three annotators of unequal accuracy, each labelling an independent 60% of the rows."""
    columns = []
    for acc in ANNOTATOR_ACCURACY:
        labels = flip_to_other(y, rng.random(len(y)) >= acc, k, rng)
        columns.append(np.where(rng.random(len(y)) < ANNOTATOR_SHARE, labels, ABSTAIN))
    names = [f"annotator_{i + 1}" for i in range(len(ANNOTATOR_ACCURACY))]
    return Votes(names, np.stack(columns, axis=1), single=False)


@dataclass(frozen=True)
class LabelingFunction:
    """``feature above (or below) threshold -> label``, else abstain."""

    feature: int
    above: bool
    threshold: float
    label: int

    def apply(self, x: np.ndarray) -> np.ndarray:
        col = x[:, self.feature]
        fires = col >= self.threshold if self.above else col <= self.threshold
        return np.where(fires, self.label, ABSTAIN)

    def describe(self) -> str:
        return f"f{self.feature:02d} {'>=' if self.above else '<='} {self.threshold:.4g} -> {self.label}"


def lf_options(col: np.ndarray, hit: np.ndarray, above: bool) -> list[tuple[float, float, float]]:
    """(threshold, coverage, accuracy) of the quantile thresholds on one feature whose coverage is in range."""
    qs = np.linspace(0.5, 0.9, 17) if above else np.linspace(0.1, 0.5, 17)
    out = []
    for t in np.unique(np.quantile(col, qs)):
        fires = col >= t if above else col <= t
        cov = float(fires.mean())
        if LF_COVERAGE[0] <= cov <= LF_COVERAGE[1]:
            out.append((float(t), cov, float(hit[fires].mean())))
    return out


def band_distance(acc: float) -> float:
    return max(LF_ACCURACY[0] - acc, acc - LF_ACCURACY[1], 0.0)


def design_lfs(x: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator) -> list[LabelingFunction]:
    """Per class, the first features (most separating for that class first, direction from the class mean)
    with a threshold whose coverage and accuracy fall in the target bands; a random such threshold,
    not the best stump. Where no feature reaches the band (a one-pixel rule cannot be 60% accurate for a
    10%-class at 15% coverage) the nearest-to-band options fill up."""
    z = standardise(np.asarray(x, dtype=np.float64))
    lfs = []
    for c in range(k):
        effect = z[y == c].mean(axis=0) - z[y != c].mean(axis=0)
        chosen: list[LabelingFunction] = []
        fallback: list[tuple[float, LabelingFunction]] = []
        for j in np.argsort(-np.abs(effect)):
            options = lf_options(x[:, j], y == c, bool(effect[j] > 0))
            good = [o for o in options if band_distance(o[2]) == 0.0]
            if good:
                chosen.append(LabelingFunction(int(j), bool(effect[j] > 0), good[rng.integers(len(good))][0], c))
            elif options:
                t, _, acc = min(options, key=lambda o: band_distance(o[2]))
                fallback.append((band_distance(acc), LabelingFunction(int(j), bool(effect[j] > 0), t, c)))
            if len(chosen) == LFS_PER_CLASS:
                break
        chosen += [lf for _, lf in sorted(fallback, key=lambda f: f[0])][: LFS_PER_CLASS - len(chosen)]
        lfs += chosen
    return lfs


def lfs(y: np.ndarray, x: np.ndarray, k: int, rng: np.random.Generator) -> Votes:
    """Labelling functions designed on the non-test rows' true labels; coverage and accuracy recorded."""
    functions = design_lfs(x, y, k, rng)
    matrix = np.stack([lf.apply(x) for lf in functions], axis=1)
    names = [f"lf_{lf.label}_{i}" for i, lf in enumerate(functions)]
    metrics, params = {}, {}
    for name, lf, votes in zip(names, functions, matrix.T):
        fires = votes != ABSTAIN
        metrics[f"{name}_coverage"] = float(fires.mean())
        metrics[f"{name}_accuracy"] = float((y[fires] == lf.label).mean()) if fires.any() else float("nan")
        params[name] = lf.describe()
    return Votes(names, matrix, single=False, metrics=metrics, params=params)


NoiseFn = Callable[[np.ndarray, np.ndarray, int, np.random.Generator], Votes]
NOISE: dict[str, NoiseFn] = {"symmetric": symmetric, "pairflip": pairflip, "asymmetric": asymmetric,
                             "lookalike": lookalike, "annotators": annotators, "lfs": lfs}
MULTICLASS_ONLY = {"pairflip", "lookalike"}


def skip_reason(kind: str, k: int) -> str | None:
    """Why ``kind`` does not apply to a k-class dataset (None: it does)."""
    return "multi-class only" if kind in MULTICLASS_ONLY and k < 3 else None


def majority_vote(votes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Per row the most voted class, ties broken at random; -1 where no source voted."""
    counts = np.stack([(votes == c).sum(axis=1) for c in range(k)], axis=1).astype(np.float64)
    label = (counts + rng.random(counts.shape) * 0.5).argmax(axis=1)  # jitter < 1 only reorders ties
    return np.where(counts.sum(axis=1) > 0, label, ABSTAIN)


# ---------------------------------------------------------------- one cell


@dataclass
class Cell:
    """One (dataset, kind, gold share, seed): the non-test rows with truth, gold mask and votes, and the test split."""

    dataset: str
    kind: str
    gold_share: float
    seed: int
    spec: ModelSpec
    x: np.ndarray
    y: np.ndarray
    gold: np.ndarray
    votes: Votes
    mv: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def weak(self) -> np.ndarray:
        """Non-gold rows with at least one vote."""
        return ~self.gold & (self.mv != ABSTAIN)

    @property
    def k(self) -> int:
        return self.spec.num_classes


def make_cell(ds: Dataset, kind: str, gold_share: float, seed: int) -> Cell:
    """The split and votes every column of this cell shares. Votes depend on (dataset, kind, seed) only,
    so the two gold shares see the same annotators."""
    train, test = holdout_split(ds.y, seed)
    x, y, k = ds.x[train], ds.y[train], ds.spec.num_classes
    gold = pick_gold(y, gold_share, rng_for(ds.name, seed, gold_share, "gold"))
    votes = NOISE[kind](y, x, k, rng_for(ds.name, seed, kind, "votes"))
    if votes.single:  # the annotator saw the gold rows and 70% of the rest
        rng = rng_for(ds.name, seed, gold_share, kind, "unlabeled")
        rest = np.flatnonzero(~gold)
        votes.matrix[rng.choice(rest, size=round(UNLABELED_SHARE * len(rest)), replace=False)] = ABSTAIN
    mv = majority_vote(votes.matrix, k, rng_for(ds.name, seed, gold_share, kind, "ties"))
    return Cell(ds.name, kind, gold_share, seed, ds.spec, x, y, gold, votes, mv, ds.x[test], ds.y[test])


# ---------------------------------------------------------------- training helpers


def new_net(cell: Cell) -> nn.Module:
    """A fresh network seeded by the cell's seed, input scaling fitted on every non-test row."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cell.seed)
        model = build_model(cell.spec)
    model.scale.fit(cell.x)
    return model


def train(cell: Cell, x: np.ndarray, targets: np.ndarray, epochs: int, loss: str = "ce", rule=None,
          weights: np.ndarray | None = None, batch_size: int = 64) -> nn.Module:
    """Fixed-epoch training with the project's loop, no dev split (last epoch, no early stopping)."""
    settings = TrainSettings(epochs=epochs, seed=cell.seed, loss=loss, batch_size=batch_size)
    return fit(new_net(cell), x, targets, settings, weights=weights, rule=rule).model


def score(model: nn.Module, cell: Cell) -> float:
    return float((predict_proba(model, cell.x_test).argmax(1) == cell.y_test).mean())


def naive_rows(cell: Cell) -> tuple[np.ndarray, np.ndarray]:
    """Gold rows with gold labels + weak rows with their majority vote: the rows ce/gce/CleanLearning see."""
    return (np.concatenate([cell.x[cell.gold], cell.x[cell.weak]]),
            np.concatenate([cell.y[cell.gold], cell.mv[cell.weak]]))


# ---------------------------------------------------------------- reference columns


def col_oracle(cell: Cell, epochs: int) -> float:
    """Every non-test row with its true label: the ceiling for this network and data."""
    return score(train(cell, cell.x, cell.y, epochs), cell)


def gold_model(cell: Cell, epochs: int) -> nn.Module:
    """Batches of 32 on the small gold set, as the pipeline's own gold-only model (more steps per epoch)."""
    return train(cell, cell.x[cell.gold], cell.y[cell.gold], epochs, batch_size=32)


def col_naive(cell: Cell, epochs: int, loss: str) -> float:
    x, labels = naive_rows(cell)
    return score(train(cell, x, labels, epochs, loss=loss), cell)


class TorchNet:
    """scikit-learn-style wrapper (fit / predict_proba / predict, clonable) of the cell's network, for cleanlab."""

    def __init__(self, cell: Cell | None = None, epochs: int = 60) -> None:
        self.cell, self.epochs = cell, epochs

    def get_params(self, deep: bool = True) -> dict:
        return {"cell": self.cell, "epochs": self.epochs}

    def set_params(self, **params) -> TorchNet:
        for key, value in params.items():
            setattr(self, key, value)
        return self

    def __sklearn_clone__(self) -> TorchNet:  # the cell is shared data, not state: no deep copy
        return TorchNet(self.cell, self.epochs)

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> TorchNet:
        self.model_ = train(self.cell, X, np.asarray(y), self.epochs, weights=sample_weight)
        self.classes_ = np.arange(self.cell.k)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return predict_proba(self.model_, X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(1)


def col_clean_learning(cell: Cell, epochs: int) -> float:
    """cleanlab's CleanLearning (3-fold confident learning, prune, refit) on the ce rows. ``n_jobs=1``:
    ``cleanlab.filter.find_label_issues`` would otherwise open a forked multiprocessing.Pool over the cores
    (the only pool on this path; the cross-validation itself runs in this process)."""
    from cleanlab.classification import CleanLearning

    x, labels = naive_rows(cell)
    cl = CleanLearning(TorchNet(cell, epochs), seed=cell.seed, cv_n_folds=3, find_label_issues_kwargs={"n_jobs": 1})
    cl.fit(x, labels)
    return float((cl.predict(cell.x_test) == cell.y_test).mean())


class ForwardCorrected(WeightedLoss):
    """GLC's update rule: CE on gold rows, -log((softmax(z) @ C)[noisy]) on weak rows. Targets carry the
    row kind: ``label`` for gold, ``label + k`` for weak. Only the step is GLC's own; the loop's epoch
    hooks (nothing measured, best epoch kept) are the plain rule's."""

    def __init__(self, corruption: np.ndarray) -> None:
        self.c = torch.as_tensor(corruption, dtype=torch.float32)
        self.k = len(corruption)

    def step(self, model, optimizer, xb, yb, wb, rows=None):
        logits = model(xb).float()
        weak, label = yb >= self.k, yb % self.k
        noisy = F.softmax(logits, dim=1) @ self.c.to(logits.device)
        corrected = -torch.log(noisy.gather(1, label[:, None]).squeeze(1).clamp_min(1e-7))
        loss = torch.where(weak, corrected, F.cross_entropy(logits, label, reduction="none")).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()


def corruption_matrix(model: nn.Module, x_gold: np.ndarray, y_gold: np.ndarray, k: int) -> np.ndarray:
    """C[true, noisy]: the weak-label model's mean softmax over the gold rows of each true class."""
    probs = predict_proba(model, x_gold)
    return np.stack([probs[y_gold == c].mean(axis=0) for c in range(k)])


def col_glc(cell: Cell, epochs: int) -> float:
    """Gold Loss Correction (Hendrycks et al., NeurIPS 2018), from the paper."""
    weak_model = train(cell, cell.x[cell.weak], cell.mv[cell.weak], epochs)
    c = corruption_matrix(weak_model, cell.x[cell.gold], cell.y[cell.gold], cell.k)
    x = np.concatenate([cell.x[cell.gold], cell.x[cell.weak]])
    targets = np.concatenate([cell.y[cell.gold], cell.mv[cell.weak] + cell.k])
    return score(train(cell, x, targets, epochs, rule=ForwardCorrected(c)), cell)


def source_confusions(cell: Cell) -> np.ndarray:
    """P(vote | true class) per source from the gold rows: (sources, k, k), +1 smoothing per row, abstains left out."""
    yg, vg = cell.y[cell.gold], cell.votes.matrix[cell.gold]
    out = np.ones((vg.shape[1], cell.k, cell.k))
    for s in range(vg.shape[1]):
        voted = vg[:, s] != ABSTAIN
        np.add.at(out[s], (yg[voted], vg[voted, s]), 1.0)
    return out / out.sum(axis=2, keepdims=True)


def weak_posteriors(prior: np.ndarray, votes: np.ndarray, confusions: np.ndarray) -> np.ndarray:
    """p(y | x, votes) ∝ p(y | x) * prod over voting sources of P(vote | y)."""
    log_post = np.log(np.clip(prior, 1e-7, None))
    for s in range(votes.shape[1]):
        voted = votes[:, s] != ABSTAIN
        log_post[voted] += np.log(confusions[s][:, votes[voted, s]].T)
    log_post -= log_post.max(axis=1, keepdims=True)
    post = np.exp(log_post)
    return post / post.sum(axis=1, keepdims=True)


def col_posterior(cell: Cell, epochs: int, gold_net: nn.Module) -> float:
    """Gold-anchored posteriors as soft labels for the weak rows, hard gold labels on gold rows."""
    post = weak_posteriors(predict_proba(gold_net, cell.x[cell.weak]), cell.votes.matrix[cell.weak],
                           source_confusions(cell))
    x = np.concatenate([cell.x[cell.gold], cell.x[cell.weak]])
    targets = np.concatenate([np.eye(cell.k)[cell.y[cell.gold]], post]).astype(np.float32)
    return score(train(cell, x, targets, epochs), cell)


# ---------------------------------------------------------------- the pipeline column


def feature_names(d: int) -> list[str]:
    return [f"f{j:02d}" for j in range(d)]


def write_files(cell: Cell, folder: Path) -> tuple[Path, Path]:
    """The cell as the README's data contract: train.parquet (features, nullable gold ``label``, one
    column per weak source with -1 = abstain) and test.parquet."""
    import pandas as pd

    names = feature_names(cell.x.shape[1])
    train = pd.DataFrame(cell.x, columns=names)
    train["label"] = pd.array(np.where(cell.gold, cell.y, 0), dtype="Int64")
    train.loc[~cell.gold, "label"] = pd.NA
    for s, source in enumerate(cell.votes.sources):
        train[source] = cell.votes.matrix[:, s].astype(np.int64)
    test = pd.DataFrame(cell.x_test, columns=names).assign(label=cell.y_test.astype(np.int64))
    paths = folder / "train.parquet", folder / "test.parquet"
    train.to_parquet(paths[0], index=False)
    test.to_parquet(paths[1], index=False)
    return paths


def pipeline_overrides(cell: Cell, folder: Path, extra: list[str]) -> list[str]:
    train_path, test_path = write_files(cell, folder)
    base = ["data.source=files", f"data.train_path={train_path}", f"data.test_path={test_path}",
            f"data.feature_columns=[{', '.join(feature_names(cell.x.shape[1]))}]",
            f"data.weak_label_columns=[{', '.join(cell.votes.sources)}]",
            f"seed={cell.seed}", f"data.seed={cell.seed}", f"tracking.workspace={folder / 'workspace'}"]
    if cell.spec.image_shape is not None:
        base.append(f"data.image_shape=[{', '.join(map(str, cell.spec.image_shape))}]")
    return base + extra


@dataclass
class PipelineResult:
    accuracy: float
    candidates: dict[str, float]
    shipped: str
    seconds: dict[str, float]


def col_weakflow(cell: Cell, extra: list[str]) -> PipelineResult:
    """The default pipeline on this cell via ``bench.plain.run_config`` (its stdout kept out of the progress lines)."""
    from bench.plain import run_config
    from weakflow.tasks.lib.config import load_config

    with tempfile.TemporaryDirectory(prefix="stress-") as tmp:
        cfg = load_config(None, pipeline_overrides(cell, Path(tmp), extra))
        with contextlib.redirect_stdout(io.StringIO()):
            run = run_config(cfg, Path(tmp) / "workspace")
    return PipelineResult(float(run.test_accuracy), {k: float(v) for k, v in run.candidates.items()},
                          str(run.shipped), dict(getattr(run, "times", {}) or {}))


# ---------------------------------------------------------------- running the matrix


@dataclass
class Outcome:
    """Everything one cell x seed produced."""

    cell: Cell
    accuracy: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    pipeline: PipelineResult | None = None
    wall: float = 0.0


class Runner:
    """Runs the columns of cells, sharing what does not depend on the noise kind: the oracle per
    (dataset, seed) and the gold-only network per (dataset, seed, gold share)."""

    def __init__(self, columns: list[str], epochs: int, overrides: list[str]) -> None:
        self.columns, self.epochs, self.overrides = columns, epochs, overrides
        self.oracle: dict[tuple, float] = {}
        self.gold: dict[tuple, tuple[nn.Module, float]] = {}

    def run(self, cell: Cell) -> Outcome:
        out = Outcome(cell)
        for column in self.columns:
            t = time.perf_counter()
            try:
                out.accuracy[column] = self.column(column, cell, out)
            except Exception as exc:  # one broken column or pipeline run must not end the matrix
                out.errors[column] = f"{type(exc).__name__}: {exc}".strip()
                out.accuracy[column] = float("nan")
                if column != "weakflow":  # a reference failing is a bug here; the pipeline's errors are results
                    traceback.print_exc()
            out.seconds.setdefault(column, time.perf_counter() - t)
        return out

    def gold_net(self, cell: Cell) -> tuple[nn.Module, float]:
        """The gold-only network and its test accuracy (gold rows do not depend on the noise kind)."""
        key = (cell.dataset, cell.seed, cell.gold_share)
        if key not in self.gold:
            net = gold_model(cell, self.epochs)
            self.gold[key] = (net, score(net, cell))
        return self.gold[key]

    def column(self, column: str, cell: Cell, out: Outcome) -> float:
        if column == "oracle":
            key = (cell.dataset, cell.seed)
            if key not in self.oracle:
                self.oracle[key] = col_oracle(cell, self.epochs)
            return self.oracle[key]
        if column == "gold_only":
            return self.gold_net(cell)[1]
        if column in ("ce", "gce"):
            return col_naive(cell, self.epochs, column)
        if column == "clean_learning":
            return col_clean_learning(cell, self.epochs)
        if column == "glc":
            return col_glc(cell, self.epochs)
        if column == "posterior":
            return col_posterior(cell, self.epochs, self.gold_net(cell)[0])
        if column == "weakflow":
            out.pipeline = col_weakflow(cell, self.overrides)
            return out.pipeline.accuracy
        raise ValueError(f"unknown column {column!r}")


# ---------------------------------------------------------------- MLflow


def mlflow_client(experiment: str):
    """Client and experiment id on bench/results/mlflow.db. An explicit client, not the fluent API, so
    the pipeline's own tracking calls cannot redirect these runs."""
    from mlflow.tracking import MlflowClient

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    eid = found.experiment_id if found else client.create_experiment(
        experiment, artifact_location=(results / "artifacts").as_uri())
    return client, eid


def cell_record(out: Outcome, epochs: int, overrides: list[str]) -> tuple[dict, dict, dict]:
    """(params, metrics, tags) of one cell x seed."""
    c = out.cell
    weak = c.weak
    params = {"dataset": c.dataset, "kind": c.kind, "gold_share": c.gold_share, "seed": c.seed, "epochs": epochs,
              "sources": ",".join(c.votes.sources), "n_gold": int(c.gold.sum()), "n_weak": int(weak.sum()),
              "n_unlabeled": int((~c.gold & ~weak).sum()), "n_test": len(c.y_test),
              "overrides": " ".join(overrides) or "none", **c.votes.params}
    metrics = {f"acc_{k}": v for k, v in out.accuracy.items() if math.isfinite(v)}
    metrics |= {f"seconds_{k}": v for k, v in out.seconds.items()}
    metrics["weak_label_accuracy"] = float((c.mv[weak] == c.y[weak]).mean()) if weak.any() else float("nan")
    metrics |= {k: v for k, v in c.votes.metrics.items() if math.isfinite(v)}
    tags = {f"error_{k}": v[:5000] for k, v in out.errors.items()}
    if out.pipeline is not None:
        metrics |= {f"weakflow_candidate_{k}": v for k, v in out.pipeline.candidates.items()}
        metrics |= {f"weakflow_stage_seconds_{k}": v for k, v in out.pipeline.seconds.items()}
        params["weakflow_shipped"] = out.pipeline.shipped
    return params, {k: v for k, v in metrics.items() if math.isfinite(v)}, tags


def log_outcome(client, experiment_id: str, out: Outcome, epochs: int, overrides: list[str], invocation: str,
                references_from: str | None = None) -> None:
    """One run per cell x seed; ``invocation`` (start time and command) tags the runs of one matrix run together;
    ``references_from`` names the invocation whose reference columns were reused (``--reuse-references``)."""
    from mlflow.entities import Metric, Param, RunTag

    c = out.cell
    params, metrics, tags = cell_record(out, epochs, overrides)
    tags["stress_invocation"] = invocation
    if references_from:
        tags["references_from"] = references_from
    run = client.create_run(experiment_id, run_name=f"{c.dataset}-{c.kind}-gold{c.gold_share:g}-s{c.seed}")
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run.info.run_id, "FAILED" if out.errors else "FINISHED")


# ---------------------------------------------------------------- summary


def pct(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v * 100:.2f}"


def finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def gap_closed(means: dict[str, float]) -> float:
    """G = (weakflow - best_naive) / (oracle - best_naive), best_naive = max(gold_only, ce); NaN when the
    oracle is within half a point of best_naive (nothing to close) or a column is missing."""
    need = ("weakflow", "oracle", "gold_only", "ce")
    if not all(math.isfinite(means.get(k, float("nan"))) for k in need):
        return float("nan")
    best = max(means["gold_only"], means["ce"])
    room = means["oracle"] - best
    return float("nan") if room < 0.005 else (means["weakflow"] - best) / room


def seed_matched_means(acc: dict[str, list[float]]) -> dict[str, float]:
    """Means of G's columns over the seeds where all of them have a result (a failed pipeline run drops
    that seed from G rather than comparing different seed sets)."""
    need = [c for c in ("weakflow", "oracle", "gold_only", "ce") if c in acc]
    ok = [i for i in range(len(acc[need[0]])) if all(math.isfinite(acc[c][i]) for c in need)] if need else []
    return {c: float(np.mean([acc[c][i] for i in ok])) if ok else float("nan") for c in need}


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float, float, int]:
    """Mean of a - b over the seeds where both exist, with a 95% t-interval (NaN bounds below 2 pairs)."""
    from scipy import stats

    d = np.array([x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)])
    if len(d) == 0:
        return float("nan"), float("nan"), float("nan"), 0
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan"), 1
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d)


def interval_text(mean: float, lo: float, hi: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    if not math.isfinite(hi):
        return f"{mean * 100:+.2f} (1 seed)"
    text = f"{mean * 100:+.2f} [{lo * 100:+.2f}, {hi * 100:+.2f}]"
    return f"**{text} worse**" if hi < 0 else text


CellKey = tuple[str, str, float]


@dataclass
class CellSummary:
    key: CellKey
    means: dict[str, float]
    text: dict[str, str]
    gap: float
    versus: dict[str, tuple[float, float, float, int]]
    pipeline_row: str
    weak_accuracy: float
    errors: list[str]


def summarise_cell(key: CellKey, outs: list[Outcome], columns: list[str]) -> CellSummary:
    """Means, ± std, G and the paired comparisons of one (dataset, kind, gold share) over its seeds."""
    acc = {col: [o.accuracy.get(col, float("nan")) for o in outs] for col in columns}
    means = {col: float(np.mean(finite(v))) if finite(v) else float("nan") for col, v in acc.items()}
    gap = gap_closed(seed_matched_means(acc))
    text = {}
    for col, values in acc.items():
        ok = finite(values)
        text[col] = mean_std(ok) if ok else "error"
        if len(ok) < len(values):
            text[col] += f" ({len(values) - len(ok)} of {len(values)} failed)" if ok else ""
    versus = {ref: paired_interval(acc["weakflow"], acc[ref]) for ref in ("gold_only", "glc", "posterior")
              if "weakflow" in acc and ref in acc}
    runs = [o.pipeline for o in outs if o.pipeline is not None]
    pipeline_row = "n/a"
    if runs:
        cands = {n: mean_std([r.candidates[n] for r in runs if n in r.candidates]) for n in runs[0].candidates}
        shipped = sorted({r.shipped for r in runs})
        pipeline_row = " / ".join(cands.values()) + f" ({', '.join(cands)}); shipped: {', '.join(shipped)}"
    weak_acc = float(np.mean([(o.cell.mv[o.cell.weak] == o.cell.y[o.cell.weak]).mean() for o in outs]))
    errors = []
    for col in columns:
        failed = [o.errors[col] for o in outs if col in o.errors]
        if failed:
            errors.append(f"{col}: {len(failed)} of {len(outs)} seeds failed, e.g. {failed[0].splitlines()[0][:200]}")
    return CellSummary(key, means, text, gap, versus, pipeline_row, weak_acc, errors)


def accuracy_table(summaries: list[CellSummary], skipped: list[tuple[str, str, str]], columns: list[str]) -> list[str]:
    lines = ["| dataset | noise | gold | " + " | ".join(columns) + " | G |", "|" + "---|" * (len(columns) + 4)]
    for s in summaries:
        ds, kind, share = s.key
        g = "n/a" if not math.isfinite(s.gap) else f"{s.gap:.2f}"
        lines.append(f"| {ds} | {kind} | {share:.0%} | " + " | ".join(s.text[c] for c in columns) + f" | {g} |")
    for ds, kind, why in skipped:
        lines.append(f"| {ds} | {kind} | – | skipped: {why} |" + " – |" * len(columns))
    return lines


def versus_table(summaries: list[CellSummary]) -> list[str]:
    refs = ("gold_only", "glc", "posterior")
    lines = ["| dataset | noise | gold | weak-label acc. | weakflow − gold_only | weakflow − glc | weakflow − posterior "
             "| pipeline candidates (test acc.); shipped |", "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        ds, kind, share = s.key
        cells = [interval_text(*s.versus[r][:3]) if r in s.versus else "n/a" for r in refs]
        lines.append(f"| {ds} | {kind} | {share:.0%} | {pct(s.weak_accuracy)} | " + " | ".join(cells)
                     + f" | {s.pipeline_row} |")
    return lines


def verdict_lines(summaries: list[CellSummary]) -> list[str]:
    gaps = [s.gap for s in summaries if math.isfinite(s.gap)]
    median = f"{np.median(gaps):.2f} over {len(gaps)} of {len(summaries)} cells" if gaps else "n/a"
    lines = [f"- Median gap closed G: **{median}** (cells where the oracle is within 0.5 points of "
             "max(gold_only, ce) have no G)."]
    for ref in ("gold_only", "glc", "posterior"):
        judged = [s for s in summaries if ref in s.versus and math.isfinite(s.versus[ref][2])]
        worse = [s for s in judged if s.versus[ref][2] < 0]
        names = ", ".join(f"{s.key[0]}/{s.key[1]}/{s.key[2]:.0%}" for s in worse)
        lines.append(f"- weakflow worse than {ref} beyond noise (95% t-interval below 0): **{len(worse)} of "
                     f"{len(judged)}** cells" + (f" ({names})" if names else ""))
    return lines


def lf_note(outcomes: list[Outcome]) -> str:
    """Range of the labelling functions' coverage and accuracy per dataset."""
    parts = []
    for ds in DATASETS:
        m = [o.cell.votes.metrics for o in outcomes if o.cell.dataset == ds and o.cell.kind == "lfs"]
        cov = [v for d in m for k, v in d.items() if k.endswith("_coverage")]
        acc = [v for d in m for k, v in d.items() if k.endswith("_accuracy") and math.isfinite(v)]
        if cov:
            parts.append(f"{ds}: coverage {min(cov):.0%}–{max(cov):.0%}, accuracy {min(acc):.2f}–{max(acc):.2f} "
                         f"(median {np.median(acc):.2f})")
    return ("Labelling functions (non-test rows): " + "; ".join(parts) + ".") if parts else ""


def cost_line(outcomes: list[Outcome], columns: list[str]) -> str:
    parts = []
    for ds in DATASETS:
        outs = [o for o in outcomes if o.cell.dataset == ds]
        if outs:
            per = ", ".join(f"{c} {np.mean([o.seconds.get(c, 0.0) for o in outs]):.1f}" for c in columns)
            parts.append(f"{ds}: {per}")
    return "Seconds per cell x seed (oracle and gold-only are shared across kinds): " + "; ".join(parts) + "."


def body_text(outcomes: list[Outcome], skipped: list[tuple[str, str, str]], args: argparse.Namespace,
              wall: float) -> str:
    groups: dict[CellKey, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault((o.cell.dataset, o.cell.kind, o.cell.gold_share), []).append(o)
    order = lambda key: (DATASETS.index(key[0]), KINDS.index(key[1]), key[2])  # noqa: E731
    summaries = [summarise_cell(k, groups[k], args.columns) for k in sorted(groups, key=order)]
    errors = [f"- {s.key[0]}/{s.key[1]}/{s.key[2]:.0%}: {e}" for s in summaries for e in s.errors]
    title = "quick smoke" if args.quick else "matrix"
    return "\n".join([
        f"## Weak-supervision stress matrix ({title}: {len(args.seeds)} seed(s), {args.epochs} epochs; test accuracy %, "
        "mean ± std over seeds)", "",
        "Same split and votes for every column of a cell; references train a fixed number of epochs without early "
        "stopping; `weakflow` is the default pipeline (`bench.plain.run_config`, its own epochs) through the "
        "bring-your-own-data contract. G = (weakflow − best naive) / (oracle − best naive), best naive = "
        "max(gold_only, ce). Pipeline overrides: " + (f"`{' '.join(args.overrides)}`" if args.overrides else "none") + ".",
        "", *accuracy_table(summaries, skipped, args.columns), "",
        "### weakflow against the gold-anchored references (paired over seeds, accuracy points, 95% t-interval)", "",
        *versus_table(summaries), "", *verdict_lines(summaries), "",
        *(["Errors:", *errors, ""] if errors else []),
        f"Seeds {', '.join(map(str, args.seeds))}; {args.epochs} epochs for the references; "
        f"{args.workers} worker process(es), torch threads {args.threads or torch.get_num_threads()}; "
        + (f"wall {wall / 60:.1f} min" if not getattr(args, "resumed", None) else
         f"run as `{args.resumed}` and resumed (`--resume`) until every cell had its seeds; the seconds below are "
         "per cell") + ". "
        + (f"Only the `weakflow` column ran in this invocation (`--reuse-references`): the other columns are those of "
           f"`{args.references_from}` (same splits, votes, epochs and reference code). " if args.references_from else "")
        + "Weak-label acc. = majority vote vs truth on the weak rows. " + lf_note(outcomes),
        "", cost_line(outcomes, args.columns), ""])


# ---------------------------------------------------------------- command line


def progress_line(out: Outcome, seconds: float) -> str:
    c = out.cell
    accs = " ".join(f"{k} {pct(v)}" for k, v in out.accuracy.items())
    err = "".join(f" [{col} failed: {msg.splitlines()[0][:200]}]" for col, msg in out.errors.items())
    return f"{c.dataset} {c.kind} gold {c.gold_share:.0%} seed {c.seed}: {accs} ({seconds:.0f} s){err}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke: 3 kinds, 1 seed, 10%% gold, 15 epochs (pipeline too); never writes the docs")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5; --quick 1)")
    parser.add_argument("--epochs", type=int, help="reference epochs (default 60; --quick 15)")
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, help="noise kinds (default all; --quick: one single-annotator, "
                        "the multi-annotator and the labelling-function kind)")
    parser.add_argument("--gold", nargs="+", type=float, help="gold shares (default 0.05 0.1; --quick 0.1)")
    parser.add_argument("--columns", nargs="+", choices=COLUMNS, default=list(COLUMNS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="pipeline config override for the weakflow column (repeatable)")
    parser.add_argument("--workers", type=int, default=2, help="cells in parallel on this many spawned processes (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default 1: measured faster for these small networks)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the cells an earlier run with the same epochs, overrides and columns logged")
    parser.add_argument("--reuse-references", action="store_true",
                        help="run only the weakflow column; every other column comes from the latest invocation that "
                        "logged it for each cell x seed with the same epochs (for a pipeline change: the references' "
                        "code, splits and votes are the same, so rerunning them would repeat identical work)")
    parser.add_argument("--no-write", action="store_true", help="print the section; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.seeds = list(range(args.seeds if args.seeds is not None else (1 if args.quick else 5)))
    args.epochs = args.epochs or (15 if args.quick else 60)
    args.gold = args.gold or ([0.1] if args.quick else list(GOLD_SHARES))
    args.kinds = args.kinds or list(QUICK_KINDS if args.quick else KINDS)
    args.columns = [c for c in COLUMNS if c in args.columns]
    args.threads = args.threads or 1
    if args.quick:
        args.overrides = ["weak_train.epochs=15", "full_train.epochs=15", *args.overrides]
    return args


def plan(args: argparse.Namespace) -> tuple[list[tuple[str, str, float, int]], list[tuple[str, str, str]]]:
    """The cells to run (dataset, kind, gold share, seed), ordered so shared work (oracle, gold-only) is
    reused, and the skipped (dataset, kind)s with the reason."""
    todo, skipped = [], []
    for name in args.datasets:
        k = load_dataset(name).spec.num_classes
        skipped += [(name, kind, why) for kind in args.kinds if (why := skip_reason(kind, k))]
        kinds = [kind for kind in args.kinds if not skip_reason(kind, k)]
        todo += [(name, kind, share, seed) for seed in args.seeds for share in args.gold for kind in kinds]
    # seed-major: every cell has its first seeds before any has its last (an interrupted run is still a
    # matrix); within a seed, one dataset's cells stay together so its oracle and gold-only are reused
    return sorted(todo, key=lambda c: (c[3], args.datasets.index(c[0]))), skipped


_RUNNER: Runner | None = None


def init_worker(columns: list[str], epochs: int, overrides: list[str], threads: int | None) -> None:
    """Per process: torch threads and the runner whose caches (oracle, gold-only) live as long as the process."""
    global _RUNNER
    import logging

    # Great Expectations sets this module's logger to INFO when imported: one "temporary directory" line per run
    logging.getLogger("great_expectations.data_context.types.base").addFilter(lambda r: r.levelno >= logging.WARNING)
    if threads:
        torch.set_num_threads(threads)
    _RUNNER = Runner(columns, epochs, overrides)


def run_one(dataset: str, kind: str, share: float, seed: int) -> Outcome:
    assert _RUNNER is not None, "init_worker first"
    t = time.perf_counter()
    out = _RUNNER.run(make_cell(load_dataset(dataset), kind, share, seed))
    out.wall = time.perf_counter() - t
    return out


def execute(todo: list[tuple[str, str, float, int]], args: argparse.Namespace) -> Iterator[Outcome]:
    """Outcomes as cells finish: in this process, or on ``--workers`` spawned processes (never forked: a
    fork of a process with torch/MLflow threads can inherit a held lock)."""
    init = (["weakflow"] if args.reuse_references else args.columns, args.epochs, args.overrides, args.threads)
    if args.workers == 1:
        init_worker(*init)
        yield from (run_one(*cell) for cell in todo)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from bench import stress  # by module name, so the workers can unpickle the functions under ``-m``

    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=stress.init_worker, initargs=init) as pool:
        yield from (f.result() for f in as_completed([pool.submit(stress.run_one, *cell) for cell in todo]))


def recorded(client, experiment_id: str, todo: list[tuple[str, str, float, int]], args: argparse.Namespace,
             ) -> tuple[str | None, list[Outcome]]:
    """The latest invocation that logged ``todo`` cells with the same epochs, overrides and columns, and its
    outcomes (``--resume``): an interrupted matrix goes on where it stopped instead of starting over. Only
    that one invocation counts, so runs of older code never mix in."""
    wanted, found = set(todo), {}
    overrides = " ".join(args.overrides) or "none"
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    usable = [r for r in runs if r.data.params.get("epochs") == str(args.epochs)
              and r.data.params.get("overrides") == overrides and r.data.tags.get("stress_invocation")]
    if not usable:
        return None, []
    invocation = max(r.data.tags["stress_invocation"] for r in usable)
    for run in usable:
        if run.data.tags["stress_invocation"] != invocation:
            continue
        p, m = run.data.params, run.data.metrics
        key = (p.get("dataset"), p.get("kind"), float(p.get("gold_share", "nan")), int(p.get("seed", -1)))
        if key not in wanted or key in found or not all(f"acc_{c}" in m for c in args.columns):
            continue
        out = Outcome(make_cell(load_dataset(key[0]), key[1], key[2], key[3]),
                      accuracy={c: m[f"acc_{c}"] for c in args.columns},
                      seconds={k[len("seconds_"):]: v for k, v in m.items() if k.startswith("seconds_")})
        if "weakflow" in args.columns:
            out.pipeline = PipelineResult(
                m["acc_weakflow"], {k[len("weakflow_candidate_"):]: v for k, v in m.items()
                                    if k.startswith("weakflow_candidate_")},
                p.get("weakflow_shipped", "?"), {k[len("weakflow_stage_seconds_"):]: v for k, v in m.items()
                                                 if k.startswith("weakflow_stage_seconds_")})
        found[key] = out
    return invocation, list(found.values())


def reference_outcomes(client, experiment_id: str, todo: list[tuple[str, str, float, int]], args: argparse.Namespace
                       ) -> tuple[str, dict[tuple, Outcome]]:
    """``--reuse-references``: the reference columns of every ``todo`` cell from the latest invocation that
    logged all of them with the same epochs. Refuses (SystemExit, one line) when a cell has none."""
    refs = [c for c in args.columns if c != "weakflow"]
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=5000)
    wanted, best = set(todo), {}
    for run in runs:
        p, m, inv = run.data.params, run.data.metrics, run.data.tags.get("stress_invocation")
        if not inv or p.get("epochs") != str(args.epochs) or not all(f"acc_{c}" in m for c in refs):
            continue
        key = (p.get("dataset"), p.get("kind"), float(p.get("gold_share", "nan")), int(p.get("seed", -1)))
        source = run.data.tags.get("references_from", inv)  # a reused run points at where its references ran
        if key in wanted and (key not in best or source > best[key][0]):
            best[key] = (source, run)
    missing = [c for c in todo if c not in best]
    if missing:
        raise SystemExit(f"--reuse-references: no earlier run has the reference columns for {len(missing)} cell x seed "
                         f"run(s), e.g. {missing[0]}; run the full matrix first")
    out = {}
    for key, (_, run) in best.items():
        m = run.data.metrics
        out[key] = Outcome(make_cell(load_dataset(key[0]), key[1], key[2], key[3]),
                           accuracy={c: m[f"acc_{c}"] for c in refs},
                           seconds={c: m[f"seconds_{c}"] for c in refs if f"seconds_{c}" in m})
    return ", ".join(sorted({src for src, _ in best.values()})), out


def with_references(out: Outcome, refs: dict[tuple, Outcome], columns: list[str]) -> Outcome:
    """The pipeline's outcome with the reused reference columns, in column order."""
    ref = refs[(out.cell.dataset, out.cell.kind, out.cell.gold_share, out.cell.seed)]
    accuracy, seconds = ref.accuracy | out.accuracy, ref.seconds | out.seconds
    return replace(out, accuracy={c: accuracy[c] for c in columns if c in accuracy},
                   seconds={c: seconds[c] for c in columns if c in seconds})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    todo, skipped = plan(args)
    client, eid = mlflow_client("weakflow-stress-quick" if args.quick else "weakflow-stress")
    args.references_from, refs = (reference_outcomes(client, eid, todo, args) if args.reuse_references
                                  else (None, {}))
    resumed, done = recorded(client, eid, todo, args) if args.resume else (None, [])
    args.resumed = resumed
    if done:
        kept = {(o.cell.dataset, o.cell.kind, o.cell.gold_share, o.cell.seed) for o in done}
        print(f"--resume: {len(done)} cell x seed runs of `{resumed}` reused", flush=True)
        full_todo, todo = todo, [cell for cell in todo if cell not in kept]
    else:
        full_todo = todo
    print(f"{len(todo)} cell x seed runs; columns {', '.join(args.columns)}; {args.epochs} epochs; "
          f"{args.workers} worker(s), torch threads {args.threads or torch.get_num_threads()}", flush=True)
    outcomes, start = list(done), time.perf_counter()
    invocation = resumed or time.strftime("%Y-%m-%dT%H:%M:%S") + " python -m bench.stress " + " ".join(sys.argv[1:])
    for out in execute(todo, args):
        if refs:
            out = with_references(out, refs, args.columns)
        log_outcome(client, eid, out, args.epochs, args.overrides, invocation, args.references_from)
        outcomes.append(out)
        print(progress_line(out, out.wall), flush=True)
    order = {cell: i for i, cell in enumerate(full_todo)}
    outcomes.sort(key=lambda o: order[(o.cell.dataset, o.cell.kind, o.cell.gold_share, o.cell.seed)])
    body = body_text(outcomes, skipped, args, time.perf_counter() - start)
    publish("stress", body, dry_run=args.no_write or args.quick)


if __name__ == "__main__":
    main()
