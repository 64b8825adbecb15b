import numpy as np
import pandas as pd
import pytest

from weakflow.tasks.lib.labeling import (
    LabelingFunctionError,
    apply_labeling_functions,
    load_labeling_function,
    votes_matrix,
)

HERE = "tests.code.test_labeling"
CLASSES = [3, 7, 9]  # class values, deliberately not 0..C-1
NOT_CALLABLE = 42
CALLS: list[int] = []  # batch sizes seen by counting_lf


def big_x_is_nine(batch: pd.DataFrame) -> np.ndarray:
    return np.where(batch["x"] > 5, 9, -1)


def small_x_is_three(batch: pd.DataFrame) -> pd.Series:
    # A Series with a shuffled index: positions, not labels, must count.
    out = pd.Series(np.where(batch["x"] < 2, 3, -1), index=batch.index[::-1])
    return out


def counting_lf(batch: pd.DataFrame) -> list[int]:
    CALLS.append(len(batch))
    return [7] * len(batch)


def boom(batch: pd.DataFrame) -> np.ndarray:
    raise KeyError("no column 'y'")


def says_five(batch: pd.DataFrame) -> np.ndarray:
    return np.where(batch["x"] == 4, 5, -1)


def says_nan(batch: pd.DataFrame) -> np.ndarray:
    return np.where(batch["x"] == 4, np.nan, 9.0)


def says_half(batch: pd.DataFrame) -> np.ndarray:
    return np.where(batch["x"] == 4, 3.5, 3.0)


def says_whole_floats(batch: pd.DataFrame) -> np.ndarray:
    return np.where(batch["x"] == 4, -1.0, 9.0)


def says_none(batch: pd.DataFrame) -> list:
    return [None if x == 4 else 7 for x in batch["x"]]


def says_text(batch: pd.DataFrame) -> list:
    return ["seven"] * len(batch)


def says_bool(batch: pd.DataFrame) -> np.ndarray:
    return np.ones(len(batch), dtype=bool)


def too_short(batch: pd.DataFrame) -> np.ndarray:
    return np.full(len(batch) - 1, 9)


class Holder:
    @staticmethod
    def nested(batch: pd.DataFrame) -> np.ndarray:
        return np.full(len(batch), 3)


@pytest.fixture()
def frame() -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(10)}, index=[f"r{i}" for i in range(10)])


def test_load_valid_refs():
    assert load_labeling_function(f"{HERE}:big_x_is_nine") is big_x_is_nine
    assert load_labeling_function(f"{HERE}:Holder.nested") is Holder.nested
    assert callable(load_labeling_function("weakflow.tasks.lib.example_lfs:empty_center_is_zero"))


@pytest.mark.parametrize(
    ("ref", "match"),
    [
        ("tests.code.test_labeling.big_x_is_nine", "must look like 'module.path:function'"),
        (":big_x_is_nine", "must look like"),
        (f"{HERE}:", "must look like"),
        ("a:b:c", "must look like"),
        ("tests.code.no_such_module:f", r"module not found \(No module named 'tests.code.no_such_module'\)"),
        (f"{HERE}:no_such_function", "has no attribute 'no_such_function'"),
        (f"{HERE}:NOT_CALLABLE", r"NOT_CALLABLE is not callable \(it is an? int\)"),
    ],
)
def test_load_errors_name_the_ref(ref, match):
    with pytest.raises(LabelingFunctionError, match=match) as info:
        load_labeling_function(ref)
    assert ref in str(info.value)
    assert isinstance(info.value, ValueError)


def test_apply_happy_path_with_abstain(frame):
    refs = [f"{HERE}:big_x_is_nine", f"{HERE}:small_x_is_three", f"{HERE}:Holder.nested"]
    out = apply_labeling_functions(frame, refs, CLASSES, abstain=-1)
    assert list(out.columns) == ["lf:big_x_is_nine", "lf:small_x_is_three", "lf:Holder.nested"]
    assert out.index.equals(frame.index)
    assert (out.dtypes == np.int64).all()
    assert out["lf:big_x_is_nine"].tolist() == [-1] * 6 + [9] * 4
    assert out["lf:small_x_is_three"].tolist() == [3, 3] + [-1] * 8
    assert out["lf:Holder.nested"].tolist() == [3] * 10


def test_batching_gives_the_same_result(frame):
    refs = [f"{HERE}:big_x_is_nine", f"{HERE}:small_x_is_three"]
    whole = apply_labeling_functions(frame, refs, CLASSES, abstain=-1)
    for batch_size in (1, 3, 4, 10, 1000):
        pd.testing.assert_frame_equal(apply_labeling_functions(frame, refs, CLASSES, -1, batch_size=batch_size), whole)
    CALLS.clear()
    apply_labeling_functions(frame, [f"{HERE}:counting_lf"], CLASSES, -1, batch_size=4)
    assert CALLS == [4, 4, 2]


def test_shared_function_names_use_the_full_ref(frame):
    from weakflow.tasks.lib.labeling import _column_names

    refs = [f"{HERE}:big_x_is_nine", "tests.code.other:big_x_is_nine"]  # naming only: nothing is imported

    assert _column_names(refs) == [f"lf:{refs[0]}", f"lf:{refs[1]}"]
    with pytest.raises(LabelingFunctionError, match="listed twice"):
        apply_labeling_functions(frame, [refs[0], refs[0]], CLASSES, -1)


def test_lf_that_raises_is_wrapped_and_chained(frame):
    with pytest.raises(LabelingFunctionError, match=rf"labelling function {HERE}:boom raised KeyError") as info:
        apply_labeling_functions(frame, [f"{HERE}:boom"], CLASSES, -1)
    assert isinstance(info.value.__cause__, KeyError)
    assert "no column 'y'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("says_five", "5"),
        ("says_nan", "nan"),
        ("says_half", "3.5"),
        ("says_none", "None"),
        ("says_text", "'seven'"),
        ("says_bool", "True"),
    ],
)
def test_out_of_set_values_are_named(frame, name, shown):
    with pytest.raises(LabelingFunctionError) as info:
        apply_labeling_functions(frame, [f"{HERE}:{name}"], CLASSES, -1)
    message = str(info.value)
    assert f"{HERE}:{name}" in message
    assert f"outside the label set: {shown}" in message
    assert "[3, 7, 9] or abstain -1" in message


def test_integral_floats_are_accepted(frame):
    out = apply_labeling_functions(frame, [f"{HERE}:says_whole_floats"], CLASSES, -1)
    assert out["lf:says_whole_floats"].dtype == np.int64
    assert out["lf:says_whole_floats"].tolist() == [9] * 4 + [-1] + [9] * 5


def test_wrong_length_is_named(frame):
    with pytest.raises(LabelingFunctionError, match=rf"{HERE}:too_short returned shape \(3,\) for a batch of 4 rows"):
        apply_labeling_functions(frame, [f"{HERE}:too_short"], CLASSES, -1, batch_size=4)


def test_votes_matrix_maps_values_to_indices():
    frame = pd.DataFrame({
        "a": [9, 3, -1, 7],
        "b": [np.nan, 7.0, 9.0, 3.0],  # NaN = abstain
        "c": pd.Series([None, 3, None, 9], dtype=object),
        "d": pd.array([pd.NA, 7, 7, -1], dtype="Int64"),
    })
    votes = votes_matrix(frame, ["a", "b", "c", "d"], CLASSES, abstain=-1)
    assert votes.dtype == np.int64
    assert votes.tolist() == [
        [2, -1, -1, -1],
        [0, 1, 0, 1],
        [-1, 2, -1, 1],
        [1, 0, 2, -1],
    ]
    # Classes listed out of order: the index is the position in ``classes``.
    assert votes_matrix(frame, ["a"], [9, 7, 3], abstain=-1)[:, 0].tolist() == [0, 2, -1, 1]


def test_votes_matrix_errors():
    frame = pd.DataFrame({"a": [3, 4], "b": [3.0, 3.5], "c": ["3", 3]})
    with pytest.raises(ValueError, match=r"vote column 'a' holds 4"):
        votes_matrix(frame, ["a"], CLASSES, -1)
    with pytest.raises(ValueError, match=r"vote column 'b' holds 3.5"):
        votes_matrix(frame, ["b"], CLASSES, -1)
    with pytest.raises(ValueError, match=r"vote column 'c' holds '3'"):
        votes_matrix(frame, ["c"], CLASSES, -1)
    with pytest.raises(ValueError, match="'z' is not in the frame"):
        votes_matrix(frame, ["z"], CLASSES, -1)
    with pytest.raises(ValueError, match="abstain value 3 is also a class"):
        votes_matrix(frame, ["a"], CLASSES, 3)


def test_example_lfs_beat_chance_on_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data, columns=[f"px_{i}" for i in range(64)])
    refs = ["weakflow.tasks.lib.example_lfs:ink_heavy_is_eight", "weakflow.tasks.lib.example_lfs:empty_center_is_zero"]
    out = apply_labeling_functions(frame, refs, list(range(10)), abstain=-1, batch_size=500)
    for column, digit in [("lf:ink_heavy_is_eight", 8), ("lf:empty_center_is_zero", 0)]:
        fired = out[column].to_numpy() != -1
        assert 0.01 < fired.mean() < 0.6, (column, fired.mean())
        assert (out[column].to_numpy()[fired] == digit).all()
        assert (digits.target[fired] == digit).mean() > 0.5, column


EXITS_AT_IMPORT = "import sys\nsys.exit(0)\n\ndef vote(batch):\n    return [3] * len(batch)\n"
EXITS_WHEN_CALLED = "import sys\n\ndef vote(batch):\n    sys.exit(0)\n"
RAISES_WHEN_CALLED = "def vote(batch):\n    raise RuntimeError('table\\nmissing')\n"


@pytest.mark.parametrize(("source", "line"), [
    (EXITS_AT_IMPORT, "labelling function {m}:vote: importing {m} called sys.exit(0)"),
    (EXITS_WHEN_CALLED, "labelling function {m}:vote called sys.exit(0)"),
    (RAISES_WHEN_CALLED, "labelling function {m}:vote raised RuntimeError: table missing"),
], ids=["exit-at-import", "exit-when-called", "raises"])
def test_sys_exit_or_an_error_in_user_code_is_an_lf_error_naming_it(tmp_path, monkeypatch, source, line):
    """A module or function calling sys.exit(0) would end the run with exit 0 and nothing said: it is a
    labelling-function error naming the function, on one line, like any exception it raises — both where
    ``weakflow lfs`` applies the sources and where the pipeline's weak_labels stage does (make_weak_labels)."""
    from weakflow.tasks.lib.config import FilesData, load_config
    from weakflow.tasks.lib.data import RawTables, assemble
    from weakflow.tasks.weak_labels import make_weak_labels

    module = f"user_lfs_{tmp_path.name.replace('-', '_')}"  # a fresh module name: nothing cached in sys.modules
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = line.format(m=module)
    frame = pd.DataFrame({"x": np.arange(10.0)})
    with pytest.raises(LabelingFunctionError) as info:
        apply_labeling_functions(frame, [f"{module}:vote"], CLASSES, -1)
    assert str(info.value) == expected

    spec = FilesData(train_path="t.csv", test_path="s.csv", feature_columns=["x"], label_column="y")
    train = pd.DataFrame({"x": np.arange(8.0), "y": [0, 0, 1, 1, None, None, None, None]})
    data = assemble(RawTables(train, pd.DataFrame({"x": [9.0, 10.0], "y": [0, 1]}), spec), [0, 1])
    with pytest.raises(LabelingFunctionError) as info:
        make_weak_labels(data, load_config(None, [f"weak_labels.labeling_functions=[{module}:vote]"]))
    assert str(info.value) == expected


def test_a_module_in_the_working_directory_loads_without_pythonpath(tmp_path, monkeypatch):
    """The README's ``my_lfs.py`` beside the config: the console script does not put the working directory on
    sys.path, so without this a first-time user's ``my_lfs:vote`` is "module not found". A module that is in
    neither place still is, and the message says where it was looked for."""
    import sys

    module = f"cwd_lfs_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text("def vote(batch):\n    return [3] * len(batch)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    out = apply_labeling_functions(pd.DataFrame({"x": np.arange(4.0)}), [f"{module}:vote"], CLASSES, -1)
    assert out.iloc[:, 0].tolist() == [3, 3, 3, 3]
    with pytest.raises(LabelingFunctionError, match=f"working directory {tmp_path}"):
        load_labeling_function("no_such_module_here_at_all:vote")
