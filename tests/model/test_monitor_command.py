"""`weakflow monitor`'s own output: one line when there is nothing to monitor (no registry, no model, no
alias), and the verdict as its last line, exit 0, when the window is below ``monitoring.min_rows``."""

from __future__ import annotations

import prefect.main  # noqa: F401 - Prefect binds its console log handler to sys.stderr when it sets up logging:
# done here, at collection, that is pytest's session stream, not a test's capfd capture that closes after it
from mlflow import MlflowClient

from weakflow.flows.cli import main
from tests.tiny_model import register_tiny, use_registry


def monitor(capfd, *args: str) -> tuple[int, str, str]:
    code = main(["monitor", *args])
    out = capfd.readouterr()
    return code, out.out, out.err


def test_no_registry_is_one_line_and_creates_nothing(tmp_path, capfd):
    code, out, err = monitor(capfd, "--workspace", str(tmp_path))
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert (code, out) == (1, "")
    assert err == (f"monitor: no model 'weakflow-classifier' with the alias 'champion': there is no MLflow registry at "
                   f"{uri} (no such file); run `weakflow run` first, or point --workspace or --tracking-uri at the "
                   "registry that has the model\n")
    assert list(tmp_path.iterdir()) == []  # no mlflow.db made as a side effect


def test_no_model_or_no_alias_is_one_line(tmp_path, capfd):
    uri = use_registry(tmp_path)  # a registry whose only model is "tiny", v1 without an alias
    register_tiny("tiny")
    capfd.readouterr()
    code, out, err = monitor(capfd, "--workspace", str(tmp_path))
    assert (code, out) == (1, "") and err.count("\n") == 1, err
    assert err == (f"monitor: no registered model 'weakflow-classifier' in {uri} (looked for its alias 'champion'); "
                   "run `weakflow run` first, or point --workspace or --tracking-uri at the registry that has it\n")
    code, out, err = monitor(capfd, "--workspace", str(tmp_path), "--set", "tracking.model_name=tiny")
    assert (code, out) == (1, "")
    assert err == (f"monitor: model 'tiny' in {uri} has no version with the alias 'champion' (its aliases: none); run "
                   "`weakflow run`, or `weakflow promote VERSION --reason TEXT` to make one champion, or set "
                   "serve.alias\n")
    # refused before the monitoring flow started: no flow run logging a failed task and a traceback
    assert MlflowClient(uri).get_experiment_by_name("weakflow-monitoring") is None


def test_too_few_rows_print_the_reason_and_exit_0(prefect_harness, tmp_path, capfd):
    use_registry(tmp_path)
    register_tiny("tiny", alias="champion", reference=True)
    capfd.readouterr()
    code, out, _ = monitor(capfd, "--workspace", str(tmp_path), "--set", "tracking.model_name=tiny",
                           "--set", f"monitoring.evidently_workspace={tmp_path / 'evidently'}")
    assert code == 0
    assert out.splitlines()[-1] == "tiny v1: not checked: 0 rows in the window, fewer than min_rows=100"
