"""One installed name: models from before the weakflow.* namespace still load and serve; a built wheel,
installed into a fresh venv outside the checkout, runs `weakflow --help` and loads a model it registered."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from tests.tiny_model import use_registry

ROOT = Path(__file__).resolve().parents[2]
OLD_MODEL = ROOT / "tests" / "fixtures" / "model_before_namespace.tar.gz"
ROWS = pd.DataFrame({"a": [9.0, 0.0, 0.0], "b": [0.0, 9.0, 0.0], "c": [0.0, 0.0, 9.0], "d": [1.0, 1.0, 1.0]})


def register_folder(folder: Path, name: str) -> str:
    """Register a saved model folder as a version of ``name`` with alias champion (as if logged long ago)."""
    client = mlflow.MlflowClient()
    client.create_registered_model(name)
    version = str(client.create_model_version(name, source=str(folder)).version)
    client.set_registered_model_alias(name, "champion", version)
    return version


def test_a_model_saved_before_the_namespace_still_loads_predicts_and_serves(tmp_path):
    from fastapi.testclient import TestClient

    from weakflow.deploy.serve import create_app
    from weakflow.flows import api

    with tarfile.open(OLD_MODEL) as tar:
        tar.extractall(tmp_path, filter="data")
    assert sorted(p.name for p in (tmp_path / "model" / "code").iterdir()) == ["deploy", "tasks"]  # the old layout
    use_registry(tmp_path / "registry")
    version = register_folder(tmp_path / "model", "old")
    out = mlflow.pyfunc.load_model(f"models:/old/{version}").predict(ROWS)
    assert out["prediction"].tolist() == ["cat", "dog", "eel"]
    cfg = api.config(tracking__model_name="old", tracking__tracking_uri=mlflow.get_tracking_uri(),
                     tracking__workspace=str(tmp_path / "ws"))
    assert api.load_model(cfg).predict(ROWS)["prediction"].tolist() == ["cat", "dog", "eel"]
    app = create_app("old", poll_seconds=0, log_url=f"sqlite:///{tmp_path / 'log.db'}")
    with TestClient(app) as client:
        r = client.post("/predict", json={"records": ROWS.to_dict("records")})
        assert r.status_code == 200, r.text
        assert [p["class"] for p in r.json()["predictions"]] == ["cat", "dog", "eel"]


def imports_with_this_sys_path(module: str) -> str:
    """What a spawned worker does: a fresh interpreter with this process's sys.path, importing ``module``."""
    code = f"import sys, json; sys.path[:] = json.loads({json.dumps(json.dumps(sys.path))}); import {module}; print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or done.stderr.strip().splitlines()[-1]


def log_new_model(tmp_path: Path) -> str:
    """A tiny model logged as ``weakflow register`` logs one (this checkout's entry file and shipped code);
    its URI."""
    from weakflow.deploy import model_code
    from weakflow.deploy.model import save_weights
    from weakflow.tasks.core.models import ModelSpec, build_model
    from weakflow.tasks.core.schema import InputSchema

    use_registry(tmp_path / "registry")
    spec = ModelSpec("mlp", 4, 3, hidden=(), dropout=0.0)
    save_weights(tmp_path / "model.pt", build_model(spec).eval(), spec, InputSchema(list("abcd"), []), ["x", "y", "z"])
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=str(ROOT / "deploy" / "pyfunc_entry.py"),
                                       artifacts={"weights": str(tmp_path / "model.pt")}, pip_requirements=[],
                                       code_paths=[str(model_code.stage(tmp_path / "code"))])
    return info.model_uri


def test_after_loading_a_new_model_a_spawned_worker_still_imports_all_of_weakflow(tmp_path):
    """A loaded model's code folder (a partial weakflow/) must not stay in front of the installed package:
    pools started afterwards (lfs shards, Dask, the CLI's spawn) re-import weakflow from sys.path."""
    uri = log_new_model(tmp_path)
    path = list(sys.path)
    try:
        from weakflow.deploy import model_code

        model_code.load_pyfunc(uri).predict(ROWS)
        assert imports_with_this_sys_path("weakflow.tasks.lib.config") == "ok"
        assert sys.path == path  # the model's weakflow/ folder is not left on it
    finally:
        sys.path[:] = path


def test_a_model_loaded_first_in_a_fresh_process_leaves_import_weakflow_the_api(tmp_path):
    """``mlflow.pyfunc.load_model`` (as ``mlflow models serve`` or a notebook does) before any weakflow
    import: the model's code folder goes first on sys.path, yet ``import weakflow`` afterwards is the
    installed package with its API, and the model ran the installed code."""
    uri = log_new_model(tmp_path)
    script = ("import json, sys, mlflow, pandas as pd\n"
              f"mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})\n"
              f"out = mlflow.pyfunc.load_model({uri!r}).predict(pd.DataFrame(json.loads({ROWS.to_json(orient='records')!r})))\n"
              "import weakflow\n"
              "print(json.dumps({'api': hasattr(weakflow, 'config') and weakflow.config(seed=3).seed,\n"
              "                  'model': sys.modules['weakflow.deploy.model'].__file__, 'rows': len(out)}))\n")
    ran = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    assert found == {"api": 3, "model": str(ROOT / "deploy" / "model.py"), "rows": 3}


def test_a_new_model_ships_only_the_modules_loading_imports(tmp_path):
    """What register gives MLflow as code_paths: one weakflow/ folder, the closure of weakflow.deploy.model."""
    from weakflow.deploy import model_code

    folder = model_code.stage(tmp_path)
    shipped = sorted(str(p.relative_to(tmp_path)) for p in folder.rglob("*.py"))
    assert shipped == sorted(f"weakflow/{model_code.module_file(m).relative_to(model_code.ROOT).as_posix()}"
                             for m in model_code.closure())
    assert "weakflow/deploy/model.py" in shipped and "weakflow/tasks/core/text.py" in shipped
    assert not any(s.startswith(("weakflow/flows", "weakflow/monitoring", "weakflow/data_checks")) for s in shipped)
    assert "weakflow/tasks/data.py" not in shipped and "weakflow/deploy/serve.py" not in shipped
    assert not (folder / "__init__.py").exists()  # never a package of its own: it must not hide an installed one


@pytest.mark.slow  # ~13 s: builds and installs the wheel
def test_the_wheel_installs_alone_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it (no deps) into a fresh venv whose dependencies come from this venv's
    site-packages as a plain path (so the editable install's finder is not loaded), then, from a folder
    outside the checkout: `weakflow --help`, the package's location, and a model it registers and loads."""
    wheels, source = tmp_path / "wheels", tmp_path / "source"  # built from a copy: no build/ in the checkout
    import shutil

    source.mkdir()
    for part in ("pyproject.toml", "README.md", "flows", "tasks", "deploy", "monitoring", "data_checks"):
        copy = shutil.copytree if (ROOT / part).is_dir() else shutil.copy2
        copy(ROOT / part, source / part, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree
                                           else {}))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    wheel = next(wheels.glob("weakflow-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
    Path(fresh_site, "deps_from_dev_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    before = {p.name for p in Path(fresh_site).iterdir()}
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    added = {p.name for p in Path(fresh_site).iterdir()} - before
    assert {a for a in added if not a.endswith(".dist-info")} == {"weakflow"}  # nothing else at the top level
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "MLFLOW_DISABLE_TELEMETRY": "true"}
    shown = subprocess.run([str(venv / "bin" / "weakflow"), "--help"], cwd=outside, env=env, capture_output=True,
                           text=True)
    assert shown.returncode == 0 and "predict" in shown.stdout, shown.stderr
    script = (
        "import json, tempfile, pandas as pd, mlflow, torch\n"
        "import weakflow.flows.cli, weakflow.deploy.model as m\n"
        "from pathlib import Path\n"
        "from weakflow.deploy import model_code\n"
        "from weakflow.tasks.core.models import ModelSpec, build_model\n"
        "from weakflow.tasks.core.schema import InputSchema\n"
        "mlflow.set_tracking_uri('sqlite:///' + str(Path('store.db').resolve()))\n"
        "spec = ModelSpec('mlp', 4, 3, hidden=(), dropout=0.0); net = build_model(spec)\n"
        "with torch.no_grad(): net.head.weight.copy_(torch.eye(3, 4) * 5); net.head.bias.zero_()\n"
        "tmp = Path(tempfile.mkdtemp())\n"
        "m.save_weights(tmp / 'model.pt', net.eval(), spec, InputSchema(['a', 'b', 'c', 'd'], []), ['cat', 'dog', 'eel'])\n"
        "entry = Path(m.__file__).with_name('pyfunc_entry.py')\n"
        "with mlflow.start_run():\n"
        "    info = mlflow.pyfunc.log_model(name='model', python_model=str(entry), artifacts={'weights': str(tmp / 'model.pt')},\n"
        "                                   code_paths=[str(model_code.stage(tmp / 'code'))], pip_requirements=[])\n"
        "rows = pd.DataFrame(json.loads(%r))\n"
        "out = mlflow.pyfunc.load_model(info.model_uri).predict(rows)\n"
        "import weakflow\n"  # the package is the API, also after a model's code went first on sys.path
        "api = {'file': weakflow.__file__, 'seed': weakflow.config(seed=4).seed, 'run': weakflow.run.__module__}\n"
        "print(json.dumps({'cli': weakflow.flows.cli.__file__, 'pred': out['prediction'].tolist(), 'api': api}))\n"
    ) % ROWS.to_json(orient="records")
    ran = subprocess.run([str(python), "-c", script], cwd=outside, env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-3000:]
    found = json.loads(ran.stdout.strip().splitlines()[-1])
    assert found["cli"].startswith(fresh_site) and str(ROOT) not in found["cli"]
    assert found["pred"] == ["cat", "dog", "eel"]
    assert found["api"] == {"file": str(Path(fresh_site, "weakflow", "__init__.py")), "seed": 4,
                            "run": "weakflow.flows.api"}
