"""The text demo (tasks/lib/demo_text.py): the shipped SMS Spam Collection, its grouped splits, and DEMO_RULES."""

import gzip
import hashlib
import os

import pandas as pd
import pytest

from weakflow.tasks.lib.config import DemoTextData, FilesData, RuleConfig
from weakflow.tasks.core.text import normalise
from weakflow.tasks.lib.demo_text import (
    DEMO_RULES,
    MIN_GOLD_PER_CLASS,
    DemoDataError,
    data_path,
    materialize_demo_text,
    read_sms_spam,
)

# from /work/shared/data/sms_spam/README.md (the UCI copy), not from the module under test
SHARED_MD5 = "018ac4933126a636a22c93ddc172f27d"
HAM, SPAM = 4827, 747


@pytest.fixture(scope="module")
def demo(demo_root):
    spec = materialize_demo_text(DemoTextData(), demo_root)
    train = pd.read_parquet(spec.train_path)
    test = pd.read_parquet(spec.test_path)
    truth = pd.read_parquet(spec.train_path.parent / "truth.parquet")
    return spec, train, test, truth


def test_shipped_file_is_the_uci_collection():
    with data_path().open("rb") as handle:
        raw = gzip.decompress(handle.read())
    assert hashlib.md5(raw).hexdigest() == SHARED_MD5
    assert raw.startswith(b"Label\tSMS\n")
    frame = read_sms_spam()
    assert len(frame) == HAM + SPAM
    assert frame["label"].value_counts().to_dict() == {"ham": HAM, "spam": SPAM}
    assert frame["row_id"].tolist() == list(range(HAM + SPAM))


def test_damaged_copy_is_refused(tmp_path, monkeypatch):
    with data_path().open("rb") as handle:
        raw = bytearray(gzip.decompress(handle.read()))
    raw[-3] ^= 1  # one flipped bit in the last message
    damaged = tmp_path / "sms_spam.tsv.gz"
    damaged.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr("weakflow.tasks.lib.demo_text.data_path", lambda: damaged)
    with pytest.raises(DemoDataError, match="md5"):
        read_sms_spam()


def test_spec_describes_text_files(demo):
    spec, train, test, _ = demo
    assert isinstance(spec, FilesData)
    assert spec.feature_columns == [] and spec.text_columns == ["text"] and spec.label_column == "label"
    assert spec.weak_label_columns == [] and spec.classes == ["ham", "spam"] and spec.abstain == ""
    assert spec.train_path.parent.name.startswith("demo-text-")
    assert list(train.columns) == ["text", "label", "row_id"]
    assert list(test.columns) == ["text", "label"]


def test_split_sizes(demo):
    _, train, test, truth = demo
    # 20% of each label's messages, whole copy groups (exact here: singletons fill the cut)
    assert test["label"].value_counts().to_dict() == {"ham": round(0.2 * HAM), "spam": round(0.2 * SPAM)}
    assert len(train) + len(test) == len(truth) == HAM + SPAM
    assert sorted(truth["row_id"]) == list(range(HAM + SPAM))
    assert train["row_id"].is_unique
    # 5% of the rest keeps its gold label, per label
    rest = truth.set_index("row_id").loc[train["row_id"], "true_label"].value_counts()
    gold = train["label"].value_counts()
    for label in ("ham", "spam"):
        assert gold[label] == pytest.approx(0.05 * rest[label], abs=1)


def test_no_message_on_both_sides_of_the_test_split(demo):
    _, train, test, _ = demo
    train_norm, test_norm = set(normalise(train["text"])), set(normalise(test["text"]))
    assert not train_norm & test_norm
    # the collection does repeat messages, so the grouping is what keeps them apart
    assert normalise(test["text"]).duplicated().any() and normalise(train["text"]).duplicated().any()


def test_gold_rows_and_labels(demo):
    _, train, test, truth = demo
    true = truth.set_index("row_id")["true_label"]
    gold = train[train["label"].notna()]
    assert set(gold["label"]) == {"ham", "spam"}
    assert gold["label"].value_counts().min() >= MIN_GOLD_PER_CLASS
    assert all(type(v) is str for v in gold["label"]) and all(type(v) is str for v in test["label"])
    assert set(test["label"]) == {"ham", "spam"}
    assert (gold["label"].to_numpy() == true.loc[gold["row_id"]].to_numpy()).all()  # gold is the true label
    assert train["label"].isna().sum() == len(train) - len(gold)  # the rest: no label at all


def test_small_gold_fraction_keeps_a_few_of_each_class(tmp_path):
    spec = materialize_demo_text(DemoTextData(gold_fraction=0.002), tmp_path)
    gold = pd.read_parquet(spec.train_path)["label"].value_counts()
    assert gold["spam"] >= MIN_GOLD_PER_CLASS and gold["ham"] >= MIN_GOLD_PER_CLASS


def test_deterministic_written_once_and_keyed_by_settings(tmp_path):
    a = materialize_demo_text(DemoTextData(seed=3), tmp_path)
    b = materialize_demo_text(DemoTextData(seed=3), tmp_path / "again")
    assert a.train_path.parent.name == b.train_path.parent.name and a.seed == 3
    for x, y in ((a.train_path, b.train_path), (a.test_path, b.test_path)):
        pd.testing.assert_frame_equal(pd.read_parquet(x), pd.read_parquet(y))
    written = os.stat(a.train_path).st_mtime_ns
    assert materialize_demo_text(DemoTextData(seed=3), tmp_path) == a
    assert os.stat(a.train_path).st_mtime_ns == written  # found, not rewritten
    c = materialize_demo_text(DemoTextData(seed=4), tmp_path)
    assert c.train_path.parent != a.train_path.parent
    assert set(pd.read_parquet(c.test_path)["text"]) != set(pd.read_parquet(a.test_path)["text"])
    d = materialize_demo_text(DemoTextData(seed=3, gold_fraction=0.1), tmp_path)
    assert d.train_path.parent not in (a.train_path.parent, c.train_path.parent)


def test_demo_rules():
    assert 5 <= len(DEMO_RULES) <= 8
    assert len({r.name for r in DEMO_RULES}) == len(DEMO_RULES)
    for rule in DEMO_RULES:
        assert RuleConfig.model_validate(rule.model_dump()) == rule
        assert rule.kind in ("keywords", "regex") and rule.column == "text"
        assert rule.label in ("ham", "spam")
    assert {r.label for r in DEMO_RULES} == {"ham", "spam"}
