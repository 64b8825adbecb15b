"""`weakflow predict`: a file scored in chunks through a real registered model (tests/tiny_model.py),
checked before scoring, written whole or not at all, logged to MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from weakflow.flows.cli import main
from tests.tiny_model import CLASSES, FEATURES, frozen_split, register_tiny, use_registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """v1 (every class right, champion) and v2 (classes 0-4 right)."""
    folder = tmp_path_factory.mktemp("predict")
    uri = use_registry(folder / "registry")
    register_tiny("tiny", alias="champion")
    register_tiny("tiny", correct_classes=5)
    return folder, uri


def rows(n: int) -> pd.DataFrame:
    """``n`` rows of the frozen split's kind, with a row_id that is not the position."""
    base = frozen_split(rows_per_class=(n + 9) // 10).iloc[:n].reset_index(drop=True)
    return base.assign(row_id=np.arange(n) * 7 + 1000)


def predict(registry, tmp_path, *args: str) -> int:
    folder, uri = registry
    return main(["predict", "--tracking-uri", uri, "--workspace", str(tmp_path / "ws"),
                 "--set", "tracking.model_name=tiny", *args])


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_scores_in_chunks_what_the_model_scores_at_once(registry, tmp_path, suffix, capsys):
    frame = rows(2_503)
    source = tmp_path / f"in.{suffix}"
    frame.to_parquet(source, index=False) if suffix == "parquet" else frame.to_csv(source, index=False)
    out = tmp_path / f"out.{suffix}"
    assert predict(registry, tmp_path, "--input", str(source), "--output", str(out), "--chunk-rows", "1000") == 0
    scored = pd.read_parquet(out) if suffix == "parquet" else pd.read_csv(out)
    whole = mlflow.pyfunc.load_model("models:/tiny/1").predict(frame[FEATURES])
    assert scored["row_id"].tolist() == frame["row_id"].tolist()
    assert scored["prediction"].tolist() == whole["prediction"].tolist() == frame["label"].tolist()
    assert np.allclose(scored[[f"prob_{c}" for c in CLASSES]], whole[[f"prob_{c}" for c in CLASSES]], atol=1e-6)
    assert "scored 2503 rows" in capsys.readouterr().out
    run = mlflow.search_runs(experiment_names=["weakflow-predict"], order_by=["start_time DESC"],
                             output_format="list")[0]
    assert run.data.metrics["rows"] == 2503 and run.data.params["model_version"] == "1"
    assert len(run.data.params["input_sha256"]) == 64 and run.data.metrics["seconds"] > 0


def test_version_and_alias_choose_the_model_and_rows_without_ids_are_numbered(registry, tmp_path):
    frame = rows(100).drop(columns=["row_id"])
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    assert predict(registry, tmp_path, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "v2.parquet"),
                   "--version", "2") == 0
    v2 = pd.read_parquet(tmp_path / "v2.parquet")
    assert v2["row_id"].tolist() == list(range(100))
    assert (v2["prediction"] == frame["label"]).mean() == pytest.approx(0.5)  # v2 gets classes 0-4 right
    assert predict(registry, tmp_path, "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "c.parquet"),
                   "--alias", "champion") == 0
    assert (pd.read_parquet(tmp_path / "c.parquet")["prediction"] == frame["label"]).all()


def test_bad_input_is_one_line_and_writes_nothing(registry, tmp_path, capsys):
    out = tmp_path / "out.parquet"
    frame = rows(300)
    frame.drop(columns=["px_3"]).to_parquet(tmp_path / "missing.parquet", index=False)
    assert predict(registry, tmp_path, "--input", str(tmp_path / "missing.parquet"), "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert "lacks input column(s) ['px_3']" in err and "tiny version 1" in err and "Traceback" not in err
    bad = frame.astype({"px_5": object})
    bad.loc[250, "px_5"] = "n/a"  # in the third chunk of 100: two chunks were scored before it
    bad.to_csv(tmp_path / "bad.csv", index=False)
    earlier = tmp_path / "earlier.csv"  # an earlier job's output: a failed job must leave it as it was
    earlier.write_text("row_id,prediction\n1,3\n")
    assert predict(registry, tmp_path, "--input", str(tmp_path / "bad.csv"), "--output", str(earlier),
                   "--chunk-rows", "100") == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad.csv'} column 'px_5' row(s) [250]" in err and "expected a finite number" in err
    assert earlier.read_text() == "row_id,prediction\n1,3\n" and not list(tmp_path.glob(".earlier.csv*"))
    assert not out.exists()
    frame.astype({"px_0": str}).to_parquet(tmp_path / "typed.parquet", index=False)
    assert predict(registry, tmp_path, "--input", str(tmp_path / "typed.parquet"), "--output", str(out)) == 1
    assert "column 'px_0': expected numbers; found type string" in capsys.readouterr().err
    assert predict(registry, tmp_path, "--input", str(tmp_path / "missing.parquet"), "--output", str(out),
                   "--version", "9") == 1
    assert "Traceback" not in capsys.readouterr().err
