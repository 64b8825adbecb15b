"""The text demo: the SMS Spam Collection shipped with weakflow (``tasks/demo_data``), split into Parquet files.

5,574 real English SMS messages labelled ``ham`` / ``spam`` (CC BY 4.0; see ``tasks/demo_data/README.md``).
Some messages repeat (verbatim, or up to case, punctuation and spacing), so every split here is made by
*group*: all copies of one normalised message land on one side. Nothing is downloaded.

:data:`DEMO_RULES` are the demo's labelling functions: a handful of keyword / regex rules written from common
sense about SMS spam (the way a user of Snorkel's spam tutorial would write them), not fitted to this file.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from weakflow.tasks.lib.config import DemoTextData, FilesData, RuleConfig
from weakflow.tasks.core.text import normalise

ROW_ID = "row_id"  # the same name as tasks.lib.data.ROW_ID (not imported: tasks.lib.data may import this module)
TEXT = "text"
LABEL = "label"
CLASSES = ["ham", "spam"]
DATA_FILE = "sms_spam.tsv.gz"  # in the package folder tasks/demo_data/
DATA_MD5 = "018ac4933126a636a22c93ddc172f27d"  # of the decompressed file (the UCI copy, header Label<TAB>SMS)
DATA_ROWS = 5574
MIN_GOLD_PER_CLASS = 6  # gold rows per class at the least, whatever gold_fraction says (3 folds x 2)
SPLIT_VERSION = 1  # part of the folder key: bump when the split below changes, so no stale files are reused

DEMO_RULES: list[RuleConfig] = [
    RuleConfig(name="spam_prize", kind="keywords", column=TEXT, label="spam",
               keywords=["free", "won", "winner", "win", "prize", "claim", "cash", "award", "guaranteed"]),
    RuleConfig(name="spam_call_to_action", kind="keywords", column=TEXT, label="spam",
               keywords=["call now", "txt", "reply", "text stop", "send stop", "subscribe", "unsubscribe", "opt out"]),
    RuleConfig(name="spam_money", kind="regex", column=TEXT, label="spam", pattern=r"[£$€]\s?\d"),
    RuleConfig(name="spam_number", kind="regex", column=TEXT, label="spam", pattern=r"\d{5,}"),
    RuleConfig(name="spam_url", kind="regex", column=TEXT, label="spam", pattern=r"www\.|https?://|\.com\b"),
    RuleConfig(name="ham_chat", kind="keywords", column=TEXT, label="ham",
               keywords=["ok", "lol", "sorry", "home", "later", "love", "haha", "see you", "tonight"]),
    RuleConfig(name="ham_personal", kind="keywords", column=TEXT, label="ham",
               keywords=["i'm", "i'll", "i am", "my", "me"]),
]


class DemoDataError(RuntimeError):
    """The shipped demo file is missing or not the file weakflow was released with (a broken install)."""


def data_path():  # -> importlib.resources.abc.Traversable
    """Where the shipped, gzipped SMS Spam Collection is (inside the installed ``weakflow.tasks`` package)."""
    return resources.files("weakflow.tasks").joinpath("demo_data", DATA_FILE)


def read_sms_spam() -> pd.DataFrame:
    """The shipped collection as a frame: ``row_id`` (0.., file order), ``text``, ``label`` ("ham"/"spam").

    The decompressed bytes are checked against :data:`DATA_MD5`, so a damaged install fails here, loudly."""
    source = data_path()
    try:
        with source.open("rb") as handle:
            raw = gzip.decompress(handle.read())
    except (OSError, EOFError) as exc:
        raise DemoDataError(f"the shipped demo data {source} cannot be read ({type(exc).__name__}: {exc}); "
                            "reinstall weakflow (the package data tasks/demo_data/ is missing or damaged)") from exc
    digest = hashlib.md5(raw).hexdigest()
    if digest != DATA_MD5:
        raise DemoDataError(f"the shipped demo data {source} has md5 {digest} once decompressed, expected "
                            f"{DATA_MD5}; reinstall weakflow")
    frame = pd.read_csv(io.BytesIO(raw), sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                        encoding="utf-8")
    frame = frame.rename(columns={"Label": LABEL, "SMS": TEXT})
    frame.insert(0, ROW_ID, np.arange(len(frame), dtype=np.int64))
    return frame[[ROW_ID, TEXT, LABEL]]


def group_split(groups: np.ndarray, labels: np.ndarray, fraction: float, rng: np.random.Generator,
                minimum: int = 0) -> np.ndarray:
    """A boolean mask of the rows taken: about ``fraction`` of each label's rows (at least ``minimum`` where
    there are that many), made of whole groups.

    Per label, the groups (each labelled by its most common label; copies of a message share one in this
    file) are shuffled and taken in that order while they fit within the target row count; the share is
    exact wherever single messages can fill the gap (in this file, always)."""
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    codes, group_of_row = np.unique(groups, return_inverse=True)
    size = np.bincount(group_of_row, minlength=len(codes))
    table = pd.crosstab(group_of_row, labels)  # groups x labels: rows of each label per group
    group_label = table.columns.to_numpy()[table.to_numpy().argmax(axis=1)]
    taken_groups = np.zeros(len(codes), dtype=bool)
    for label in sorted(set(labels.tolist())):
        members = np.flatnonzero(group_label == label)
        members = members[rng.permutation(len(members))]
        total = int(size[members].sum())
        target = min(total, max(round(fraction * total), minimum))
        # the longest prefix of the shuffled groups within the target, then the next groups that still fit
        # (only the last few rows of a cut are chosen that way: singletons close the gap)
        cut = int(np.searchsorted(np.cumsum(size[members]), target, side="right"))
        taken_groups[members[:cut]] = True
        taken = int(size[members[:cut]].sum())
        for group in members[cut:]:
            if taken == target:
                break
            if taken + size[group] <= target:
                taken_groups[group] = True
                taken += int(size[group])
    return taken_groups[group_of_row]


def _key(cfg: DemoTextData) -> str:
    settings = {"settings": cfg.model_dump(mode="json"), "data_md5": DATA_MD5, "split_version": SPLIT_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def materialize_demo_text(cfg: DemoTextData, root: Path) -> FilesData:
    """Write the text demo's train/test Parquet files (once per settings) and describe them as user files.

    Messages are grouped by their normalised text (:func:`tasks.core.text.normalise`: lower case, punctuation
    and repeated spaces removed). A frozen test split (``test_fraction`` of each label's rows, whole groups)
    is never trained on; ``gold_fraction`` of the rest (per label, whole groups, at least
    :data:`MIN_GOLD_PER_CLASS` rows per label) keeps its gold label; the other training rows carry no label
    (the rules decide, in the pipeline, which become weak and which stay unlabeled).

    ``train.parquet``: ``text``, ``label`` ("ham"/"spam" on gold rows, null elsewhere), ``row_id`` (the
    message's position in the shipped file). ``test.parquet``: ``text``, ``label``. ``truth.parquet``
    (``row_id``, ``true_label``) is for benchmarks only; the pipeline never reads it.
    """
    folder = Path(root) / f"demo-text-{_key(cfg)}"
    spec = FilesData(
        train_path=folder / "train.parquet",
        test_path=folder / "test.parquet",
        feature_columns=[],
        text_columns=[TEXT],
        label_column=LABEL,
        weak_label_columns=[],
        abstain="",
        classes=list(CLASSES),
        seed=cfg.seed,
    )
    if spec.train_path.is_file() and spec.test_path.is_file():
        return spec
    data = read_sms_spam()
    groups = normalise(data[TEXT]).to_numpy()
    labels = data[LABEL].to_numpy()
    rng = np.random.default_rng(cfg.seed)
    in_test = group_split(groups, labels, cfg.test_fraction, rng)
    rest = np.flatnonzero(~in_test)
    gold = np.zeros(len(data), dtype=bool)
    gold[rest] = group_split(groups[rest], labels[rest], cfg.gold_fraction, rng, minimum=MIN_GOLD_PER_CLASS)

    train = data.iloc[rest][[TEXT, LABEL, ROW_ID]].reset_index(drop=True)
    train[LABEL] = pd.Series(np.where(gold[rest], labels[rest], None), dtype=object)
    test = data[in_test][[TEXT, LABEL]].reset_index(drop=True)
    truth = pd.DataFrame({ROW_ID: data[ROW_ID], "true_label": labels})
    folder.mkdir(parents=True, exist_ok=True)
    # each file written under a temporary name and renamed: a reader (or a second process materialising
    # the same settings) never sees half a file; train last, since its presence means "done"
    for frame, path in ((truth, folder / "truth.parquet"), (test, spec.test_path), (train, spec.train_path)):
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        frame.to_parquet(partial, index=False)
        os.replace(partial, path)
    return spec
