"""The Python API (flows/api.py): configs from a file, a dict or keywords; a real run's typed result; the
registered model loaded back for prediction."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import yaml

import weakflow as api  # the package is the API (flows/weakflow/__init__.py)
from weakflow.tasks.lib.config import ConfigError


def test_config_from_file_dict_and_keywords(tmp_path, monkeypatch):
    (tmp_path / "my.yaml").write_text(yaml.safe_dump({"weak_train": {"epochs": 7}, "tracking": {"workspace": "ws"}}))
    from_file = api.config(tmp_path / "my.yaml", full_train__epochs=9)
    assert (from_file.weak_train.epochs, from_file.full_train.epochs) == (7, 9)
    assert from_file.tracking.workspace == tmp_path / "ws"  # relative to the file's folder
    monkeypatch.chdir(tmp_path)
    from_dict = api.config({"weak_train": {"epochs": 3}, "tracking": {"workspace": "elsewhere"}},
                           overrides={"weak_train.method": "glc"})
    assert (from_dict.weak_train.epochs, from_dict.weak_train.method) == (3, "glc")
    assert from_dict.tracking.workspace == tmp_path / "elsewhere"
    assert api.config(from_dict, seed=5).seed == 5 and from_dict.seed == 0  # a copy; the original unchanged
    assert api.config().weak_train.epochs == api.config(None).weak_train.epochs != 3
    with pytest.raises(ConfigError, match=r"weak_train.epochs = -1"):
        api.config(weak_train__epochs=-1)
    with pytest.raises(ConfigError, match="weak_train.nonsense"):
        api.config({"weak_train": {"nonsense": 1}})
    mine = {"weak_train": {"epochs": 3}}
    assert api.config(mine, weak_train__epochs=5).weak_train.epochs == 5
    assert mine == {"weak_train": {"epochs": 3}}  # the caller's dict is left as it was
    with pytest.raises(ConfigError, match=r"setting 'seed.x': seed is a value, not a section"):
        api.config(overrides={"seed.x": 1})


def test_load_model_reads_the_registry_and_creates_none(tmp_path):
    from weakflow.deploy.registry import RegistryError

    cfg = api.config(tracking__workspace=str(tmp_path / "ws"))
    with pytest.raises(RegistryError, match="there is no MLflow registry at .* \\(no such file\\)"):
        api.load_model(cfg)
    assert not (tmp_path / "ws").exists()  # nothing written where only a read was asked for


def test_run_returns_what_it_registered_and_the_model_predicts_like_it(prefect_harness, tmp_path):
    from tests.conftest import FAST

    fast = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in FAST)}
    cfg = api.config(overrides=fast | {"tracking.workspace": str(tmp_path / "ws")})
    result = api.run(cfg)
    client = mlflow.MlflowClient(result.tracking_uri)
    mv = client.get_model_version(result.model_name, result.version)
    assert (result.version, result.alias) == ("1", "champion") and mv.run_id
    assert str(client.get_model_version_by_alias(result.model_name, "champion").version) == result.version
    assert client.get_run(result.run_id).data.metrics["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    assert mv.tags["shipped"] == result.shipped and [s for s, _ in result.summary][0] == "validate"
    from weakflow.tasks.lib.data import resolve_data_spec

    spec = resolve_data_spec(cfg)
    test = pd.read_parquet(spec.test_path)
    for model in (api.load_model(cfg), result.load_model(), api.load_model(cfg, version="1")):
        scored = model.predict(test)
        assert model.version == "1" and model.classes == list(range(10))
        assert (scored["prediction"].to_numpy() == test["label"].to_numpy()).mean() == \
            pytest.approx(result.metrics["test_accuracy"], abs=1e-9)
    from weakflow.deploy.registry import RegistryError
    from weakflow.tasks.lib.data import DataError

    with pytest.raises(RegistryError, match="no version '7'"):
        api.load_model(cfg, version="7")
    with pytest.raises(DataError, match=r"lacks input column\(s\) \['px_0'\]"):
        api.load_model(cfg).predict(test.drop(columns=["px_0"]))


def test_misuse_raises_the_documented_errors_with_a_clear_message(tmp_path):
    """Each raised TypeError, AttributeError or a silent choice before issue 26; nothing here needs a model."""
    with pytest.raises(ConfigError, match=r"overrides: expected a dict of dotted keys and values, e\.g\. "
                                          r"\{'weak_train.epochs': 20\}, found list \['a=1'\]"):
        api.config(overrides=["a=1"])
    with pytest.raises(ConfigError, match=r"overrides: every key is a dotted setting name"):
        api.config(overrides={("weak_train", "epochs"): 3})
    with pytest.raises(ConfigError, match=r"run: expected a Config \(from weakflow.config\(\.\.\.\)\) or "
                                          r"None, found str 'not a config'; .* pass weakflow.config\('not a config'\)"):
        api.run("not a config")
    with pytest.raises(ConfigError, match=r"load_model: expected a Config .* found dict"):
        api.load_model({"seed": 1})
    cfg = api.config(tracking__workspace=str(tmp_path / "ws"))
    with pytest.raises(ConfigError, match=r"give a model version or an alias, not both \(version '1', alias "
                                          r"'champion'\)"):
        api.load_model(cfg, version="1", alias="champion")
    with pytest.raises(ConfigError, match=r"alias '': expected the name of a registry alias .* serve.alias "
                                          r"\('champion'\)"):
        api.load_model(cfg, alias="")
    with pytest.raises(ConfigError, match=r"version '': expected a registered version number"):
        api.load_model(cfg, version="")
    assert not (tmp_path / "ws").exists()  # refused before the registry was looked at


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A registered tiny model (tests/tiny_model.py, no training) and a config that reads its registry."""
    from tests.tiny_model import register_tiny, use_registry

    uri = use_registry(tmp_path_factory.mktemp("api") / "registry")
    register_tiny("tiny", alias="champion")
    return api.config(tracking__tracking_uri=uri, tracking__model_name="tiny")


def test_model_predict_refuses_what_the_server_refuses_naming_column_and_row(tiny):
    import re
    import warnings

    import numpy as np

    from tests.tiny_model import FEATURES, frozen_split
    from weakflow.tasks.lib.data import DataError

    model = api.load_model(tiny)
    frame = frozen_split()
    assert (model.predict(frame)["prediction"] == frame["label"]).all()
    with pytest.raises(DataError, match=r"predict: expected a pandas DataFrame with the columns \['px_0', .* found "
                                        r"list \(pandas.DataFrame\(records\) makes one"):
        model.predict(frame.to_dict("records"))
    for value, shown in ((1e39, "1e+39"), (np.inf, "inf"), (-np.inf, "-inf"), (np.nan, "nan"), ("x", "'x'"),
                         (True, "True")):
        bad = frame.astype({"px_4": object})
        bad.loc[11, "px_4"] = value
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # refused by the check, not after numpy overflowed
            with pytest.raises(DataError, match=rf"predict: the frame's column 'px_4' row\(s\) \[11\] \(rows by "
                                                rf"position, counted from 0\): expected a finite number .*; found "
                                                rf"{re.escape(shown)}"):
                model.predict(bad)
    assert model.predict(frame.iloc[5:9])["prediction"].tolist() == frame["label"].iloc[5:9].tolist()
    assert model.predict(frame.astype({f: np.int64 for f in FEATURES}))["prediction"].tolist() == \
        frame["label"].tolist()  # integers are numbers
