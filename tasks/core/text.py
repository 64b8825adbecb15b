"""Raw text into numbers the networks (and the drift and contamination checks) can use, with no download.

Per text column: hashed word 1-2-grams and character 2-5-grams within word boundaries, TF-IDF weighted
(sublinear counts, L2-normalised rows), projected onto the top ``dims`` singular directions of the fitting
text (latent semantic analysis); beside them four descriptors: log length, digit share, upper-case share
and the share of words never seen while fitting (out-of-vocabulary). Fitted without any label or test row
(on the training text), so it can be fitted before cross-fitting; its state is a few arrays that travel
with the registered model, which then takes raw strings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

N_FEATURES = 1 << 18  # hash buckets per analyzer
DESCRIPTORS = ("log_length", "digit_share", "upper_share", "oov_share")
_WORD = re.compile(r"(?u)\b\w\w+\b")


def normalise(text: pd.Series) -> pd.Series:
    """Lower case, punctuation and repeated spaces removed: what "the same message" means for copies."""
    out = text.fillna("").astype(str).str.lower().str.replace(r"[^\w\s]", " ", regex=True)
    return out.str.replace(r"\s+", " ", regex=True).str.strip()


def _vectorizers():  # -> (word, char) HashingVectorizer
    from sklearn.feature_extraction.text import HashingVectorizer

    word = HashingVectorizer(n_features=N_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm=None)
    char = HashingVectorizer(n_features=N_FEATURES, analyzer="char_wb", ngram_range=(2, 5), alternate_sign=False,
                             norm=None)
    return word, char


def _counts(texts: np.ndarray):  # -> scipy.sparse.csr_matrix (rows, 2 * N_FEATURES)
    import scipy.sparse as sp

    word, char = _vectorizers()
    return sp.hstack([word.transform(texts), char.transform(texts)]).tocsr()


def _unigram_buckets(texts: np.ndarray) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer

    unigrams = HashingVectorizer(n_features=N_FEATURES, alternate_sign=False, norm=None).transform(texts)
    return unigrams.tocsr()


def vocabulary(texts: np.ndarray) -> np.ndarray:
    """Sorted int64 word-unigram buckets of ``texts``: what :func:`descriptors` counts as seen."""
    return np.unique(_unigram_buckets(texts).indices).astype(np.int64)


@dataclass
class ColumnState:
    """One text column's fitted state: kept hash buckets, their IDF, the LSA directions, the word vocabulary."""

    kept: np.ndarray  # int64 bucket ids (of the 2 * N_FEATURES) that occur in >= 2 fitting texts
    idf: np.ndarray  # float32, one per kept bucket
    components: np.ndarray  # float32 (dims, kept)
    vocabulary: np.ndarray  # int64 sorted word-unigram buckets seen while fitting

    @cached_property
    def projection(self) -> np.ndarray:
        """``components.T`` stored row-major: scipy's sparse @ dense would copy a transposed view (the whole
        (kept, dims) matrix) on every call, the main cost of featurising one short message."""
        return np.ascontiguousarray(self.components.T)

    def as_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.kept": self.kept, f"{prefix}.idf": self.idf, f"{prefix}.components": self.components,
                f"{prefix}.vocabulary": self.vocabulary}


@dataclass
class TextFeaturizer:
    """Fitted text featurisation of ``columns`` (see the module docstring)."""

    columns: list[str]
    dims: int
    states: dict[str, ColumnState] = field(default_factory=dict)
    chosen: str = ""  # why this featurisation (the text stage's reason)
    kind: str = "hashed"

    @property
    def names(self) -> list[str]:
        """The feature names this adds, per column: ``<column>:lsa<i>`` then the descriptors."""
        return [f"{c}:{n}" for c in self.columns for n in (*(f"lsa{i}" for i in range(self.dims)), *DESCRIPTORS)]

    @classmethod
    def fit(cls, frame: pd.DataFrame, columns: list[str], dims: int = 64, max_texts: int = 20_000,
            seed: int = 0) -> TextFeaturizer:
        """Fit on (a sample of at most ``max_texts`` rows of) ``frame``'s text: no labels are read."""
        from sklearn.decomposition import TruncatedSVD

        sample = frame if len(frame) <= max_texts else frame.sample(n=max_texts, random_state=seed)
        states = {}
        for column in columns:
            texts = sample[column].fillna("").astype(str).to_numpy()
            counts = _counts(texts)
            df = np.asarray((counts > 0).sum(axis=0)).ravel()
            kept = np.flatnonzero(df >= min(2, len(texts)))
            if not len(kept):
                kept = np.flatnonzero(df >= 1)
            idf = (np.log((1 + len(texts)) / (1 + df[kept])) + 1).astype(np.float32)
            tfidf = _tfidf(counts[:, kept], idf)
            k = max(1, min(dims, tfidf.shape[1] - 1, tfidf.shape[0] - 1))
            svd = TruncatedSVD(k, algorithm="randomized", n_iter=4, random_state=seed).fit(tfidf)
            components = np.zeros((dims, len(kept)), dtype=np.float32)
            components[:k] = svd.components_.astype(np.float32)
            states[column] = ColumnState(kept.astype(np.int64), idf, components, vocabulary(texts))
        return cls(list(columns), dims, states)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(rows, len(names)) float32 for ``frame``'s text columns (NaN text counts as empty)."""
        parts = []
        for column in self.columns:
            state = self.states[column]
            raw = frame[column].fillna("").astype(str)
            texts = raw.to_numpy()
            if len(texts):
                tfidf = _tfidf(_counts(texts)[:, state.kept], state.idf)
                lsa = np.asarray(tfidf @ state.projection, dtype=np.float32)
            else:
                lsa = np.zeros((0, self.dims), dtype=np.float32)
            parts += [lsa, descriptors(raw, state.vocabulary)]
        return np.hstack(parts) if parts else np.zeros((len(frame), 0), np.float32)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save with a model (see :meth:`from_state`)."""
        out: dict[str, np.ndarray] = {}
        for i, column in enumerate(self.columns):
            out |= self.states[column].as_arrays(f"col{i}")
        return out

    @classmethod
    def from_state(cls, columns: list[str], dims: int, arrays: dict[str, np.ndarray]) -> TextFeaturizer:
        states = {c: ColumnState(*(np.asarray(arrays[f"col{i}.{k}"]) for k in ("kept", "idf", "components", "vocabulary")))
                  for i, c in enumerate(columns)}
        return cls(list(columns), dims, states)


def _tfidf(counts, idf: np.ndarray):  # sparse -> sparse, rows L2-normalised
    from sklearn.preprocessing import normalize

    x = counts.astype(np.float32)
    x.data = np.log1p(x.data)  # sublinear term frequency
    x = x.multiply(idf[None, :]).tocsr()
    return normalize(x, norm="l2", copy=False)


def descriptors(text: pd.Series, vocabulary: np.ndarray) -> np.ndarray:
    """(rows, 4) float32: log1p(characters), share of digits, share of upper-case letters among letters, share
    of words whose hash bucket ``vocabulary`` never saw (OOV: text unlike the training text drifts here)."""
    text = text.fillna("").astype(str)
    length = text.str.len().to_numpy(np.float64)
    digits = text.str.count(r"\d").to_numpy(np.float64)
    letters = text.str.count(r"[^\W\d_]").to_numpy(np.float64)
    upper = text.str.count(r"[A-Z]").to_numpy(np.float64)
    oov = np.zeros(len(text))
    if len(text):
        buckets = _unigram_buckets(text.to_numpy())
        at = np.minimum(np.searchsorted(vocabulary, buckets.indices), max(len(vocabulary) - 1, 0))
        known = vocabulary[at] == buckets.indices if len(vocabulary) else np.zeros(len(buckets.indices), bool)
        rows = np.repeat(np.arange(buckets.shape[0]), np.diff(buckets.indptr))
        total = np.bincount(rows, weights=buckets.data, minlength=len(text))
        unseen = np.bincount(rows, weights=buckets.data * ~known, minlength=len(text))
        oov = np.divide(unseen, total, out=np.zeros(len(text)), where=total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.column_stack([np.log1p(length), np.where(length > 0, digits / np.maximum(length, 1), 0.0),
                               np.where(letters > 0, upper / np.maximum(letters, 1), 0.0), oov])
    return out.astype(np.float32)
