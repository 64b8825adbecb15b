import subprocess
import sys
from pathlib import Path

import pytest

from weakflow.flows.cli import build_parser, main
from weakflow.tasks.lib.config import Config, ConfigError, FilesData, load_config


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.data.source == "demo" and cfg.data.noise.rate == 0.4 and cfg.data.gold_fraction == 0.1
    assert cfg.weak_train.method == "anchored" and cfg.weak_labels.aggregation == "gold_anchored"
    assert cfg.selection.folds == 3 and cfg.selection.ship == "best"


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["weak_train.epochs=7", "data.noise.kind=pairflip", "weak_train.hidden=[32, 16]"])
    assert cfg.weak_train.epochs == 7
    assert cfg.data.noise.kind == "pairflip"
    assert cfg.weak_train.hidden == [32, 16]


def test_errors_name_key_value_and_expectation():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["weak_train.epochs=abc", "gates.min_accuracy=2", "weak_trian.epochs=3"])
    text = str(exc.value)
    assert "weak_train.epochs = 'abc': Input should be a valid integer" in text
    assert "gates.min_accuracy = 2: Input should be less than or equal to 1" in text
    assert "weak_trian = {'epochs': 3}: Extra inputs are not permitted" in text


def test_a_setting_of_either_kind_gets_one_line_with_both_expectations():
    assert load_config(None, ["selection.refits=2"]).selection.refits == 2
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["selection.refits=0"])
    lines = str(exc.value).splitlines()[1:]
    assert lines == ["  - selection.refits = 0: Input should be 'auto' or Input should be greater than or equal to 1"]
    with pytest.raises(ConfigError) as exc:  # a key of the user's that looks like a branch's name stays in
        load_config(None, ["weak-train.epochs=3"])
    assert "  - weak-train = {'epochs': 3}: Extra inputs are not permitted" in str(exc.value)


def test_files_source_requires_its_fields(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.test_path = <missing>: Field required"):
        load_config(None, ["data.source=files", "data.train_path=a.csv", "data.feature_columns=[x]"])
    cfg = load_config(None, ["data.source=files", "data.train_path=a.csv", "data.test_path=b.csv",
                             "data.feature_columns=[x, y]", "data.weak_label_columns=[w1, w2]"])
    assert isinstance(cfg.data, FilesData) and cfg.data.weak_label_columns == ["w1", "w2"]
    with pytest.raises(ConfigError, match="columns used twice"):
        load_config(None, ["data.source=files", "data.train_path=a.csv", "data.test_path=b.csv",
                           "data.feature_columns=[x, label]"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("weak_train: [1, 2\n")
    with pytest.raises(ConfigError, match=f"config file {bad} is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listy)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["weak_train.epochs"])


def test_yaml_round_trip(tmp_path):
    from weakflow.tasks.lib.config import dump_config

    cfg = load_config(None, ["pseudo_label.threshold=0.7"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    loaded = load_config(path)
    assert isinstance(loaded, Config)
    # every setting survives; the relative workspace now means "beside the file"
    assert loaded.tracking.workspace == tmp_path / "weakflow-workspace"
    assert loaded.model_copy(update={"tracking": cfg.tracking}) == cfg


def test_paths_in_a_config_file_are_relative_to_that_file_and_errors_show_them_whole(tmp_path, monkeypatch):
    from weakflow.tasks.lib.data import DataError, read_raw

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "my.yaml").write_text("data:\n  source: files\n  train_path: data/train.csv\n  test_path: /abs/test.csv\n"
                                    "  feature_columns: [a]\n")
    monkeypatch.chdir(tmp_path)  # not the file's folder
    cfg = load_config(folder / "my.yaml", ["data.unlabeled_path=pool.parquet"])
    assert cfg.data.train_path == folder / "data" / "train.csv"  # beside the file, not the current folder
    assert str(cfg.data.test_path) == "/abs/test.csv"
    assert cfg.data.unlabeled_path == Path("pool.parquet")  # --set paths: relative to the current folder
    with pytest.raises(DataError, match=f"data.train_path: {folder / 'data' / 'train.csv'} does not exist"):
        read_raw(cfg.data)


def test_cli_help_shows_examples_and_config_errors_exit_2(capsys):
    assert "weakflow run --config my.yaml" in build_parser().format_help()
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "examples:" in capsys.readouterr().out
    assert main(["show-config", "--set", "weak_train.epochs=zero"]) == 2
    assert "weak_train.epochs = 'zero'" in capsys.readouterr().err
    assert main(["show-config", "--set", "pseudo_label.threshold=0.75"]) == 0
    assert "threshold: 0.75" in capsys.readouterr().out


def test_core_imports_neither_prefect_nor_mlflow_and_imports_have_no_side_effects(tmp_path):
    code = (
        "import sys, os\n"
        "import weakflow.tasks.core.models, weakflow.tasks.core.training, weakflow.tasks.core.losses, "
        "weakflow.tasks.core.noise, weakflow.tasks.core.pseudo, weakflow.tasks.core.pseudo_stream, "
        "weakflow.tasks.core.metrics, weakflow.tasks.core.device, weakflow.tasks.core.schema, weakflow.tasks.core.text\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'mlflow', 'great_expectations', 'evidently')]\n"
        "assert not bad, bad\n"
        "import weakflow.flows.cli, weakflow.flows.pipeline, weakflow.flows.api, weakflow.tasks.register, "
        "weakflow.tasks.validate, weakflow.data_checks.suite, weakflow.deploy.gates, weakflow.monitoring.reference\n"
        "assert 'great_expectations' not in sys.modules, 'GX must load only inside the validate stage'\n"
        "assert os.listdir('.') == [], os.listdir('.')\n"
    )
    root = Path(__file__).resolve().parents[2]
    cwd, home = tmp_path / "cwd", tmp_path / "home"  # libraries may keep caches under HOME; cwd must stay empty
    cwd.mkdir(), home.mkdir()
    env = {"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(home)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_validate_reports_bad_files_and_exits_1(tmp_path):
    """The real console script in a subprocess (it loads Prefect, whose log handler must not bind to a
    test's captured stderr)."""
    (tmp_path / "train.csv").write_text("a,b,label\n1,2,0\n3,4,0\n")
    (tmp_path / "test.csv").write_text("a,b,label\n1,x,0\n")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "weakflow"), "validate", "--set", "data.source=files",
         "--set", f"data.train_path={tmp_path / 'train.csv'}", "--set", f"data.test_path={tmp_path / 'test.csv'}",
         "--set", "data.feature_columns=[a, b, c]", "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, cwd=tmp_path)
    err = proc.stderr
    assert proc.returncode == 1, err[-2000:]
    assert "train.c: expected the column to exist; found no such column" in err
    assert "test.b: expected a numeric column; found dtype object" in err


def test_the_text_demo_registers_under_its_own_name_unless_one_is_given():
    from weakflow.tasks.lib.config import TEXT_DEMO_MODEL

    assert load_config(None, ["data.source=demo_text"]).tracking.model_name == TEXT_DEMO_MODEL != \
        load_config(None).tracking.model_name
    assert load_config(None, ["data.source=demo_text", "tracking.model_name=mine"]).tracking.model_name == "mine"


def _files(*extra: str) -> list[str]:
    return ["data.source=files", "data.train_path=t.csv", "data.test_path=s.csv", "data.text_columns=[text]",
            "data.weak_label_columns=[moderator]", *extra]


@pytest.mark.parametrize("abstain, classes, shown", [
    ("ham", "[ham, spam]", "data.abstain 'ham' is the class 'ham'"),
    ("Spam", "[ham, spam]", "data.abstain 'Spam' reads as the class 'spam'"),  # up to case
    ("'1'", "[0, 1]", "data.abstain '1' reads as the class 1"),  # the text of an integer class
])
def test_an_abstain_value_that_is_a_class_is_a_config_error(abstain, classes, shown):
    """Its votes would silently count as no vote (or the weak_labels stage fail with a traceback)."""
    with pytest.raises(ConfigError) as exc:
        load_config(None, _files(f"data.abstain={abstain}", f"data.classes={classes}"))
    lines = str(exc.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith("  - data.classes = "), lines
    assert shown in lines[1] and "set data.abstain to a value no class has" in lines[1], lines


def test_duplicate_or_padded_classes_are_a_config_error_naming_data_classes():
    with pytest.raises(ConfigError) as exc:
        load_config(None, _files("data.classes=[ham, spam, spam]"))
    assert "data.classes = ['ham', 'spam', 'spam']: Value error, data.classes lists 'spam' more than once" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(None, _files("data.classes=[0, 1, 0]", "data.abstain=-1"))
    assert "data.classes lists 0 more than once" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config(None, _files("data.classes=['ham', ' spam']"))
    assert "class name(s) [' spam'] have surrounding spaces" in str(exc.value)
    assert load_config(None, _files("data.classes=[ham, spam]", "data.abstain=skip")).data.classes == ["ham", "spam"]


def test_cli_validate_passes_integer_classes_with_a_text_abstain_value(tmp_path):
    """The README's shape through the real console script: a weak column of 0, 1 and ``skip`` (text to
    pandas) beside integer classes passes ``weakflow validate`` (it was refused: ``'0'`` is not in [0, 1])."""
    rows = "".join(f"message {i} of its own,{i % 2 if i < 8 else ''},{['0', '1', 'skip', ''][i % 4]}\n" for i in range(16))
    (tmp_path / "train.csv").write_text("text,label,moderator\n" + rows)
    (tmp_path / "test.csv").write_text("text,label\n" + "".join(f"test message {i},{i % 2}\n" for i in range(4)))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "weakflow"), "validate", "--set", "data.source=files",
         "--set", f"data.train_path={tmp_path / 'train.csv'}", "--set", f"data.test_path={tmp_path / 'test.csv'}",
         "--set", "data.text_columns=[text]", "--set", "data.weak_label_columns=[moderator]",
         "--set", "data.abstain=skip", "--set", "data.classes=[0, 1]", "--workspace", str(tmp_path / "ws")],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation passed" in proc.stdout + proc.stderr
    assert "rows {'gold': 8, 'weak': 4, 'unlabeled': 4}" in proc.stdout + proc.stderr


def test_the_longest_text_is_one_setting_for_training_and_every_scoring_entry_point():
    """``data.text_max_chars`` raised for training: the server, predict and the API take texts as long (they
    read ``serve.max_text_chars``), unless that is set itself."""
    from weakflow.tasks.lib.config import load_config

    files = ["data.source=files", "data.train_path=a.csv", "data.test_path=b.csv", "data.text_columns=[t]"]
    assert load_config(None, [*files, "data.text_max_chars=20000"]).serve.max_text_chars == 20000
    assert load_config(None, [*files, "data.text_max_chars=20000", "serve.max_text_chars=100"]).serve.max_text_chars == 100
    assert load_config(None, files).serve.max_text_chars == load_config(None).serve.max_text_chars == 5000


def test_a_config_path_that_is_a_named_pipe_or_a_folder_is_refused_not_read(tmp_path):
    from tests.conftest import fifo_call

    error = fifo_call(tmp_path / "config.yaml", lambda: load_config(tmp_path / "config.yaml"))
    assert isinstance(error, ConfigError) and "is not a regular file" in str(error)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(tmp_path)
