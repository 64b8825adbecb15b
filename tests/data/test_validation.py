"""The Great Expectations suite on the demo data and on each kind of bad data."""

import numpy as np
import pandas as pd
import pytest

from weakflow.data_checks.suite import DataValidationError, run_suite
from weakflow.tasks.lib.config import DemoData
from weakflow.tasks.lib.data import DataError, RawTables, class_set, materialize_demo, read_raw, read_table


@pytest.fixture(scope="module")
def spec(demo_root):
    return materialize_demo(DemoData(), demo_root)


def fresh(spec) -> RawTables:
    return read_raw(spec)


def failures(raw: RawTables, min_gold: int = 2) -> list[str]:
    report = run_suite(raw, class_set(raw), min_gold)
    assert report.success == (not report.failures)
    return [str(f) for f in report.failures]


def test_clean_demo_passes_with_data_docs(spec, tmp_path):
    report = run_suite(fresh(spec), list(range(10)), 2, tmp_path / "docs")
    assert report.success, report.summary()
    assert report.evaluated > 400  # every feature column is checked in train and test
    assert (tmp_path / "docs" / "index.html").is_file()
    assert set(report.result) == {"train", "test", "gold_per_class", "test_rows_in_training"}


def test_missing_column_is_named(spec):
    raw = fresh(spec)
    raw.train = raw.train.drop(columns=["px_7"])
    assert failures(raw) == ["train.px_7: expected the column to exist; found no such column"]


def test_nan_and_inf_features_are_located(spec):
    raw = fresh(spec)
    raw.train.loc[3, "px_5"] = np.nan
    raw.test.loc[4, "px_6"] = np.inf
    found = failures(raw)
    rows = " (data rows of the file, counted from 0)"
    assert "train.px_5: expected no missing (NaN) values; found 1 bad value(s), e.g. [nan] at row [3]" + rows in found
    assert "test.px_6: expected finite values (no inf); found 1 bad value(s), e.g. [inf] at row [4]" + rows in found


def test_label_outside_class_set(spec):
    raw = fresh(spec)
    gold_row = raw.train.index[raw.train["label"].notna()][0]
    raw.train.loc[gold_row, "label"] = 11
    raw.train.loc[raw.train["weak_label"] != -1, "weak_label"] = raw.train["weak_label"].where(raw.train.index != 900, 42)
    found = failures(raw)
    assert any(f.startswith("train.label: expected a class in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]") and "[11]" in f
               and f"row [{gold_row}]" in f for f in found), found
    assert any(f.startswith("train.weak_label: expected a class in") and "abstain value -1" in f and "[42]" in f
               for f in found), found


def test_empty_gold_split(spec):
    raw = fresh(spec)
    raw.train["label"] = pd.array([pd.NA] * len(raw.train), dtype="Int64")
    found = failures(raw)
    assert found == ["gold_per_class.gold_rows: expected at least 2 gold rows per class; "
                     "found 10 bad value(s), e.g. [0, 0, 0, 0, 0] at class [0, 1, 2, 3, 4]"]


def test_too_few_gold_rows_for_one_class(spec):
    raw = fresh(spec)
    raw.train.loc[raw.train["label"] == 3, "label"] = pd.NA
    assert failures(raw) == ["gold_per_class.gold_rows: expected at least 2 gold rows per class; "
                             "found 1 bad value(s), e.g. [0] at class [3]"]


def test_test_rows_duplicated_in_training(spec):
    raw = fresh(spec)
    features = spec.feature_columns
    raw.train.loc[[0, 1], features] = raw.test.loc[[5, 9], features].to_numpy()
    assert failures(raw) == ["test_rows_in_training.training_copies: expected no test row whose features equal a "
                             "training row's; found 2 bad value(s), e.g. [1, 1] at test row [5, 9] (data rows of the "
                             "file, counted from 0)"]


def test_empty_test_set_and_wrong_type(spec):
    raw = fresh(spec)
    raw.spec = raw.spec.model_copy(update={"classes": None})  # the class set comes from the test file
    raw.test = raw.test.iloc[:0]
    raw.train["px_3"] = raw.train["px_3"].astype(str)
    found = failures(raw)
    assert "test: expected at least 1 row; found 0" in found
    assert "train.px_3: expected a numeric column; found dtype object" in found
    # no class set can come from an empty test file: one failure says where it should come from, and no
    # label check against an empty set blames every training row
    assert [f for f in found if "class" in f] == [
        "class_set.classes: expected at least one class: labels (integers or names) in the test file's 'label' column, or "
        "data.classes; found 0"]
    assert not any(f.startswith("train.label") or f.startswith("gold_per_class") for f in found)


def test_a_test_file_without_its_label_column_is_one_failure_and_a_missing_column(spec):
    raw = fresh(spec)
    raw.spec = raw.spec.model_copy(update={"classes": None})
    raw.test = raw.test.drop(columns=["label"])
    found = failures(raw)
    assert "test.label: expected the column to exist; found no such column" in found
    assert len(found) == 2 and found[1].startswith("class_set.classes: expected at least one class")


def test_duplicate_column_names_are_refused_naming_the_file_and_column(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("px_5,px_6,px_5,label\n0,1,2,0\n0,3,4,1\n")
    with pytest.raises(DataError) as err:
        read_table(csv, "data.train_path")
    assert str(err.value) == (f"data.train_path: {csv} has duplicate column names ('px_5' at columns 1, 3; columns "
                              "count from 1); every column name must be unique")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "test.parquet"
    pq.write_table(pa.table([pa.array([1.0]), pa.array([0]), pa.array([1])], names=["a", "label", "label"]), parquet)
    with pytest.raises(DataError) as err:
        read_table(parquet, "data.test_path")
    assert str(err.value).startswith(f"data.test_path: {parquet} has duplicate column names ('label' at columns 2, 3")
    assert "\n" not in str(err.value)  # one line, no schema dump


def test_natural_repeats_of_discrete_rows_are_not_copies_but_planted_copies_are(tmp_path):
    """Eight survey answers on a 1-5 scale repeat by nature (a test row often equals some training row,
    as training rows equal each other); copied rows of continuous features stand out."""
    from weakflow.tasks.lib.config import FilesData

    rng = np.random.default_rng(0)
    answers = rng.integers(1, 4, size=(3000, 8)).astype(float)  # 3^8 = 6561 combinations: many repeats
    cols = [f"q{i}" for i in range(8)]
    train = pd.DataFrame(answers[:2400], columns=cols).assign(label=pd.array([0, 1] * 20 + [pd.NA] * 2360,
                                                                              dtype="Int64"))
    test = pd.DataFrame(answers[2400:], columns=cols).assign(label=rng.integers(0, 2, 600))
    spec = FilesData(train_path=tmp_path / "t.parquet", test_path=tmp_path / "s.parquet", feature_columns=cols)
    report = run_suite(RawTables(train, test, spec), [0, 1], 2)
    assert report.success, report.summary()
    assert len(report.notes) == 1 and "natural repeats of discrete features" in report.notes[0]
    assert "governance.repeated_rows" in report.notes[0]
    strict = run_suite(RawTables(train, test, spec), [0, 1], 2, repeated_rows="contamination")
    assert [f.table for f in strict.failures] == ["test_rows_in_training"]
    # continuous features: training rows never repeat, so 3 copied test rows are copies
    cont = pd.DataFrame(rng.normal(size=(3000, 8)), columns=cols)
    train_c = cont[:2400].assign(label=train["label"].to_numpy())
    train_c.loc[[5, 6, 7], cols] = cont.loc[[2400, 2401, 2402], cols].to_numpy()
    test_c = cont[2400:].reset_index(drop=True).assign(label=test["label"].to_numpy())
    found = [str(f) for f in run_suite(RawTables(train_c, test_c, spec), [0, 1], 2).failures]
    assert found == ["test_rows_in_training.training_copies: expected no test row whose features equal a training "
                     "row's; found 3 bad value(s), e.g. [1, 1, 1] at test row [0, 1, 2] (data rows of the file, "
                     "counted from 0)"]


def test_unreadable_files_name_field_and_path(tmp_path):
    broken = tmp_path / "train.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"data.train_path: cannot read {broken} as parquet"):
        read_table(broken, "data.train_path")
    with pytest.raises(DataError, match="does not exist"):
        read_table(tmp_path / "nope.csv", "data.test_path")
    with pytest.raises(DataError, match="expected .parquet, .pq or .csv"):
        read_table(tmp_path / "data.xlsx", "data.train_path")


def test_validation_error_lists_every_failure(spec):
    raw = fresh(spec)
    raw.train = raw.train.drop(columns=["px_1", "px_2"])
    report = run_suite(raw, list(range(10)), 2)
    err = DataValidationError(report)
    assert "train.px_1" in str(err) and "train.px_2" in str(err) and "2 of" in str(err)


def test_test_copies_are_found_whatever_the_dtype(spec):
    """A copy stored as float64 in training and float32 in test is still a copy (hashes normalise)."""
    raw = fresh(spec)
    features = spec.feature_columns
    raw.train[features] = raw.train[features].astype("float64")
    raw.train.loc[[3], features] = raw.test.loc[[7], features].to_numpy(dtype="float64")
    assert raw.test[features[0]].dtype == "float32"
    assert failures(raw) == ["test_rows_in_training.training_copies: expected no test row whose features equal a "
                             "training row's; found 1 bad value(s), e.g. [1] at test row [7] (data rows of the file, "
                             "counted from 0)"]


def text_tables(tmp_path) -> RawTables:
    from weakflow.tasks.lib.config import FilesData

    spec = FilesData(train_path=tmp_path / "train.parquet", test_path=tmp_path / "test.parquet", text_columns=["text"],
                     feature_columns=["n"], classes=["ham", "spam"], text_max_chars=50)
    train = pd.DataFrame({"text": [f"message number {i}" for i in range(40)], "n": np.arange(40.0),
                          "label": ["ham", "spam"] * 20})
    test = pd.DataFrame({"text": ["hello there", "win a prize"] * 3, "n": np.arange(6.0), "label": ["ham", "spam"] * 3})
    return RawTables(train, test, spec)


def test_text_columns_are_checked_naming_the_column_and_rows(tmp_path):
    raw = text_tables(tmp_path)
    assert failures(raw) == []
    raw.train.loc[[3, 9], "text"] = ["x" * 51, "y" * 120]  # beyond data.text_max_chars
    raw.train.loc[[5, 6, 7], "text"] = ""  # 3 of 40 empty: over the 5% allowed
    raw.test["text"] = np.arange(6)  # numbers where text belongs
    found = failures(raw)
    assert f"train.text: expected at most 50 characters (data.text_max_chars); found 2 bad value(s), e.g. " \
           f"['{'x' * 51}', '{'y' * 60}... (120 chars)'] at row [3, 9] (data rows of the file, counted from 0)" in found
    assert any(f.startswith("train.text: expected non-empty text on at least 95% of the rows; found 3 bad value(s)")
               and "at row [5, 6, 7]" in f for f in found), found
    assert "test.text: expected a text column; found dtype int64" in found
    assert len(found) == 3


def test_unknown_named_labels_are_named_with_their_column_and_values(tmp_path):
    raw = text_tables(tmp_path)
    raw.spec = raw.spec.model_copy(update={"weak_label_columns": ["annotator"], "abstain": "skip"})
    raw.train["annotator"] = ["ham", "skip"] * 20
    assert failures(raw) == []
    raw.train.loc[4, "label"] = "eggs"  # not a class
    raw.train.loc[7, "annotator"] = "Spam"  # names match exactly
    found = failures(raw)
    assert any(f.startswith("train.label: expected a class in ['ham', 'spam'] or empty (no gold label); found 1 bad "
                            "value(s), e.g. ['eggs'] at row [4]") for f in found), found
    assert any(f.startswith("train.annotator: ") and "['Spam'] at row [7]" in f for f in found), found


def test_unicode_disguised_copies_of_test_messages_fail_validation(tmp_path):
    """Six test messages copied into training, each disguised another way (full-width, zero-width spaces,
    soft hyphens, joiners, NFD, Cyrillic look-alikes): the test-copy expectation names all six test rows."""
    import unicodedata

    from weakflow.tasks.lib.config import FilesData

    spec = FilesData(train_path=tmp_path / "train.parquet", test_path=tmp_path / "test.parquet", text_columns=["text"],
                     classes=["ham", "spam"])
    messages = [f"Message number {w}: the café is open until late, see you at the résumé workshop"
                for w in ("one", "two", "three", "four", "five", "six", "seven", "eight")]
    inside = lambda t, mark: " ".join(w[:2] + mark + w[2:] if len(w) > 2 else w for w in t.split(" "))  # noqa: E731
    disguised = ["".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in messages[0]),
                 inside(messages[1], "\u200b"), inside(messages[2], "\u00ad"), inside(messages[3], "\u200d\u200c"),
                 unicodedata.normalize("NFD", messages[4]), messages[5].translate(str.maketrans("aceopxy", "асеорху"))]
    train = pd.DataFrame({"text": [f"training message {i} about something else entirely" for i in range(20)] + disguised,
                          "label": ["ham", "spam"] * 13})
    test = pd.DataFrame({"text": messages, "label": ["ham", "spam"] * 4})
    found = failures(RawTables(train, test, spec))
    assert len(found) == 1 and found[0].startswith("test_rows_in_training.training_copies: expected no test row whose "
                                                   "features equal a training row's; found 6 bad value(s)"), found
    assert "at test row [0, 1, 2, 3, 4]" in found[0], found  # the first five are shown


def _csv_config(tmp_path, train: pd.DataFrame, test: pd.DataFrame, *extra: str):
    """Write the two CSV files and a files-source config naming them (text, one weak column)."""
    from weakflow.tasks.lib.config import load_config

    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return load_config(None, ["data.source=files", f"data.train_path={tmp_path / 'train.csv'}",
                              f"data.test_path={tmp_path / 'test.csv'}", "data.text_columns=[text]",
                              "data.weak_label_columns=[moderator]", f"tracking.workspace={tmp_path / 'ws'}", *extra])


def _messages(n: int, start: int = 0) -> list[str]:
    return [f"message number {i} says something of its own" for i in range(start, start + n)]


@pytest.mark.parametrize("column, spelt", [("label", "Spam"), ("label", " spam "), ("moderator", "SPAM")])
def test_labels_that_differ_from_a_class_by_case_or_spaces_are_one_data_error(tmp_path, column, spelt):
    """Not read as that class (a vote silently lost) nor refused with an unexplained "not in the set": one
    line naming the file, the column, example rows and the classes expected."""
    from weakflow.tasks.validate import load_and_validate

    train = pd.DataFrame({"text": _messages(40), "label": ["ham", "spam"] * 10 + [None] * 20,
                          "moderator": ["ham", "spam", "skip", ""] * 10})
    train.loc[[3, 21], column] = spelt
    test = pd.DataFrame({"text": _messages(6, 100), "label": ["ham", "spam"] * 3})
    cfg = _csv_config(tmp_path, train, test, "data.abstain=skip", "data.classes=[ham, spam]")
    with pytest.raises(DataError) as exc:
        load_and_validate(cfg)
    text = str(exc.value)
    assert "\n" not in text and text.startswith(f"data.train_path {tmp_path / 'train.csv'} column {column!r}: 2 value(s) "
                                                "differ from the expected ['ham', 'spam'"), text
    assert f"{spelt!r} at row 3, {spelt!r} at row 21" in text and "only by case or surrounding spaces" in text


@pytest.mark.parametrize("voters", [[], ["data.weak_label_columns=[]", "weak_labels.labeling_functions=[my_lfs:vote]"]],
                         ids=["weak-column", "labelling-function-only"])
def test_an_abstain_value_among_the_test_files_labels_is_a_data_error(tmp_path, voters):
    """Classes taken from the test file: abstain ``ham`` would turn every ham vote into no vote, whether the
    votes come from a weak column or only from a labelling function (or rule)."""
    from weakflow.tasks.validate import load_and_validate

    train = pd.DataFrame({"text": _messages(20), "label": ["ham", "spam"] * 5 + [None] * 10,
                          "moderator": ["ham", "spam", ""] * 6 + ["", ""]})
    if voters:
        train = train.drop(columns="moderator")
    test = pd.DataFrame({"text": _messages(6, 100), "label": ["ham", "spam"] * 3})
    with pytest.raises(DataError) as exc:
        load_and_validate(_csv_config(tmp_path, train, test, "data.abstain=ham", *voters))
    assert str(exc.value).startswith("data.abstain 'ham' is the class 'ham' of the labels in column 'label' of "
                                     f"data.test_path {tmp_path / 'test.csv'}"), str(exc.value)


def test_integer_classes_with_a_text_abstain_value_pass_and_are_read_as_integers(tmp_path):
    """The README's shape: a CSV weak column of 0, 1 and ``skip`` is text to pandas; its 0 and 1 are the
    classes, and the weak labels the run builds from it are those votes (``skip`` and empty: no vote)."""
    from weakflow.tasks.lib.data import weak_votes
    from weakflow.tasks.lib.labeling import votes_matrix
    from weakflow.tasks.validate import load_and_validate

    moderator = ["0", "1", "skip", ""] * 10
    train = pd.DataFrame({"text": _messages(40), "label": [0, 1] * 10 + [None] * 20, "moderator": moderator})
    test = pd.DataFrame({"text": _messages(6, 100), "label": [0, 1] * 3})
    for classes in ("data.classes=[0, 1]", "data.classes=null"):  # declared, or the test file's labels
        data, report = load_and_validate(_csv_config(tmp_path, train, test, "data.abstain=skip", classes))
        assert report.success and data.classes == [0, 1], report.summary()
        votes = votes_matrix(weak_votes(data.train, data.spec, data.classes), ["moderator"], data.classes, "skip")
        assert votes[:, 0].tolist() == [0, 1, -1, -1] * 10
        assert data.provenance_counts() == {"gold": 20, "weak": 10, "unlabeled": 10}


def test_only_a_whole_integer_spelling_is_read_as_an_integer_class():
    """With integer classes a CSV cell spelling an integer is that integer; "+-5" or "--1" stay text (the
    suite then names them as values outside the class set) instead of ending validate with a traceback."""
    from weakflow.tasks.lib.data import as_class

    assert [as_class(v, integers=True) for v in ["3", " -1 ", "+2", "skip", "+-5", "--1", "٣", ""]] == \
        [3, -1, 2, "skip", "+-5", "--1", "٣", None]
