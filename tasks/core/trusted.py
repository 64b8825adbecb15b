"""Gold rows as trusted data: how each weak source errs, measured on the gold rows it labelled too.

A source's confusion matrix ``C[true, vote] = P(vote | true class, it voted)`` is counted on the gold rows it
voted on and smoothed toward the source's own pooled accuracy: a Dirichlet prior of ``strength`` pseudo-rows
per class with that accuracy on the diagonal and the rest spread evenly. So a class with two gold rows gets
a row that says "about as good here as elsewhere" instead of a degenerate 0/1 row, while a class with many
gold rows shows its own structure (a look-alike pair, a class flipped more often than the others).

Abstaining is evidence too when it depends on the class (a spam keyword rule abstains on most ham), and
noise when it does not (an annotator who skipped rows at random). ``P(abstain | true)`` enters the
likelihood only when a chi-square test on the gold rows says abstaining depends on the class.

Sources that never voted on a gold row are estimated by Dawid-Skene EM on the other rows, with the
gold-measured sources held fixed: EM only where gold is silent. No source measured on gold: plain EM.

Once a model of p(true | x) exists (the gold-only model), :func:`refine` re-estimates every confusion on
the weak rows too, by EM with that model as each row's prior and the gold counts kept in every step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import logsumexp
from scipy.stats import beta as beta_dist
from scipy.stats import chi2_contingency, norm

ABSTAIN = -1
ABSTAIN_P_VALUE = 0.01  # abstaining counts as evidence only when it depends on the class this clearly


def wilson_interval(successes: np.ndarray | float, trials: np.ndarray | float, level: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion (NaN where ``trials`` is 0): sound at 0 or n successes and
    for a handful of trials, where the normal interval collapses to a point."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    z = norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        low, high = np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)
    return np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)


@dataclass(frozen=True)
class SourceNoise:
    """One weak source's error process, with where it came from and how sure it is."""

    name: str
    basis: str  # "gold": counted on gold rows; "em": Dawid-Skene on the other rows (gold was silent)
    gold_votes: int  # gold rows it voted on
    counts: np.ndarray  # (C, C) gold rows per (true class, vote)
    confusion: np.ndarray  # (C, C) smoothed P(vote | true), rows sum to 1
    confusion_low: np.ndarray  # (C, C) 95% marginal interval of each entry (Beta marginal of the Dirichlet)
    confusion_high: np.ndarray
    accuracy: float  # pooled over the gold rows it voted on (NaN: none)
    accuracy_low: float  # Wilson interval
    accuracy_high: float
    abstain: np.ndarray | None  # (C,) P(abstain | true) when abstaining depends on the class, else None
    abstain_p_value: float  # chi-square test of abstaining vs class on gold (NaN: not testable)

    def log_likelihood(self, votes: np.ndarray) -> np.ndarray:
        """(rows, C) log P(this source's vote | true class) for one vote column (-1 = abstain)."""
        votes = np.asarray(votes)
        out = np.zeros((len(votes), self.confusion.shape[0]))
        cast = votes >= 0
        with np.errstate(divide="ignore"):
            out[cast] = np.log(self.confusion[:, votes[cast]].T)
            if self.abstain is not None:
                out[cast] += np.log1p(-self.abstain)
                out[~cast] = np.log(self.abstain)
        return out


def _check(votes: np.ndarray, gold: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    votes, gold = np.asarray(votes), np.asarray(gold)
    if votes.ndim != 2 or gold.shape != (len(votes),):
        raise ValueError(f"votes must be (rows, sources) and gold one class index per row; got {votes.shape}, "
                         f"{gold.shape}")
    if votes.size and (votes.min() < ABSTAIN or votes.max() >= num_classes):
        raise ValueError(f"votes must be class indices in [0, {num_classes}) or -1 (abstain)")
    if gold.size and (gold.min() < ABSTAIN or gold.max() >= num_classes):
        raise ValueError(f"gold must be class indices in [0, {num_classes}) or -1 (not gold)")
    return votes.astype(np.int64), gold.astype(np.int64)


def _dirichlet_rows(counts: np.ndarray, prior: np.ndarray, strength: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior mean and 95% marginal interval of each row of ``counts`` under Dirichlet(strength * prior)."""
    alpha = counts + strength * prior
    total = alpha.sum(axis=1, keepdims=True)
    mean = alpha / total
    low = beta_dist.ppf(0.025, alpha, total - alpha)
    high = beta_dist.ppf(0.975, alpha, total - alpha)
    return mean, low, high


def _pooled_prior(counts: np.ndarray) -> np.ndarray:
    """The Dirichlet prior's mean for a (C, C) count table: the source's pooled accuracy (add-one) on the
    diagonal, the rest spread evenly (so a class with few rows reads "about as good as elsewhere")."""
    k = counts.shape[0]
    pooled = (np.trace(counts) + 1.0) / (counts.sum() + 2.0)
    prior = np.full((k, k), (1.0 - pooled) / max(k - 1, 1))
    np.fill_diagonal(prior, pooled)
    return prior


def _expected_counts(votes: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """(C, C) expected (true class, vote) counts of one source's vote column under soft true labels."""
    cast = votes >= 0
    given = np.zeros((int(cast.sum()), posterior.shape[1]))
    given[np.arange(len(given)), votes[cast]] = 1.0
    return posterior[cast].T @ given


def _abstain_model(voted: np.ndarray, gold: np.ndarray, num_classes: int, strength: float
                   ) -> tuple[np.ndarray | None, float]:
    """P(abstain | class) on the gold rows, or None when abstaining does not depend on the class."""
    table = np.stack([np.bincount(gold[voted], minlength=num_classes),
                      np.bincount(gold[~voted], minlength=num_classes)])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return None, float("nan")
    p_value = float(chi2_contingency(table, correction=True).pvalue)
    if p_value >= ABSTAIN_P_VALUE:
        return None, p_value
    skipped = np.bincount(gold[~voted], minlength=num_classes).astype(np.float64)
    rows = np.bincount(gold, minlength=num_classes).astype(np.float64)
    pooled = (skipped.sum() + 1) / (rows.sum() + 2)
    return (skipped + strength * pooled) / (rows + strength), p_value


def measure_on_gold(votes: np.ndarray, gold: np.ndarray, names: list[str], num_classes: int,
                    strength: float = 2.0) -> list[SourceNoise | None]:
    """Per source, its :class:`SourceNoise` from the gold rows (``gold`` = class index, -1 off gold), or
    None for a source that voted on no gold row."""
    votes, gold = _check(votes, gold, num_classes)
    on_gold = gold >= 0
    out: list[SourceNoise | None] = []
    for s, name in enumerate(names):
        v, g = votes[on_gold, s], gold[on_gold]
        cast = v >= 0
        n = int(cast.sum())
        if n == 0:
            out.append(None)
            continue
        counts = np.zeros((num_classes, num_classes))
        np.add.at(counts, (g[cast], v[cast]), 1.0)
        right = float(np.trace(counts))
        confusion, low, high = _dirichlet_rows(counts, _pooled_prior(counts), strength)
        acc_low, acc_high = wilson_interval(right, n)
        abstain, p_value = _abstain_model(cast, g, num_classes, strength)
        out.append(SourceNoise(name, "gold", n, counts, confusion, low, high, right / n, float(acc_low),
                               float(acc_high), abstain, p_value))
    return out


@dataclass
class Anchored:
    """Every source's noise and each row's evidence from its votes."""

    sources: list[SourceNoise]
    log_likelihood: np.ndarray  # (rows, C): sum over sources of log P(vote | true class)
    prior: np.ndarray  # (C,) class prior from the gold labels (add-one smoothed)
    iterations: int  # EM iterations for the sources gold was silent on (0: none needed)

    @property
    def posterior(self) -> np.ndarray:
        """(rows, C) P(true | votes) under the gold class prior."""
        return combine(self.log_likelihood, np.broadcast_to(self.prior, self.log_likelihood.shape))


def combine(log_likelihood: np.ndarray, prior_probs: np.ndarray) -> np.ndarray:
    """(rows, C) P(true | x, votes) from the votes' log-likelihood and a calibrated p(true | x) (or a class
    prior), assuming the votes depend on x only through the true class."""
    joint = np.asarray(log_likelihood) + np.log(np.clip(prior_probs, 1e-12, None))
    return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))


def _em_source(name: str, votes: np.ndarray, posterior: np.ndarray, strength: float) -> SourceNoise:
    """M-step for one source from soft labels: its confusion from expected counts, smoothed alike."""
    counts = _expected_counts(votes, posterior)
    confusion, low, high = _dirichlet_rows(counts, _pooled_prior(counts), strength)
    nan = float("nan")
    return SourceNoise(name, "em", 0, counts, confusion, low, high, nan, nan, nan, None, nan)


def anchor(votes: np.ndarray, gold: np.ndarray, names: list[str], num_classes: int, strength: float = 2.0,
           max_iter: int = 50, tol: float = 1e-6) -> Anchored:
    """Measure every source on gold; EM (on the non-gold rows) only for sources gold never saw vote."""
    votes, gold = _check(votes, gold, num_classes)
    measured = measure_on_gold(votes, gold, names, num_classes, strength)
    gold_labels = gold[gold >= 0]
    prior = (np.bincount(gold_labels, minlength=num_classes) + 1.0) / (len(gold_labels) + num_classes)
    silent = [s for s, m in enumerate(measured) if m is None]
    others = gold < 0
    if len(silent) == len(names):  # gold measured nothing: every source from EM, started at majority vote
        from weakflow.tasks.core.aggregate import dawid_skene

        ds = dawid_skene(votes[others], num_classes) if others.any() else None
        sources = [_em_source(n, votes[others, s], ds.posterior if ds is not None else np.zeros((0, num_classes)),
                              strength) for s, n in enumerate(names)]
        ll = sum(src.log_likelihood(votes[:, s]) for s, src in enumerate(sources))
        return Anchored(sources, np.asarray(ll, dtype=np.float64), prior, ds.iterations if ds is not None else 0)
    known = [s for s in range(len(names)) if s not in silent]
    fixed = sum(measured[s].log_likelihood(votes[:, s]) for s in known)  # type: ignore[union-attr]
    ll = np.asarray(fixed, dtype=np.float64)
    sources: list[SourceNoise | None] = list(measured)
    iterations, previous = 0, None
    for iterations in range(1, (max_iter if silent else 0) + 1):
        joint = ll + np.log(prior)
        post = np.exp(joint - logsumexp(joint, axis=1, keepdims=True))[others]
        for s in silent:
            sources[s] = _em_source(names[s], votes[others, s], post, strength)
        ll = fixed + sum(sources[s].log_likelihood(votes[:, s]) for s in silent)  # type: ignore[union-attr]
        score = float(logsumexp(ll[others] + np.log(prior), axis=1).sum())
        if previous is not None and abs(score - previous) < tol * max(1.0, abs(previous)):
            break
        previous = score
    return Anchored([s for s in sources if s is not None], ll, prior, iterations)


def refine(sources: list[SourceNoise], votes: np.ndarray, probs: np.ndarray, strength: float = 2.0,
           max_iter: int = 50, tol: float = 1e-6) -> tuple[list[SourceNoise], np.ndarray]:
    """Every source's confusion re-estimated on the weak rows too, by EM with a model's p(true | x) as each
    row's prior: E-step P(true | x, votes), M-step the gold counts plus the weak rows' expected counts
    (smoothed alike). A handful of gold rows per class cannot tell a 60/40 pair flip from an even one; a
    thousand weak rows weighed by a model that sees x can. The gold counts stay in every M-step, so the
    estimate stays anchored on them. Returns the refined sources (``counts`` still the gold rows', basis
    marked ``+refined``) and the rows' (rows, C) log-likelihood under them."""
    votes = np.asarray(votes)
    probs = np.asarray(probs, dtype=np.float64)
    base = [src.counts if src.basis == "gold" else np.zeros_like(src.counts) for src in sources]
    current, counts = list(sources), list(base)
    ll = sum(src.log_likelihood(votes[:, s]) for s, src in enumerate(current))
    previous = None
    for _ in range(max_iter):
        post = combine(ll, probs)
        for s, src in enumerate(current):
            counts[s] = base[s] + _expected_counts(votes[:, s], post)
            alpha = counts[s] + strength * _pooled_prior(counts[s])
            current[s] = replace(src, confusion=alpha / alpha.sum(axis=1, keepdims=True))
        ll = sum(src.log_likelihood(votes[:, s]) for s, src in enumerate(current))
        score = float(logsumexp(np.asarray(ll) + np.log(np.clip(probs, 1e-12, None)), axis=1).sum())
        if previous is not None and abs(score - previous) < tol * max(1.0, abs(previous)):
            break
        previous = score
    for s, src in enumerate(current):  # the intervals once, at the end (beta quantiles cost more than EM)
        _, low, high = _dirichlet_rows(counts[s], _pooled_prior(counts[s]), strength)
        current[s] = replace(src, basis=sources[s].basis + "+refined", confusion_low=low, confusion_high=high)
    return current, np.asarray(ll, dtype=np.float64)


def rank_stability(sources: list[SourceNoise], votes: np.ndarray, prior: np.ndarray, strength: float = 2.0,
                   samples: int = 400, seed: int = 0) -> float:
    """How surely the gold rows pin down what each vote points to: under the Dirichlet posterior of every
    gold-measured confusion row, the share of draws in which a vote's most likely true class is the one
    the smoothed estimate names, averaged over the weak rows' votes (1.0 = certain).

    Low when two classes are confused about evenly (look-alike classes) and a handful of gold rows per
    class cannot say which side a vote leans to: a wrong guess there teaches the network the swapped pair.
    Sources estimated by EM count as certain (nothing to sample)."""
    rng = np.random.default_rng(seed)
    votes = np.asarray(votes)
    agree, total = 0.0, 0
    for s, src in enumerate(sources):
        if src.basis != "gold":
            continue
        values, counts = np.unique(votes[:, s][votes[:, s] >= 0], return_counts=True)
        if not len(values):
            continue
        k = src.confusion.shape[0]
        alpha = src.counts + strength * _pooled_prior(src.counts)  # the posterior the estimate is the mean of
        draws = rng.gamma(alpha[None], size=(samples, k, k))
        draws /= draws.sum(axis=2, keepdims=True)  # (samples, true, vote): each row a Dirichlet draw
        named = np.argmax(prior[:, None] * src.confusion, axis=0)  # per vote: the estimate's most likely class
        drawn = np.argmax(prior[None, :, None] * draws, axis=1)  # (samples, vote)
        hits = (drawn[:, values] == named[values]).mean(axis=0)
        agree += float((hits * counts).sum())
        total += int(counts.sum())
    return agree / total if total else 1.0


def source_noise_records(sources: list[SourceNoise], classes: list) -> list[dict]:
    """Each source's noise estimate as plain JSON: gold counts, smoothed P(vote | true) with its 95% interval,
    accuracy with its Wilson interval, and P(abstain | true) where abstaining depends on the class."""
    return [{"source": s.name, "basis": s.basis, "gold_votes": s.gold_votes, "classes": list(classes),
             "counts": s.counts.astype(int).tolist(), "confusion": s.confusion.round(4).tolist(),
             "confusion_low": s.confusion_low.round(4).tolist(), "confusion_high": s.confusion_high.round(4).tolist(),
             "accuracy": s.accuracy, "accuracy_low": s.accuracy_low, "accuracy_high": s.accuracy_high,
             "abstain": s.abstain.round(4).tolist() if s.abstain is not None else None,
             "abstain_p_value": s.abstain_p_value} for s in sources]
