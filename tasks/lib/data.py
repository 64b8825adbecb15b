"""Data in and out: the built-in demo, reading the user's files, and the arrays the stages train on.

Reading never validates: the Great Expectations suite (``data_checks``) judges the raw tables, and
only then does :func:`assemble` turn them into :class:`PipelineData`.
"""

from __future__ import annotations

import re
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from weakflow.tasks.lib.errors import DataError  # noqa: F401 (raised here; defined apart, light)
from weakflow.tasks.lib.tables import (  # noqa: F401 (the readers, re-exported: their home before tables.py)
    check_unique_columns, existing_table, first_non_utf8, header_names, read_table, unreadable,
)
from weakflow.tasks.lib.config import (AugmentConfig, Config, DemoData, DemoImagesData, DemoTextData, FilesData,
                                       ImageFolderData, LoaderConfig)
from weakflow.tasks.core.folds import GoldFolds, gold_folds
from weakflow.tasks.core.noise import corrupt_labels
from weakflow.tasks.core.schema import InputSchema
from weakflow.tasks.core.images import ImageFeaturizer, PixelCache, fit_featurizer, open_picture
from weakflow.tasks.core.picture_rows import PictureRows, StreamPolicy
from weakflow.tasks.core.text import TextFeaturizer, normalise
from weakflow.tasks.core.textkey import comparison_text

PROVENANCE = "provenance"  # gold | weak | unlabeled
SPLIT = "split"  # gold | weak | unlabeled
FOLD = "fold"  # gold rows: their cross-fitting fold (0..k-1); other rows: -1
ROW_ID = "row_id"
DEMO_WEAK_COLUMN = "weak_label"


@dataclass
class RawTables:
    train: pd.DataFrame
    test: pd.DataFrame
    spec: FilesData


_INTEGER = re.compile(r"[+-]?[0-9]+")  # what a CSV cell of an integer class spells ("+-5" does not)


def as_class(value: object, integers: bool = False) -> object:
    """A label as a class value: an integer stored as a float (a CSV column with empty cells) becomes the
    integer, text is stripped; anything empty is None. With ``integers`` (the classes are integers) text that
    spells an integer is that integer: a CSV column of 0, 1 and ``skip`` is read as text."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if integers and _INTEGER.fullmatch(text):
            return int(text)
        return text or None
    return value


def class_values(column: pd.Series, integers: bool = False) -> pd.Series:
    """:func:`as_class` over a column (object dtype: integers and names side by side stay what they are)."""
    return column.astype(object).map(lambda v: as_class(v, integers))


def integer_classes(classes: list | None) -> bool:
    """Whether a class set is integers (then label text that spells an integer is read as one)."""
    return bool(classes) and all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes)


def read_label_columns(raw: RawTables, classes: list) -> RawTables:
    """The label and weak label columns as class values where the classes are integers and a column was read
    as text (a CSV weak column holding ``0``, ``1`` and the abstain value ``skip``): the validation suite
    and the pipeline then see the integers the file means. Other columns are left as read."""
    if not integer_classes(classes):
        return raw
    spec = raw.spec
    for frame, columns in ((raw.train, [spec.label_column, *spec.weak_label_columns]), (raw.test, [spec.label_column])):
        for column in columns:
            if column in frame.columns and frame[column].dtype == object:
                frame[column] = class_values(frame[column], integers=True)
    return raw


@dataclass
class PipelineData:
    """Validated data, with every training row's provenance, split and (gold rows) cross-fitting fold.

    ``fold`` makes a view for one fold model (:meth:`fold_view`, sharing the frames): its ``gold_train``
    rows are the gold rows outside that fold and its ``gold_dev`` rows that fold's, on which it is judged.
    Without a fold (the refit on all gold), ``gold_train`` is every gold row and ``gold_dev`` is empty."""

    train: pd.DataFrame  # inputs, label (a class value, None when not gold), weak columns, provenance, split, fold
    test: pd.DataFrame
    spec: FilesData
    classes: list  # class values (integers or names), sorted; a row's class index is its position here
    fold: int | None = None
    schema: InputSchema | None = None  # None: numeric feature_columns only

    def __post_init__(self) -> None:
        if self.schema is None:
            self.schema = InputSchema(list(self.spec.feature_columns), list(self.spec.text_columns))

    def fold_view(self, fold: int | None) -> PipelineData:
        return PipelineData(self.train, self.test, self.spec, self.classes, fold, self.schema)

    @property
    def folds(self) -> int:
        """How many gold folds the rows were cut into."""
        return int(self.train[FOLD].max()) + 1 if len(self.train) else 0

    @property
    def features(self) -> list[str]:
        """The model's feature names (numeric columns, then text features)."""
        return self.schema.names

    @property
    def inputs(self) -> list[str]:
        """The raw columns a row carries (numeric, then text)."""
        return self.schema.inputs

    @property
    def label(self) -> str:
        return self.spec.label_column

    def x(self, frame: pd.DataFrame) -> np.ndarray:
        return self.schema.x(frame)

    def table(self, frame: pd.DataFrame) -> np.ndarray | PictureRows:
        """A table a network trains on: in memory, or streamed from the picture cache where it is too large."""
        return self.schema.table(frame)

    def y(self, frame: pd.DataFrame) -> np.ndarray:
        """Class indices (0..C-1) of a frame's gold labels."""
        index = {c: i for i, c in enumerate(self.classes)}
        return frame[self.label].map(index).to_numpy(dtype=np.int64)

    def rows(self, *splits: str) -> pd.DataFrame:
        """Rows of the named splits: ``gold`` (all gold), ``gold_train`` / ``gold_dev`` (this view's gold
        rows to train on / to be judged on), ``weak``, ``unlabeled``."""
        split = self.train[SPLIT]
        mask = split.isin([s for s in splits if s in ("gold", "weak", "unlabeled")])
        gold = split == "gold"
        if "gold_train" in splits:
            mask |= gold & (self.train[FOLD] != self.fold) if self.fold is not None else gold
        if "gold_dev" in splits and self.fold is not None:
            mask |= gold & (self.train[FOLD] == self.fold)
        return self.train[mask]

    def gold_folds(self, frame: pd.DataFrame) -> GoldFolds:
        """Where ``frame``'s gold rows are (positions), their class index and fold: what cross-fitting needs
        to keep each fold model off its own gold rows."""
        gold = (frame[SPLIT] == "gold").to_numpy()
        rows = np.flatnonzero(gold)
        return GoldFolds(rows, self.y(frame.iloc[rows]), frame[FOLD].to_numpy()[rows].astype(np.int64))

    def with_schema(self, schema: InputSchema) -> PipelineData:
        """A copy whose rows become features through ``schema`` (e.g. another text featurisation)."""
        return PipelineData(self.train, self.test, self.spec, self.classes, self.fold, schema)

    def with_weak_rows(self, row_ids: np.ndarray) -> PipelineData:
        """A copy in which the non-gold rows ``row_ids`` (those a rule or labelling function voted on) count
        as weak: assembly only saw the weak label columns."""
        marked = self.train[ROW_ID].isin(row_ids) & (self.train[SPLIT] == "unlabeled")
        if not marked.any():
            return self
        train = self.train.copy()
        train.loc[marked, [PROVENANCE, SPLIT]] = "weak"
        return PipelineData(train, self.test, self.spec, self.classes, self.fold, self.schema)

    def provenance_counts(self) -> dict[str, int]:
        counts = self.train[PROVENANCE].value_counts()
        return {k: int(counts.get(k, 0)) for k in ("gold", "weak", "unlabeled")}


def resolve_data_spec(cfg: Config) -> FilesData:
    """The data as files: the demos are written to Parquet in the workspace (once per settings), then
    read like any user's files."""
    return data_files(cfg.data, cfg.tracking.workspace)


DataSource = DemoData | DemoTextData | DemoImagesData | FilesData | ImageFolderData  # the data section


def data_files(source: DataSource, workspace: Path) -> FilesData:
    """:func:`resolve_data_spec` on the ``data`` section and the workspace alone."""
    if isinstance(source, DemoData):
        return materialize_demo(source, Path(workspace) / "data")
    if isinstance(source, DemoTextData):
        from weakflow.tasks.lib.demo_text import materialize_demo_text

        return materialize_demo_text(source, Path(workspace) / "data")
    if isinstance(source, DemoImagesData):
        from weakflow.tasks.lib.demo_images import materialize_demo_images

        return materialize_demo_images(source, Path(workspace) / "data")
    if isinstance(source, ImageFolderData):
        from weakflow.tasks.lib.image_folder import materialize_image_folder

        return materialize_image_folder(source, Path(workspace) / "data")
    return source


def read_raw(spec: FilesData) -> RawTables:
    return RawTables(read_table(spec.train_path, "data.train_path"), read_table(spec.test_path, "data.test_path"), spec)


def classes_of(labels: pd.Series) -> list:
    """The distinct labels of a column as class values: integers or names, sorted (a column mixing both
    is read as names)."""
    values = {as_class(v) for v in labels.tolist()} - {None}  # Python scalars, not numpy's
    if any(not isinstance(v, int) for v in values):
        values = {str(v) for v in values}
    return sorted(values)


def class_set(raw: RawTables) -> list:
    """The declared class set, or the labels of the frozen test file."""
    if raw.spec.classes is not None:
        return sorted(raw.spec.classes)
    if raw.spec.label_column not in raw.test.columns:
        return []
    return classes_of(raw.test[raw.spec.label_column])


def weak_votes(frame: pd.DataFrame, spec: FilesData, classes: list | None = None) -> pd.DataFrame:
    """The weak columns as class values, with every empty cell and the abstain value as None; with integer
    ``classes`` (default ``data.classes``) text spelling an integer is that integer."""
    abstain = as_class(spec.abstain)
    integers = integer_classes(classes if classes is not None else spec.classes)
    votes = frame[spec.weak_label_columns].apply(lambda column: class_values(column, integers))
    return votes.map(lambda v: None if v == abstain else v)


def assemble(raw: RawTables, classes: list, folds: int = 3, text_dims: int = 64, cache_dir: Path | None = None,
             augment: AugmentConfig | None = None, loader: LoaderConfig | None = None) -> PipelineData:
    """Attach provenance, split and the gold rows' cross-fitting folds to validated raw tables; fit the text
    featurisation on the training rows' text (no label, no test row); choose the picture format from the
    training pictures and decode every picture once into the cache under ``cache_dir``."""
    spec = raw.spec
    images = picture_input(raw, cache_dir, augment, loader) if spec.image_columns else None
    train = raw.train.copy()
    train[spec.label_column] = class_values(train[spec.label_column])
    votes = weak_votes(train, spec, classes) if spec.weak_label_columns else None
    has_weak = votes.notna().any(axis=1) if votes is not None else pd.Series(False, index=train.index)
    gold = train[spec.label_column].notna()
    train[PROVENANCE] = np.where(gold, "gold", np.where(has_weak, "weak", "unlabeled"))
    train[SPLIT] = train[PROVENANCE]
    train[FOLD] = -1
    if gold.any():
        index = {c: i for i, c in enumerate(classes)}
        # copies of a row stay in one fold; grouped by the plain normalisation, whose hashes fix the folds the
        # recorded figures were measured on (on the shipped SMS data both keys make the same 5,130 groups)
        copies = feature_hashes(train.loc[gold], list(spec.feature_columns), list(spec.text_columns),
                                key=normalise).to_numpy()
        if images is not None:  # the same picture file content twice: one group
            copies = pd.util.hash_pandas_object(pd.DataFrame({"f": copies, "p": picture_digests(
                images.paths(train.loc[gold]))}), index=False).to_numpy()
        train.loc[gold, FOLD] = gold_folds(train.loc[gold, spec.label_column].map(index).to_numpy(), folds, spec.seed,
                                           groups=copies)
    if ROW_ID not in train.columns:
        train[ROW_ID] = np.arange(len(train))
    test = raw.test.copy()
    test[spec.label_column] = class_values(test[spec.label_column])
    featurizer = (TextFeaturizer.fit(train, spec.text_columns, dims=text_dims, seed=spec.seed)
                  if spec.text_columns else None)
    schema = InputSchema(list(spec.feature_columns), list(spec.text_columns), featurizer, images)
    return PipelineData(train=train.reset_index(drop=True), test=test.reset_index(drop=True), spec=spec,
                        classes=classes, schema=schema)


def picture_input(raw: RawTables, cache_dir: Path | None, augment: AugmentConfig | None,
                  loader: LoaderConfig | None = None) -> ImageFeaturizer:
    """The picture column's featurizer: format chosen from a sample of the training pictures, augmentation
    as configured, and (with ``cache_dir``) every training and test picture decoded into the cache. A picture
    that fails is one DataError naming the file, the column and the row."""
    spec = raw.spec
    column = spec.image_columns[0]
    images, _ = fit_featurizer(raw.train, column, spec.image_root, spec.image_size, spec.image_colour,
                               spec.image_max_pixels, seed=spec.seed)
    aug = augment or AugmentConfig()
    images.augment = (aug.crop_padding, float(aug.flip), aug.jitter) if aug.enabled else None
    load = loader or LoaderConfig()
    images.stream = StreamPolicy.resolve(load.resident_mb, load.workers)  # applies where the pictures are cached
    if cache_dir is not None:
        images.cache = PixelCache(Path(cache_dir) / "pixels", images.fmt)
        for frame, field, path in ((raw.train, "data.train_path", spec.train_path), (raw.test, "data.test_path", spec.test_path)):
            problems = images.cache.warm(images.paths(frame))
            if problems:
                row, why = min(problems.items())
                raise DataError(f"{field}: {path} column {column!r} row {row} (rows counted from 0): picture "
                                f"{images.paths(frame.iloc[[row]])[0]} {why}; {len(problems)} picture(s) failed")
    return images


def picture_digests(paths: list[Path]) -> np.ndarray:
    """A 64-bit digest of each file's bytes (copies of one picture under two names digest alike)."""
    out = np.zeros(len(paths), dtype=np.uint64)
    for i, path in enumerate(paths):
        try:
            with open_picture(path) as handle:  # in blocks: any size costs no memory
                digest = hashlib.file_digest(handle, lambda: hashlib.blake2b(digest_size=8)).digest()
            out[i] = int.from_bytes(digest, "little")
        except OSError:
            out[i] = int.from_bytes(hashlib.blake2b(str(path).encode(), digest_size=8).digest(), "little")
    return out


def hash_rows(x: np.ndarray, decimals: int = 6) -> np.ndarray:
    """A 64-bit hash per row of the values as float64 rounded to ``decimals``: equal numbers hash equal
    whatever their dtype (float32 vs float64, int vs float) or float noise below the rounding."""
    rounded = np.round(np.asarray(x, dtype=np.float64), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    return pd.util.hash_pandas_object(pd.DataFrame(rounded), index=False).to_numpy()


def feature_hashes(frame: pd.DataFrame, columns: list[str], text: list[str] | None = None,
                   key: Callable[[pd.Series], pd.Series] = comparison_text) -> pd.Series:
    """:func:`hash_rows` of a frame's feature columns (column order fixed), indexed like the frame; with
    ``text`` columns their comparison text hashes in too (:func:`weakflow.tasks.core.textkey.comparison_text`:
    case, punctuation, spacing, compatibility forms, invisible characters and look-alike letters ignored)."""
    if columns:
        values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        hashes = pd.Series(hash_rows(values), index=frame.index)
    else:  # text only
        hashes = pd.Series(np.zeros(len(frame), dtype=np.uint64), index=frame.index)
    for column in text or []:
        words = pd.util.hash_pandas_object(key(frame[column]), index=False)
        hashes = pd.Series(pd.util.hash_pandas_object(pd.DataFrame({"n": hashes.to_numpy(), "t": words.to_numpy()}),
                                                      index=False).to_numpy(), index=frame.index)
    return hashes


def dataset_digest(frame: pd.DataFrame) -> str:
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes()).hexdigest()[:16]


# --- the built-in demo -------------------------------------------------------------------------


def materialize_demo(cfg: DemoData, root: Path) -> FilesData:
    """Write the demo's train/test Parquet files (once per settings) and describe them as user files.

    Splits: a stratified gold test split never trained on; ``gold_fraction`` of the rest keeps its
    gold label; of the remaining rows ``unlabeled_fraction`` lose their label and the rest get a weak
    label with simulated annotator noise (the gold rows carry that annotator's label too). ``truth.parquet`` keeps the hidden true labels for
    benchmarks only; the pipeline never reads it.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    key = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(root) / f"demo-{key}"
    features = [f"px_{i}" for i in range(64)]
    spec = FilesData(
        train_path=folder / "train.parquet",
        test_path=folder / "test.parquet",
        feature_columns=features,
        label_column="label",
        weak_label_columns=[DEMO_WEAK_COLUMN],
        abstain=-1,
        classes=list(range(10)),
        image_shape=(1, 8, 8) if cfg.image else None,
        seed=cfg.seed,
    )
    if spec.train_path.is_file() and spec.test_path.is_file():
        return spec
    x, y = load_digits(return_X_y=True)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed)
    other, gold = train_test_split(rest, test_size=cfg.gold_fraction, stratify=y[rest], random_state=cfg.seed)
    if cfg.unlabeled_fraction > 0:
        weak, unlabeled = train_test_split(
            other, test_size=cfg.unlabeled_fraction, stratify=y[other], random_state=cfg.seed
        )
    else:
        weak, unlabeled = other, other[:0]
    # The annotator labelled the gold rows too (experts then verified them), so each source's accuracy
    # can be measured against gold; only weak rows train on these labels.
    annotated = np.concatenate([weak, gold])
    noisy_all = corrupt_labels(y[annotated], 10, cfg.noise.rate, cfg.noise.kind, cfg.noise.seed, features=x[annotated])
    noisy, noisy_gold = noisy_all[: len(weak)], noisy_all[len(weak) :]

    def frame(rows: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(x[rows].astype(np.float32), columns=features)

    parts = []
    for rows, prov, gold_label, weak_label in (
        (gold, "gold", y[gold], noisy_gold),
        (weak, "weak", None, noisy),
        (unlabeled, "unlabeled", None, np.full(len(unlabeled), -1)),
    ):
        part = frame(rows)
        part["label"] = pd.array(gold_label if gold_label is not None else [pd.NA] * len(rows), dtype="Int64")
        part[DEMO_WEAK_COLUMN] = weak_label.astype(np.int64)
        part[PROVENANCE] = prov
        part[ROW_ID] = rows
        parts.append(part)
    train = pd.concat(parts, ignore_index=True)
    test_frame = frame(test)
    test_frame["label"] = y[test].astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    train.to_parquet(spec.train_path, index=False)
    test_frame.to_parquet(spec.test_path, index=False)
    pd.DataFrame({ROW_ID: idx, "true_label": y}).to_parquet(folder / "truth.parquet", index=False)
    return spec


def file_sha256(path: Path) -> str:
    """A file's SHA-256 (what ``sha256sum`` prints), read in blocks so a large file costs no memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
