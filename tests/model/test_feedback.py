"""`weakflow feedback FILE` checks the whole file before storing anything: real prediction-log rows
answered by two real registered versions with different class sets (0-9 and 0-2), and the console
command on CSV and Parquet files. Rows in messages are data rows counted from 1."""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from weakflow.deploy.prediction_log import FEEDBACK, PredictionLog, make_engine
from weakflow.flows.cli import main
from tests.tiny_model import FEATURES, frozen_split, register_tiny, use_registry

HEADER = "request_id,row_index,label\n"
ROWS_NOTE = "rows are data rows counted from 1, the header not counted"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """v1 (classes 0-9) answered request r1 (3 rows); v2 (classes 0, 1, 2) answered r2 (2 rows)."""
    folder = tmp_path_factory.mktemp("feedback")
    uri = use_registry(folder / "registry")
    register_tiny("tiny", alias="champion")
    register_tiny("tiny", classes=[0, 1, 2])
    log_url = f"sqlite:///{folder / 'log.db'}"
    log = PredictionLog(log_url)
    x = frozen_split()[FEATURES].to_dict("records")
    log.put("r1", "tiny", "1", FEATURES, x[:3], [0, 1, 2], [0.9] * 3)
    log.put("r2", "tiny", "2", FEATURES, x[3:5], [0, 1], [0.9] * 2)
    log.close()
    assert log.written == 5
    return folder, uri, log_url


def stored(log_url: str) -> dict[tuple[str, int], int]:
    engine = make_engine(log_url)
    with engine.connect() as conn:
        rows = {(r, int(i)): int(label) for r, i, label in
                conn.execute(sa.select(FEEDBACK.c.request_id, FEEDBACK.c.row_index, FEEDBACK.c.label))}
    engine.dispose()
    return rows


@pytest.fixture()
def feedback(served, tmp_path, capsys):
    """Run the console command on a file; returns (exit code, stdout, stderr). The log starts without
    feedback each time."""
    folder, uri, log_url = served
    engine = make_engine(log_url)
    with engine.begin() as conn:
        conn.execute(FEEDBACK.delete())
    engine.dispose()

    def run(path) -> tuple[int, str, str]:
        code = main(["feedback", str(path), "--workspace", str(folder), "--tracking-uri", uri,
                     "--set", f"serve.prediction_log_url={log_url}"])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run, log_url


def csv(tmp_path, body: str, name: str = "labels.csv"):
    path = tmp_path / name
    path.write_text(body)
    return path


def test_a_valid_file_is_stored_exactly(feedback, tmp_path):
    run, log_url = feedback
    # r1 row 0 twice: the last label wins; "7" and " 2 " are integers; 2 is a class of v2
    path = csv(tmp_path, HEADER + "r1,0,3\nr1,1,9\nr1,2, 7\nr2,0,2\nr1,0,4\n")
    code, out, err = run(path)
    assert (code, err) == (0, "") and out.startswith("stored 4 feedback label(s) in ")
    assert stored(log_url) == {("r1", 0): 4, ("r1", 1): 9, ("r1", 2): 7, ("r2", 0): 2}


@pytest.mark.parametrize("rows, problem", [
    ("r1,0,3\nr1,1,2.5\n", "column 'label' row 2: '2.5' is not an integer class label"),
    ("r1,0,42\n", "column 'label' row 1: 42 is not a class of tiny v1 (its classes: 0-9)"),
    # 5 is a class of v1 but not of v2, which answered r2: each row is checked against its own version
    ("r1,0,5\nr2,1,5\n", "column 'label' row 2: 5 is not a class of tiny v2 (its classes: 0, 1, 2)"),
    ("r1,0,cat\n", "column 'label' row 1: 'cat' is not an integer class label"),
    ("r1,0,1\nr1,1,\n", "column 'label' row 2: empty; expected a class label"),
    ("r1,x,1\n", "column 'row_index' row 1: 'x'; expected an integer >= 0 (the record's position in its request)"),
    ("r1,-1,1\n", "column 'row_index' row 1: '-1'; expected an integer >= 0"),
    (",0,1\n", "column 'request_id' row 1: empty"),
    ("r1,0,1\nr9,0,1\n", "column 'request_id,row_index' row 2: no logged prediction for ('r9', 0)"),
])
def test_a_bad_value_is_named_and_nothing_is_stored(feedback, tmp_path, rows, problem):
    run, log_url = feedback
    code, out, err = run(csv(tmp_path, HEADER + rows))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    assert err.startswith(f"feedback: {tmp_path / 'labels.csv'}: 1 problem, nothing stored ({ROWS_NOTE}): "), err
    assert problem in err, err
    assert stored(log_url) == {}  # the good rows of the file were not stored either


@pytest.mark.parametrize("rows, problem", [
    # no version answered r9: its label cannot be judged, so the unknown key is the row's only problem
    # (a named label such as 'spam' used to add "'spam' is not an integer class label")
    ("r1,0,1\nr9,0,spam\n", "column 'request_id,row_index' row 2: no logged prediction for ('r9', 0)"),
    # an extra field is not shifted into the other columns (pandas made 'r1' the index of the first row)
    ("r1,0,3,oops\nr1,1,2\n", "row 1: one field too many: 4 fields, the header has 3 (request_id,row_index,label)"),
    ("r1,0,3\nr1,1,2,x,y\n", "row 2: 2 fields too many: 5 fields, the header has 3 (request_id,row_index,label)"),
    ("r1,0,3\nr1,1\n", "row 2: one field too few: 2 fields, the header has 3 (request_id,row_index,label)"),
    (",x,cat\n", "column 'request_id,row_index' row 1: request_id empty; row_index 'x'; expected an integer >= 0"),
])
def test_a_bad_row_is_one_problem(feedback, tmp_path, rows, problem):
    run, log_url = feedback
    code, out, err = run(csv(tmp_path, HEADER + rows))
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert f": 1 problem, nothing stored ({ROWS_NOTE}): {problem}" in err, err
    assert stored(log_url) == {}


def test_every_problem_of_a_file_is_listed_and_nothing_is_stored(feedback, tmp_path):
    run, log_url = feedback
    code, _, err = run(csv(tmp_path, HEADER + "r1,0,1\nr1,1,2.5\nr1,2,42\nr2,0,cat\nr2,1,2\n"))
    assert code == 1 and err.count("\n") == 1
    assert ": 3 problems, nothing stored" in err
    assert ("column 'label' row 2: '2.5' is not an integer class label; column 'label' row 3: 42 is not a class of "
            "tiny v1 (its classes: 0-9); column 'label' row 4: 'cat' is not an integer class label") in err
    assert stored(log_url) == {}


def test_a_header_only_or_empty_file_or_missing_column_is_one_line(feedback, tmp_path):
    run, log_url = feedback
    for body, message in ((HEADER, "no rows: only a header; expected one row per label "
                                   "(request_id,row_index,label); nothing stored"),
                          ("", "is empty; expected a header request_id,row_index,label and one row per label"),
                          ("request_id,row_index\nr1,0\n", "missing column(s) 'label': expected the columns "
                                                          "request_id,row_index,label; got request_id,row_index")):
        code, _, err = run(csv(tmp_path, body))
        assert (code, err) == (1, f"feedback: {tmp_path / 'labels.csv'}: {message}\n")
    assert stored(log_url) == {}


def test_a_parquet_file_is_checked_the_same_way(feedback, tmp_path):
    run, log_url = feedback
    path = tmp_path / "labels.parquet"
    pd.DataFrame({"request_id": ["r1", "r1"], "row_index": [0, 1], "label": [1.0, 2.5]}).to_parquet(path)
    code, _, err = run(path)
    assert code == 1 and "column 'label' row 2: 2.5 is not an integer class label" in err
    assert stored(log_url) == {}
    pd.DataFrame({"request_id": ["r1", "r1"], "row_index": [0, 1], "label": [1.0, 2.0]}).to_parquet(path)
    assert run(path)[0] == 0 and stored(log_url) == {("r1", 0): 1, ("r1", 1): 2}
