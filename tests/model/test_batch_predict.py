"""`weakflow predict`: a file scored in chunks through a real registered model (tests/tiny_model.py),
checked before scoring, written whole or not at all, logged to MLflow."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from weakflow.flows.cli import main
from weakflow.tasks.lib.data import DataError
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


# --- issue 26: the output is never the input; values the server refuses are refused; files it cannot read are
# --- one line; the model is named by a version or an alias, never both and never an empty one

TEXT_LIMIT = 50  # serve.max_text_chars in these tests (the default is 5,000)


def register_tiny_text(name: str) -> str:
    """A real text model (one number ``n`` and one text column ``text``, a fitted featuriser, an untrained
    linear layer) registered like :func:`tests.tiny_model.register_tiny` and made champion: the value
    checks are under test, not its accuracy."""
    import tempfile
    from pathlib import Path

    import torch

    from tests.tiny_model import ENTRY
    from weakflow.deploy.model import save_weights
    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.core.schema import InputSchema
    from weakflow.tasks.core.text import TextFeaturizer

    texts = pd.DataFrame({"text": ["free prize call now", "see you at lunch", "win cash now", "lunch at noon",
                                   "call me later", "prize draw winner"]})
    featurizer = TextFeaturizer.fit(texts, ["text"], dims=4)
    schema = InputSchema(["n"], ["text"], featurizer)
    spec = ModelSpec(kind="mlp", num_features=len(schema.names), num_classes=2, hidden=(), dropout=0.0)
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_name=f"tiny-{name}"):
        path = Path(tmp) / "model.pt"
        save_weights(path, build_model(spec).eval(), spec, schema, ["ham", "spam"])
        info = mlflow.pyfunc.log_model(name="model", python_model=str(ENTRY), artifacts={"weights": str(path)},
                                       pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    version = str(mlflow.register_model(info.model_uri, name).version)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


@pytest.fixture(scope="module")
def text_model(registry):
    mlflow.set_tracking_uri(registry[1])
    return register_tiny_text("tinytext")


def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_an_output_that_is_the_input_is_refused_and_the_input_is_left_as_it_was(registry, tmp_path, suffix, capsys):
    import os

    frame = rows(40)
    source = tmp_path / f"in.{suffix}"
    frame.to_parquet(source, index=False) if suffix == "parquet" else frame.to_csv(source, index=False)
    before, digest = source.read_bytes(), sha256(source)
    (tmp_path / f"link.{suffix}").symlink_to(source)
    os.link(source, tmp_path / f"hard.{suffix}")
    (tmp_path / "sub").mkdir()
    runs_before = len(mlflow.search_runs(experiment_names=["weakflow-predict"], output_format="list")) \
        if mlflow.get_experiment_by_name("weakflow-predict") else 0
    for target in (source, tmp_path / "sub" / ".." / f"in.{suffix}", tmp_path / f"link.{suffix}",
                   tmp_path / f"hard.{suffix}"):
        assert predict(registry, tmp_path, "--input", str(source), "--output", str(target)) == 1, target
        err = capsys.readouterr().err
        assert f"--output {target} is the input file {source}" in err and "Traceback" not in err, err
        assert source.read_bytes() == before, target  # byte for byte
    # the other way round: the input named through the link, the output the file itself
    assert predict(registry, tmp_path, "--input", str(tmp_path / f"link.{suffix}"), "--output", str(source)) == 1
    assert "is the input file" in capsys.readouterr().err and source.read_bytes() == before
    runs_after = len(mlflow.search_runs(experiment_names=["weakflow-predict"], output_format="list")) \
        if mlflow.get_experiment_by_name("weakflow-predict") else 0
    assert runs_after == runs_before  # a refused job logs nothing
    out = tmp_path / f"out.{suffix}"
    assert predict(registry, tmp_path, "--input", str(source), "--output", str(out)) == 0
    run = mlflow.search_runs(experiment_names=["weakflow-predict"], order_by=["start_time DESC"],
                             output_format="list")[0]
    assert run.data.params["input_sha256"] == digest != sha256(out)  # the input's hash, not the output's


@pytest.mark.parametrize("value", ["1e39", "-3.5e38"])  # finite in the file, not as float32 (inf was refused already)
def test_a_number_beyond_float32_is_refused_naming_column_and_row(registry, tmp_path, value, capsys):
    frame = rows(30).astype({"px_7": object})
    frame.loc[17, "px_7"] = value
    frame.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    with _no_runtime_warning():
        code = predict(registry, tmp_path, "--input", str(tmp_path / "in.csv"), "--output", str(out))
    err = capsys.readouterr().err
    assert code == 1 and not out.exists(), err
    assert f"{tmp_path / 'in.csv'} column 'px_7' row(s) [17] (data rows counted from 0): expected a finite number" \
        in err and "Traceback" not in err, err
    frame.astype({"px_7": float}).to_parquet(tmp_path / "in.parquet", index=False)  # float64 in the file
    assert predict(registry, tmp_path, "--input", str(tmp_path / "in.parquet"), "--output", str(out)) == 1
    assert "column 'px_7' row(s) [17]" in capsys.readouterr().err and not out.exists()


class _no_runtime_warning:
    """The refusal comes from a check, not from numpy overflowing on the way (no RuntimeWarning printed)."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.seen = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        self._catch.__exit__(*exc)
        assert not [w for w in self.seen if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in self.seen]


def test_an_over_long_text_is_refused_as_the_server_refuses_it(registry, text_model, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app
    from weakflow.flows import api

    ok = "x" * TEXT_LIMIT
    frame = pd.DataFrame({"n": [1.0, 2.0, 3.0, 4.0], "text": ["win a prize", ok, "y" * (TEXT_LIMIT + 1), "lunch"]})
    frame.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    args = ["predict", "--tracking-uri", registry[1], "--workspace", str(tmp_path / "ws"), "--set",
            "tracking.model_name=tinytext", "--set", f"serve.max_text_chars={TEXT_LIMIT}"]
    assert main([*args, "--input", str(tmp_path / "in.csv"), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'in.csv'} column 'text' row(s) [2] (data rows counted from 0): expected at most " \
           f"{TEXT_LIMIT} characters (serve.max_text_chars); found {TEXT_LIMIT + 1} characters" in err, err
    assert not out.exists()
    cfg = api.config(tracking__tracking_uri=registry[1], tracking__model_name="tinytext",
                     serve__max_text_chars=TEXT_LIMIT)
    model = api.load_model(cfg)
    with pytest.raises(DataError, match=r"column 'text' row\(s\) \[2\] .*: expected at most 50 characters "
                                        r"\(serve.max_text_chars\)"):
        model.predict(frame)
    app = create_app("tinytext", poll_seconds=0, log_url=f"sqlite:///{tmp_path / 'log.db'}",
                     max_text_chars=cfg.serve.max_text_chars)
    with TestClient(app) as client:  # the server, on the same rows: the same one refused
        r = client.post("/predict", json={"records": frame.to_dict("records")})
        assert r.status_code == 422 and [d["field"] for d in r.json()["detail"]] == ["records[2].text"], r.text
        kept = frame.drop(index=2)
        r = client.post("/predict", json={"records": kept.to_dict("records")})
        assert r.status_code == 200, r.text
    served = [p["class"] for p in r.json()["predictions"]]
    assert model.predict(kept)["prediction"].tolist() == served  # within the limit: scored, the same classes
    kept.to_csv(tmp_path / "kept.csv", index=False)
    assert main([*args, "--input", str(tmp_path / "kept.csv"), "--output", str(out)]) == 0
    assert pd.read_csv(out)["prediction"].tolist() == served
    missing = frame.assign(text=["a", None, "b", "c"])
    with pytest.raises(DataError, match=r"column 'text' row\(s\) \[1\] .*: expected text; found an empty cell"):
        model.predict(missing)


def test_an_empty_or_non_utf8_csv_is_one_line(registry, tmp_path, capsys):
    out = tmp_path / "out.csv"
    (tmp_path / "empty.csv").write_bytes(b"")
    assert predict(registry, tmp_path, "--input", str(tmp_path / "empty.csv"), "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert f"predict --input: cannot read {tmp_path / 'empty.csv'} as csv: the file is empty" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the line, then "nothing written"
    frame = rows(30)
    text = frame.to_csv(index=False).encode()
    (tmp_path / "latin1.csv").write_bytes(text + b"1,2,3\xe9\n")  # a Latin-1 byte in the last row
    assert predict(registry, tmp_path, "--input", str(tmp_path / "latin1.csv"), "--output", str(out)) == 1
    err = capsys.readouterr().err
    assert f"predict --input: cannot read {tmp_path / 'latin1.csv'} as csv: UnicodeDecodeError: line 32 (byte " \
           f"{len(text) + 5:,} of the file) holds the byte 0xe9, which is not UTF-8; expected UTF-8 text" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2
    (tmp_path / "header.csv").write_bytes("px_\xe9,px_1\n".encode("latin-1") + b"1,2\n")
    assert predict(registry, tmp_path, "--input", str(tmp_path / "header.csv"), "--output", str(out)) == 1
    assert "UnicodeDecodeError" in capsys.readouterr().err and not out.exists()


def test_an_empty_alias_is_refused_not_read_as_the_default(registry, tmp_path, capsys):
    rows(20).to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "out.parquet"
    assert predict(registry, tmp_path, "--input", str(tmp_path / "in.parquet"), "--output", str(out), "--alias", "") == 2
    err = capsys.readouterr().err
    assert "alias '': expected the name of a registry alias" in err and "Traceback" not in err and not out.exists()
    assert predict(registry, tmp_path, "--input", str(tmp_path / "in.parquet"), "--output", str(out),
                   "--version", " ") == 2
    assert "version ' ': expected a registered version number" in capsys.readouterr().err and not out.exists()
