"""`weakflow lfs` in-process on a hand-made CSV: the printed table against hand counts (Wilson interval
included), example rows, the MLflow run's logged table, --rows, --shards, numeric-only data, and one-line
errors for bad input; a pattern that would backtrack for ever and labelling functions that call sys.exit()."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from weakflow.flows.cli import main

HERE = "tests.model.test_lfs_command"
LONG = ("freedom is a state of mind, said the long message that goes on and on well past eighty characters "
        "of text")
TRAIN = pd.DataFrame({
    "text": ["Free entry in a weekly competition", "See you at home tonight",
             "CALL NOW to claim your prize 09061701461", LONG, "are you free later?", None, "Call  now please",
             "lol ok"],
    "amount": [120, 3, 500, 10, None, 50, 0, 1],
    "label": ["spam", "ham", "spam", "ham", None, None, "ham", None],  # gold rows 0, 1, 2, 3, 6
    "annotator": ["spam", "ham", None, "spam", "ham", None, "spam", "ham"],
})
CONFIG = f"""\
data:
  source: files
  train_path: train.csv
  test_path: test.csv
  text_columns: [text]
  feature_columns: [amount]
  weak_label_columns: [annotator]
  abstain: ""
weak_labels:
  rules:
    - {{name: free_words, kind: keywords, column: text, label: spam, keywords: [free, call now]}}
    - {{name: long_number, kind: regex, column: text, label: spam, pattern: '\\d{{5,}}'}}
    - {{name: big_amount, kind: threshold, column: amount, label: spam, above: 100}}
  labeling_functions: ["{HERE}:says_you_is_ham"]
tracking:
  workspace: ws
"""
# By hand (8 rows, gold 0-3 and 6). Votes: annotator 0 1 3 4 6 7; free_words 0 2 4 6 ("freedom" and a missing
# text never fire); long_number 2; big_amount 0 2 (row 4's amount is missing); says_you_is_ham 1 4.
# Overlap: rows where another source votes too; conflict: ...and votes another class (row 4: ham vs spam).
EXPECTED = {  # source: (votes for, coverage, overlap, conflict, votes, right, voted on gold)
    "annotator": ("ham, spam", 6 / 8, 4 / 8, 1 / 8, 6, 2, 4),  # wrong on 3 and 6
    "rule:free_words": ("spam", 4 / 8, 4 / 8, 1 / 8, 4, 2, 3),  # wrong on 6
    "rule:long_number": ("spam", 1 / 8, 1 / 8, 0.0, 1, 1, 1),
    "rule:big_amount": ("spam", 2 / 8, 2 / 8, 0.0, 2, 2, 2),
    "lf:says_you_is_ham": ("ham", 2 / 8, 2 / 8, 1 / 8, 2, 1, 1),
}


def says_you_is_ham(batch: pd.DataFrame) -> np.ndarray:
    """A labelling function over the raw text (which only a whole-row batch has)."""
    return np.where(batch["text"].str.contains(r"\byou\b", case=False, na=False), "ham", "")


def wilson(k: int, n: int) -> tuple[float, float]:
    """By the formula (z for 95%), not by the code under test."""
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame({"text": ["hi", "win cash"], "amount": [1, 300], "label": ["ham", "spam"]}).to_csv(
        tmp_path / "test.csv", index=False)
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    return tmp_path / "cfg.yaml"


def lfs(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["lfs", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def table_rows(out: str) -> dict[str, list[str]]:
    """The printed table's body rows, by source: the cells split on runs of 2+ spaces (an example block's
    heading, the source alone, is no table row)."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) > 1 and (cells[0] in EXPECTED or cells[0].startswith(("rule:", "lf:"))):
            rows[cells[0]] = cells[1:]
    return rows


def test_the_table_matches_hand_counts_and_the_mlflow_run_logs_it(config, capsys):
    code, out, err = lfs(capsys, "--config", str(config), "--examples", "3")
    assert code == 0, err
    assert out.startswith("5 source(s) applied to 8 rows of ")
    assert "(5 gold)" in out.splitlines()[0]
    rows = table_rows(out)
    for source, (polarity, coverage, overlap, conflict, votes, right, voted) in EXPECTED.items():
        low, high = wilson(right, voted)
        assert rows[source] == [polarity, f"{coverage:.3f}", f"{overlap:.3f}", f"{conflict:.3f}", str(votes),
                                f"{right}/{voted}", f"{right / voted:.3f} [{low:.3f}, {high:.3f}]"], source
    assert rows["rule:free_words"][-1] == "0.667 [0.208, 0.939]"  # 2 of 3, the interval written out once
    assert "examples (rows count from 0, the header not counted):" in out
    assert "    wrong  row 6: votes spam, gold ham: Call now please" in out  # whitespace runs made one space
    assert "    fires  row 2: votes spam, gold spam: CALL NOW to claim your prize 09061701461" in out
    assert f"    wrong  row 3: votes spam, gold ham: {LONG[:79]}…" in out  # 80 characters with the ellipsis
    assert "    fires  row 0: votes spam, gold spam: amount=120.0 | Free entry in a weekly competition" in out

    import mlflow

    uri = f"sqlite:///{(config.parent / 'ws' / 'mlflow.db').resolve()}"
    assert "logged to MLflow: experiment weakflow-lfs, run " in out and out.rstrip().endswith(f"({uri})")
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("weakflow-lfs").experiment_id
    (run,) = client.search_runs([experiment])
    logged = client.load_table(experiment, "lfs/sources.json", run_ids=[run.info.run_id]).set_index("source")
    for source, (polarity, coverage, overlap, conflict, votes, right, voted) in EXPECTED.items():
        row = logged.loc[source]
        assert (row["polarity"], row["votes"], row["gold_rows"], row["gold_correct"]) == (polarity, votes, voted, right)
        assert [row["coverage"], row["overlap"], row["conflict"]] == pytest.approx([coverage, overlap, conflict])
        assert [row["accuracy"], row["accuracy_low"], row["accuracy_high"]] == pytest.approx(
            [right / voted, *wilson(right, voted)])
    examples = client.load_table(experiment, "lfs/examples.json", run_ids=[run.info.run_id])
    wrong = examples[(examples["source"] == "rule:free_words") & (examples["kind"] == "wrong")]
    assert wrong[["row", "vote", "gold", "text"]].values.tolist() == [[6, "spam", "ham", "Call now please"]]
    assert run.data.metrics["rule_free_words.coverage"] == 0.5


def test_rows_applies_to_the_first_rows_only_and_no_log_logs_nothing(config, capsys):
    code, out, err = lfs(capsys, "--config", str(config), "--rows", "4", "--no-log")
    assert code == 0, err
    assert out.startswith("5 source(s) applied to 4 rows of ") and "(4 gold)" in out.splitlines()[0]
    rows = table_rows(out)
    assert rows["rule:free_words"][:6] == ["spam", "0.500", "0.500", "0.000", "2", "2/2"]  # rows 0 and 2
    assert rows["annotator"][4:6] == ["3", "2/3"]  # rows 0, 1, 3; wrong on 3
    assert "logged to MLflow" not in out and not (config.parent / "ws").exists()


def test_shards_give_the_same_table_and_examples(config):
    from weakflow.tasks.lib.config import load_config
    from weakflow.tasks.lfs import run_lfs

    cfg = load_config(config)
    one, two = run_lfs(cfg), run_lfs(cfg, shards=2)  # two spawned processes, four rows each
    assert two.shards == 2
    pd.testing.assert_frame_equal(one.table, two.table)
    pd.testing.assert_frame_equal(one.examples, two.examples)


def test_numeric_only_data(tmp_path, capsys):
    pd.DataFrame({"x1": [1, 6, 7, 2, 9], "x2": [-1.5, 2, -3, 4, -5], "y": [0, 1, 0, None, 1]}).to_csv(
        tmp_path / "train.csv", index=False)
    pd.DataFrame({"x1": [1, 2], "x2": [0, 0], "y": [0, 1]}).to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "cfg.yaml").write_text(
        "data: {source: files, train_path: train.csv, test_path: test.csv, feature_columns: [x1, x2], "
        "label_column: y}\n"
        "weak_labels:\n  rules: [{name: big_x1, kind: threshold, column: x1, label: 1, above: 5}]\n"
        f"  labeling_functions: ['{HERE}:negative_x2_is_zero']\n")
    code, out, err = lfs(capsys, "--config", str(tmp_path / "cfg.yaml"), "--no-log")
    assert code == 0, err
    assert "classes [0, 1], abstain -1" in out.splitlines()[0]  # the class set from the test file
    body = table_rows(out)
    # big_x1 votes 1 on rows 1, 2, 4 (gold 1, 0, 1); negative_x2 votes 0 on rows 0, 2, 4 (gold 0, 0, 1)
    assert body["rule:big_x1"][:6] == ["1", "0.600", "0.400", "0.400", "3", "2/3"]
    assert body["lf:negative_x2_is_zero"][:6] == ["0", "0.600", "0.400", "0.400", "3", "2/3"]
    assert "    wrong  row 2: votes 1, gold 0: x1=7 | x2=-3.0" in out


def negative_x2_is_zero(batch: pd.DataFrame) -> np.ndarray:
    return np.where(batch["x2"] < 0, 0, -1)


def raises(batch: pd.DataFrame) -> np.ndarray:
    raise ValueError("no good\nat all")


@pytest.mark.parametrize(("extra", "line"), [
    (["--set", "data.text_columns=[body]"], "has no column 'body' (named by data.text_columns)"),
    (["--set", "weak_labels.rules=[{name: t, kind: threshold, column: text, label: spam, above: 1}]"],
     "lfs: rule 't' (threshold) needs numbers in column 'text', which holds text values, not numbers"),
    (["--set", "weak_labels.rules=[{name: k, kind: keywords, column: label, label: spam, keywords: [spam]}]"],
     "lfs: rule 'k' reads column 'label', which is not an input column"),
    (["--set", "weak_labels.rules=[{name: k, kind: keywords, column: text, label: spma, keywords: [a]}]"],
     "lfs: rule 'k' votes 'spma', which is not a class (classes: ['ham', 'spam'])"),
    (["--set", f"weak_labels.labeling_functions=[{HERE}:raises]"],
     f"lfs: labelling function {HERE}:raises raised ValueError: no good at all"),
    (["--set", "data.train_path=DIR/broken.parquet"], "cannot read DIR/broken.parquet as parquet"),
    (["--set", "data.classes=[ham, eggs]", "--set", "weak_labels.rules=[]", "--set",
      "weak_labels.labeling_functions=[]"],
     ("lfs: data.label_column 'label' of DIR/train.csv holds 'spam' in row(s) [0, 2] (rows count from 0), outside "
      "the classes ['eggs', 'ham']")),
    (["--set", "data.feature_columns=[]", "--set", "data.weak_label_columns=[annotator, amount]", "--set",
      "weak_labels.rules=[]"],
     "lfs: data.weak_label_columns: vote column 'amount' holds 120.0, 3.0, 500.0, 10.0, 50.0"),
])
def test_bad_input_is_one_line_and_exit_1(config, capsys, extra, line):
    (config.parent / "broken.parquet").write_bytes(b"not parquet at all")
    here = str(config.parent)
    code, out, err = lfs(capsys, "--config", str(config), "--no-log", *(e.replace("DIR", here) for e in extra))
    line = line.replace("DIR", here)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and err.startswith("lfs: ") and line in err, err


def test_a_pattern_that_backtracks_for_ever_in_python_completes_in_seconds(config):
    """The issue's case: ``(a+)+$`` on forty a's and a b takes Python's re longer than the universe's age, inside C
    code that holds the GIL (the run ignored its time limit and SIGTERM). Rules run on RE2, in linear time. The real
    command runs in a subprocess so that a regression fails at the timeout instead of hanging the suite."""
    train = config.parent / "backtrack.csv"
    pd.DataFrame({"text": ["a" * 40 + "b", "aaaa", "hello"], "amount": [1, 2, 3], "label": ["ham", "spam", None],
                  "annotator": [None, None, None]}).to_csv(train, index=False)
    rule = "weak_labels.rules=[{name: runaway, kind: regex, column: text, label: spam, pattern: '(a+)+$'}]"
    done = subprocess.run([str(Path(sys.executable).parent / "weakflow"), "lfs", "--config", str(config), "--no-log",
                           "--set", f"data.train_path={train}", "--set", rule,
                           "--set", "weak_labels.labeling_functions=[]"],
                          capture_output=True, text=True, timeout=120, cwd=config.parent)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("2 source(s) applied to 3 rows of "), done.stdout
    low, high = wilson(1, 1)  # it fires on "aaaa" only (gold spam), not on the 41 characters ending in b
    assert table_rows(done.stdout)["rule:runaway"] == ["spam", "0.333", "0.000", "0.000", "1", "1/1",
                                                      f"1.000 [{low:.3f}, {high:.3f}]"]


@pytest.mark.parametrize(("source", "shards", "line"), [
    ("import sys\nsys.exit(0)\n\ndef vote(batch):\n    return ['ham'] * len(batch)\n", 1,
     "labelling function {m}:vote: importing {m} called sys.exit(0)"),
    ("import sys\n\ndef vote(batch):\n    sys.exit(0)\n", 1, "labelling function {m}:vote called sys.exit(0)"),
    ("import sys\n\ndef vote(batch):\n    sys.exit('bye')\n", 2, "labelling function {m}:vote called sys.exit('bye')"),
], ids=["exit-at-import", "exit-when-called", "exit-in-a-shard"])
def test_a_labelling_function_calling_sys_exit_is_one_line_and_exit_1(config, capsys, monkeypatch, source, shards,
                                                                     line):
    """sys.exit(0) in a labelling function's module or body made `lfs` exit 0 with nothing said: now exit 1 and
    one line naming the function (in spawned shard processes too)."""
    module = f"exiting_lf_{config.parent.name.replace('-', '_')}"  # fresh per test: nothing cached in sys.modules
    (config.parent / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(config.parent))
    code, out, err = lfs(capsys, "--config", str(config), "--no-log", "--shards", str(shards),
                         "--set", f"weak_labels.labeling_functions=[{module}:vote]")
    assert (code, out, err) == (1, "", f"lfs: {line.format(m=module)}\n")
