"""Contamination and leakage checks: plain functions on feature arrays, each returning a finding table.

- exact duplicates: rows whose features, rounded to ``decimals``, hash equal;
- near-duplicates: nearest-neighbour distance (scikit-learn) in standardised feature space at most
  ``factor`` times the median nearest-neighbour distance among the distinct reference rows themselves,
  so the threshold follows the data's own scale; exact duplicates are reported by the exact check, not
  here (and do not count towards that median);
- label leakage: a single feature from which a small tree predicts the gold label (cross-validated)
  almost perfectly;
- pictures (rows with a picture column): exact copies by their decoded pixels, near copies by perceptual
  hash (``imagehash.phash``, 256 bits, at most :data:`PICTURE_NEAR_BITS` apart).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from weakflow.tasks.lib.data import hash_rows


def exact_pairs(reference: np.ndarray, rows: np.ndarray, decimals: int = 6) -> pd.DataFrame:
    """(reference_index, row_index) for every row equal to a reference row."""
    ref = pd.DataFrame({"reference_index": np.arange(len(reference)), "h": hash_rows(reference, decimals)})
    other = pd.DataFrame({"row_index": np.arange(len(rows)), "h": hash_rows(rows, decimals)})
    pairs = other.merge(ref, on="h")[["reference_index", "row_index"]]
    return pairs.sort_values(["reference_index", "row_index"]).reset_index(drop=True)


from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class Repeats:
    """How often test rows equal a training row, against how often training rows repeat among themselves.

    Discrete features repeat by nature (8 small-integer survey answers: a third of the rows have a twin);
    copied records stand out against that (a few percent of repeats inside training, a quarter of the test
    rows copied). ``natural``: the test rows' share is no more than twice the training rows' own, plus 1%."""

    test_rows: int
    test_in_train: int
    train_rows: int
    train_with_twin: int

    @property
    def test_share(self) -> float:
        return self.test_in_train / self.test_rows if self.test_rows else 0.0

    @property
    def train_share(self) -> float:
        return self.train_with_twin / self.train_rows if self.train_rows else 0.0

    @property
    def natural(self) -> bool:
        return self.test_in_train > 0 and self.train_share > 0 and self.test_share <= 2 * self.train_share + 0.01

    def text(self) -> str:
        return (f"{self.test_in_train} of {self.test_rows} test rows ({self.test_share:.1%}) equal a training row, while "
                f"{self.train_with_twin} of {self.train_rows} training rows ({self.train_share:.1%}) equal another "
                "training row")


def repeats(test_hashes: np.ndarray, train_hashes: np.ndarray) -> Repeats:
    """:class:`Repeats` from the row hashes of the test and training tables."""
    train_counts = pd.Series(train_hashes).value_counts()
    test_in = int(pd.Series(test_hashes).isin(train_counts.index).sum())
    twins = int(train_counts[train_counts > 1].sum())
    return Repeats(len(test_hashes), test_in, len(train_hashes), twins)


def median_distinct_nn(z: np.ndarray, exact_tol: float = 1e-6) -> float:
    """Median distance from each distinct row of ``z`` to its nearest *other distinct* row.

    Exact copies are deduplicated first: they are the exact check's job, and if half the reference
    had a copy the plain median would be 0 and no near-duplicate would ever be found. With fewer than
    two distinct rows there is no scale to take: 0 (near-duplicates off) and a warning says so."""
    from sklearn.neighbors import NearestNeighbors

    distinct = np.unique(np.round(np.asarray(z, dtype=np.float64), 6), axis=0)
    if len(distinct) > 1:
        d, _ = NearestNeighbors(n_neighbors=2).fit(distinct).kneighbors(distinct)
        nonzero = d[:, 1][d[:, 1] > exact_tol]
        if len(nonzero):
            return float(np.median(nonzero))
    warnings.warn(f"NearDuplicateIndex: the reference has {len(distinct)} distinct row(s), so there is no "
                  "nearest-neighbour scale; the near-duplicate threshold is 0 (only exact copies match)",
                  stacklevel=3)
    return 0.0


class NearDuplicateIndex:
    """Nearest-neighbour index over the reference rows (e.g. the gold test split), standardised by their
    own mean and spread (floored), with the scale-aware threshold ``factor × median NN distance`` among
    them (median over the distinct rows of a sample of at most 5,000 reference rows: repeated reference
    rows would otherwise pull the median, and the threshold, to 0).

    Small references use scikit-learn's exact nearest neighbour. Large ones (more than ``large`` rows)
    are searched exactly in three steps, each a lower bound of the next (an orthogonal projection never
    lengthens a distance, so no pair within the threshold is missed): a radius query in the first ``dims``
    PCA dimensions (scikit-learn's k-d tree, threaded), a filter on the first ``2 × dims`` (a cheap,
    cache-resident gather), then the full distance of the few survivors. The tree is built over each
    chunk of queried rows and searched with the reference rows, which is the cheaper direction when
    many rows are checked against a fixed reference."""

    def __init__(self, reference: np.ndarray, factor: float = 0.25, large: int = 20_000, dims: int = 12,
                 seed: int = 0) -> None:
        from sklearn.neighbors import NearestNeighbors

        ref = np.asarray(reference, dtype=np.float32)
        self.mean = ref.mean(axis=0)
        std = ref.std(axis=0)
        # near-constant features (a pixel that is almost always blank) would blow tiny noise up: floor
        # every spread at a tenth of the median spread
        floor = 0.1 * float(np.median(std[std > 0])) if (std > 0).any() else 1.0
        self.std = np.maximum(std, floor).astype(np.float32)
        self.z = self._z(ref)
        rng = np.random.default_rng(seed)
        probe = self.z if len(ref) <= 5000 else self.z[rng.choice(len(ref), 5000, replace=False)]
        self.median_nn = median_distinct_nn(probe)
        self.threshold = factor * self.median_nn
        self.projected = len(ref) > large and ref.shape[1] > dims
        if self.projected:
            from sklearn.decomposition import PCA

            self.dims = dims
            self.pca = PCA(n_components=min(2 * dims, ref.shape[1]), random_state=seed).fit(probe)
            self.proj = self.pca.transform(self.z).astype(np.float32)
        else:
            self.nn = NearestNeighbors(n_neighbors=1).fit(self.z)

    def _z(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) - self.mean) / self.std

    def query(self, rows: np.ndarray, chunk: int = 250_000) -> tuple[np.ndarray, np.ndarray]:
        """(distance to, index of) the nearest reference row, per row. On a large (projected) index only
        rows within the threshold are resolved; the others get distance inf and index -1."""
        dist, idx = [], []
        for start in range(0, len(rows), chunk):
            z = self._z(rows[start : start + chunk])
            if not self.projected:
                d, i = self.nn.kneighbors(z)
                dist.append(d[:, 0])
                idx.append(i[:, 0])
                continue
            d, i = self._projected_query(z)
            dist.append(d)
            idx.append(i)
        if not dist:
            return np.zeros(0), np.zeros(0, dtype=np.int64)
        return np.concatenate(dist), np.concatenate(idx)

    def _projected_query(self, z: np.ndarray, ref_batch: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
        """Exact nearest reference row within the threshold for each row of ``z`` (else inf, -1)."""
        from sklearn.neighbors import NearestNeighbors

        q = self.pca.transform(z).astype(np.float32)
        tree = NearestNeighbors(algorithm="kd_tree", n_jobs=-1).fit(q[:, : self.dims])  # threads: every core
        d = np.full(len(z), np.inf)
        i = np.full(len(z), -1, dtype=np.int64)
        limit = self.threshold ** 2
        for start in range(0, len(self.proj), ref_batch):
            ref = self.proj[start : start + ref_batch]
            near, hits = tree.radius_neighbors(ref[:, : self.dims], radius=self.threshold)
            counts = np.fromiter((len(h) for h in hits), dtype=np.int64, count=len(hits))
            if not counts.any():
                continue
            rows = np.concatenate(hits).astype(np.int64)
            refs = np.repeat(np.arange(start, start + len(ref)), counts)
            # the 2*dims lower bound: the tree's distance plus the next dims (half the gather of all 2*dims)
            bound = np.square(np.concatenate(near)) + np.square(self.proj[refs, self.dims :] - q[rows, self.dims :]).sum(axis=1)
            keep = bound <= limit * (1 + 1e-5)
            rows, refs = rows[keep], refs[keep]
            full = np.sqrt(np.square(self.z[refs] - z[rows]).sum(axis=1, dtype=np.float64))
            np.minimum.at(d, rows, full)  # each row's closest so far
            best = full <= d[rows]
            i[rows[best]] = refs[best]
        return d, i

    def near_pairs(self, rows: np.ndarray, exact_tol: float = 1e-6) -> pd.DataFrame:
        """(reference_index, row_index, distance) for rows within the threshold but not exact copies."""
        d, i = self.query(rows)
        hit = (d <= self.threshold) & (d > exact_tol)
        return pd.DataFrame({"reference_index": i[hit], "row_index": np.flatnonzero(hit), "distance": d[hit]})


def label_leakage(x: np.ndarray, y: np.ndarray, features: list[str], threshold: float = 0.98,
                  folds: int = 3, seed: int = 0, lower_bound: float = 0.9) -> pd.DataFrame:
    """Per feature, cross-validated accuracy of a small tree on that feature alone; ``leaks`` where it reaches
    ``threshold``, beats predicting the majority class, and the rows are enough to show it: the Wilson lower
    bound of that accuracy (95%, Bonferroni over the features) must reach ``lower_bound``. On 15 gold rows
    one of 30 honest features is perfect by chance often; a leaked label column stays perfect on hundreds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    from weakflow.tasks.core.trusted import wilson_interval

    y = np.asarray(y)
    counts = np.bincount(pd.factorize(y)[0])
    majority = counts.max() / len(y) if len(y) else 1.0
    k = max(2, min(folds, int(counts.min()) if len(counts) else 2))
    level = 1 - 2 * 0.05 / max(len(features), 1)  # two-sided level whose lower bound is one-sided 95%/F
    rows = []
    for j, name in enumerate(features):
        col = np.asarray(x[:, j], dtype=np.float64).reshape(-1, 1)
        if len(np.unique(col)) < 2 or len(y) < 2 * k:
            right = int(round(majority * len(y)))
        else:
            tree = DecisionTreeClassifier(max_leaf_nodes=max(2, 2 * len(counts)), random_state=seed)
            pred = cross_val_predict(tree, col, y, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
            right = int((pred == y).sum())
        acc = right / len(y) if len(y) else majority
        low = float(wilson_interval(right, len(y), level)[0]) if len(y) else 0.0
        rows.append({"feature": name, "accuracy": acc, "accuracy_low": low, "majority_baseline": majority,
                     "leaks": bool(acc >= threshold and acc > majority + 1e-9 and low >= lower_bound)})
    return pd.DataFrame(rows, columns=["feature", "accuracy", "accuracy_low", "majority_baseline", "leaks"])


# --- text -----------------------------------------------------------------------------------------

TEXT_NEAR = 0.9  # cosine of character 3-5-gram vectors at or above which two texts are near copies


def text_keys(frame: pd.DataFrame, numeric: list[str], text: list[str]) -> np.ndarray:
    """A hash per row of its numbers (rounded) and its comparison text: rows equal up to case, punctuation,
    spacing, compatibility forms (full-width letters), invisible characters (zero-width spaces, soft hyphens,
    joiners) and look-alike letters (Unicode TS #39 skeleton; :mod:`weakflow.tasks.core.textkey`) share a key."""
    from weakflow.tasks.lib.data import feature_hashes

    return feature_hashes(frame, numeric, text).to_numpy()


def exact_text_pairs(reference: pd.DataFrame, rows: pd.DataFrame, numeric: list[str], text: list[str]) -> pd.DataFrame:
    """(reference_index, row_index) of rows equal to a reference row once text is in comparison form."""
    ref = pd.DataFrame({"reference_index": np.arange(len(reference)), "h": text_keys(reference, numeric, text)})
    other = pd.DataFrame({"row_index": np.arange(len(rows)), "h": text_keys(rows, numeric, text)})
    pairs = other.merge(ref, on="h")[["reference_index", "row_index"]]
    return pairs.sort_values(["reference_index", "row_index"]).reset_index(drop=True)


def _char_vectors(keyed: pd.Series):  # -> L2-normalised sparse (rows, 2**20)
    """Character 3-5-gram vectors of texts already in comparison form (:func:`_normalised`)."""
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=1 << 20, alternate_sign=False,
                             norm="l2").transform(keyed.to_numpy())


def near_text_pairs(reference: pd.Series, rows: pd.Series, threshold: float = TEXT_NEAR,
                    chunk: int = 20_000) -> pd.DataFrame:
    """(reference_index, row_index, distance = 1 - cosine) of rows whose text is a near copy of a reference
    text (cosine of character 3-5-gram vectors of the comparison text at least ``threshold``: a changed word
    or a typo in a long message; full-width letters, invisible characters and look-alike letters count as
    the letters they stand for), exact copies left to the exact check."""
    ref_text = _normalised(reference)
    ref = _char_vectors(ref_text).T.tocsc()
    ref_keys = pd.util.hash_pandas_object(ref_text, index=False).to_numpy()
    found: list[pd.DataFrame] = []
    for start in range(0, len(rows), chunk):
        part = _normalised(rows.iloc[start : start + chunk])
        sims = (_char_vectors(part) @ ref).tocoo()
        keep = sims.data >= threshold
        pairs = pd.DataFrame({"reference_index": sims.col[keep], "row_index": sims.row[keep] + start,
                              "distance": 1.0 - sims.data[keep]})
        keys = pd.util.hash_pandas_object(part, index=False).to_numpy()
        same = keys[pairs["row_index"].to_numpy() - start] == ref_keys[pairs["reference_index"].to_numpy()]
        found.append(pairs[~same])
    if not found:
        return pd.DataFrame({"reference_index": [], "row_index": [], "distance": []})
    out = pd.concat(found, ignore_index=True)
    return out.sort_values(["reference_index", "row_index"]).reset_index(drop=True)


def _normalised(texts: pd.Series) -> pd.Series:
    """The comparison text (:func:`weakflow.tasks.core.textkey.comparison_text`), indexed from 0: the one
    definition of "the same text" the exact check, this near-copy check and the monitoring check share."""
    from weakflow.tasks.core.textkey import comparison_text

    return comparison_text(texts).reset_index(drop=True)


def joined_text(frame: pd.DataFrame, text: list[str]) -> pd.Series:
    """A row's text columns as one string (what the near-copy check compares)."""
    return frame[text].fillna("").astype(str).agg(" ".join, axis=1) if text else pd.Series([""] * len(frame))


# --- pictures ---------------------------------------------------------------------------------------

# A picture's perceptual hash: imagehash.phash with a 16x16 DCT block, 256 bits. Near copy: at most
# PICTURE_NEAR_BITS of them differ. Measured on the shipped Fashion-MNIST (28x28 grey): no distinct test picture
# of 2,000 comes within 24 bits of any of 12,000 training pictures (the default 64-bit hash, hash_size 8, puts
# 338 of the 2,000 within 4 bits: small centred grey pictures look alike to it); of copies of 1,000 test pictures
# within 20 bits: resized x2 100% (median 4 bits), resized to 20 px 99.4% (10), JPEG quality 90 100% (4),
# quality 60 86% (13), made RGB at 64 px as JPEG quality 40 99.9% (4), 20 levels brighter 99.7% (6). 20 of 256
# bits (7.8%) keeps a margin below the closest distinct pair; photos lie much further apart than these tiny
# pictures. Limit: a picture with almost no detail (a flat blur) leaves most of the 256 bits to noise, so a
# re-encoded copy of one can be missed (its exact copies are still found by their pixels).
PICTURE_HASH_SIZE = 16
PICTURE_NEAR_BITS = 20
_WORDS = PICTURE_HASH_SIZE * PICTURE_HASH_SIZE // 64  # uint64 words per hash


@dataclass(frozen=True)
class PictureKeys:
    """Per picture: ``exact``, a 64-bit digest of its decoded pixels (mode, size and values: the same
    picture under two names, or saved again losslessly, digests alike); ``phash``, its perceptual hash as
    ``_WORDS`` uint64 words; ``ok``, whether it could be read (an unreadable one matches nothing near)."""

    exact: np.ndarray
    phash: np.ndarray
    ok: np.ndarray

    def __len__(self) -> int:
        return len(self.exact)


def picture_keys(paths: list, max_pixels: int = 89_478_485, threads: int | None = None) -> PictureKeys:
    """:class:`PictureKeys` of the files at ``paths``, read in parallel threads (Pillow releases the GIL
    while decoding); a file read twice is read once."""
    from concurrent.futures import ThreadPoolExecutor

    from weakflow.tasks.core.images import workers

    distinct = sorted({str(p) for p in paths})
    with ThreadPoolExecutor(max_workers=threads or workers()) as pool:
        found = dict(zip(distinct, pool.map(lambda p: _fingerprint(p, max_pixels), distinct, chunksize=32)))
    exact = np.zeros(len(paths), np.uint64)
    phash = np.zeros((len(paths), _WORDS), np.uint64)
    ok = np.zeros(len(paths), bool)
    for i, p in enumerate(paths):
        exact[i], hashed = found[str(p)]
        if hashed is not None:
            phash[i], ok[i] = hashed, True
    return PictureKeys(exact, phash, ok)


def _fingerprint(path: str, max_pixels: int) -> tuple[int, np.ndarray | None]:
    """(pixel digest, perceptual hash words) of one file; (digest of the path, None) when it does not read."""
    import hashlib

    import imagehash
    from PIL import Image

    from weakflow.tasks.core.images import open_picture

    try:
        with open_picture(path) as handle, Image.open(handle) as img:
            if img.width * img.height > max_pixels:
                raise ValueError("too large")
            img.load()
            digest = hashlib.blake2b(f"{img.mode}|{img.width}x{img.height}|".encode(), digest_size=8)
            digest.update(img.tobytes())
            grey = _grey(img)
        grey.thumbnail((256, 256))  # phash reads a 64x64 reduction: a large photo need not be resized whole
        bits = imagehash.phash(grey, hash_size=PICTURE_HASH_SIZE).hash.reshape(-1)
        return int.from_bytes(digest.digest(), "little"), np.packbits(bits).view(">u8").astype(np.uint64)
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError, Image.DecompressionBombError):
        return int.from_bytes(hashlib.blake2b(f"unreadable|{path}".encode(), digest_size=8).digest(), "little"), None


def _grey(img):  # -> an 8-bit grey PIL image: 16-bit, 32-bit and float pictures scaled, not clipped
    from weakflow.tasks.core.images import WIDE_MODES, wide_to_grey

    return wide_to_grey(img) if img.mode in WIDE_MODES else img.convert("L")


def exact_picture_pairs(reference: PictureKeys, rows: PictureKeys) -> pd.DataFrame:
    """(reference_index, row_index) for every picture whose pixels equal a reference picture's."""
    ref = pd.DataFrame({"reference_index": np.arange(len(reference)), "h": reference.exact})
    other = pd.DataFrame({"row_index": np.arange(len(rows)), "h": rows.exact})
    pairs = other.merge(ref, on="h")[["reference_index", "row_index"]]
    return pairs.sort_values(["reference_index", "row_index"]).reset_index(drop=True)


def nearest_picture(reference: PictureKeys, rows: PictureKeys, block: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """(Hamming distance in bits to, index of) the nearest readable reference picture, per row (a row that
    did not read, or no reference: distance 257, index -1). Brute force in blocks of ``block`` pairs: 2,000
    test against 12,000 training pictures take a fraction of a second."""
    dist = np.full(len(rows), _WORDS * 64 + 1, np.int64)
    index = np.full(len(rows), -1, np.int64)
    ref_at = np.flatnonzero(reference.ok)
    if not len(ref_at) or not len(rows):
        return dist, index
    ref = reference.phash[ref_at]
    step = max(1, block // len(ref_at))
    for start in range(0, len(rows), step):
        part = rows.phash[start : start + step]
        d = np.zeros((len(part), len(ref)), np.uint16)
        for w in range(_WORDS):
            d += np.bitwise_count(part[:, w, None] ^ ref[None, :, w]).astype(np.uint16)
        best = d.argmin(axis=1)
        dist[start : start + len(part)] = d[np.arange(len(part)), best]
        index[start : start + len(part)] = ref_at[best]
    dist[~rows.ok], index[~rows.ok] = _WORDS * 64 + 1, -1
    return dist, index


def near_picture_pairs(reference: PictureKeys, rows: PictureKeys, bits: int = PICTURE_NEAR_BITS) -> pd.DataFrame:
    """(reference_index, row_index, distance in bits) of rows whose picture is a near copy of a reference
    picture (perceptual hashes at most ``bits`` apart), each with its nearest one; pictures equal to a
    reference picture are left to the exact check."""
    d, i = nearest_picture(reference, rows)
    hit = (d <= bits) & ~np.isin(rows.exact, reference.exact)
    return pd.DataFrame({"reference_index": i[hit], "row_index": np.flatnonzero(hit), "distance": d[hit].astype(float)})


def picture_copies(data, reference: pd.DataFrame, rows: pd.DataFrame, near_factor: float = 0.0
                   ) -> tuple[pd.DataFrame, pd.DataFrame, str, tuple[np.ndarray, np.ndarray]]:
    """:func:`weakflow.tasks.lib.checks.copies` for rows that carry a picture (``data.schema.images``): the
    picture decides, whatever the numbers and text beside it (a test picture in training is a leak under any
    caption). Exact: the same decoded pixels (file bytes or a lossless re-save); near: perceptual hashes at
    most :data:`PICTURE_NEAR_BITS` of 256 bits apart. ``near_factor`` is the numeric check's and not read."""
    images = data.schema.images
    max_pixels = images.fmt.max_pixels
    ref_paths, row_paths = images.paths(reference), images.paths(rows)
    ref_keys, row_keys = picture_keys(ref_paths, max_pixels), picture_keys(row_paths, max_pixels)
    exact = exact_picture_pairs(ref_keys, row_keys)
    near = near_picture_pairs(ref_keys, row_keys)
    what = (f"training row(s) whose picture is a near copy of a test picture (perceptual hash within "
            f"{PICTURE_NEAR_BITS} of {_WORDS * 64} bits)") + picture_examples(near, ref_paths, row_paths, "~")
    return exact, near, what, (ref_keys.exact, row_keys.exact)


def picture_examples(pairs: pd.DataFrame, ref_paths: list, row_paths: list, sign: str = "=", shown: int = 3) -> str:
    """"; e.g. training row 7 (file) = test row 2 (file), ..." for the first ``shown`` pairs (rows counted
    from 0 in the order read); empty without pairs."""
    if pairs.empty:
        return ""
    listed = []
    for p in pairs.head(shown).itertuples():
        far = f" at {int(p.distance)} bits" if "distance" in pairs and sign != "=" else ""
        listed.append(f"training row {p.row_index} ({row_paths[p.row_index]}) {sign} test row {p.reference_index} "
                      f"({ref_paths[p.reference_index]}){far}")
    more = f", and {len(pairs) - shown} more" if len(pairs) > shown else ""
    return "; e.g. " + ", ".join(listed) + more
