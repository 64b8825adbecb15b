"""``import weakflow`` is the API: the names at the top of the package, none of torch, MLflow or Prefect
imported until one of them is called (a notebook's first cell, a CLI's --help stay fast)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "mlflow", "prefect", "great_expectations", "evidently")

PROBE = """
import json, sys
heavy = {heavy!r}
loaded = lambda: sorted(m for m in heavy if m in sys.modules)
import weakflow
seen = {{"import": loaded()}}
errors = [weakflow.ConfigError, weakflow.DataError, weakflow.RegistryError, weakflow.PrefectStartupError]
seen["errors"] = loaded()
cfg = weakflow.config(weak_train__epochs=3)
seen["config"] = loaded()
from weakflow.flows import api
from weakflow.tasks.lib.data import DataError
from weakflow.deploy.registry import RegistryError
seen["same"] = [weakflow.run is api.run, weakflow.load_model is api.load_model, weakflow.config is api.config,
                weakflow.DataError is DataError, weakflow.RegistryError is RegistryError,
                isinstance(cfg, weakflow.Config), cfg.weak_train.epochs == 3]
try:
    weakflow.no_such_thing
    seen["missing"] = "no error"
except AttributeError as exc:
    seen["missing"] = str(exc)
seen["all"] = sorted(weakflow.__all__)
print(json.dumps(seen))
"""


def test_the_package_is_the_api_and_imports_nothing_heavy_until_used():
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["import"] == [] and seen["errors"] == [] and seen["config"] == [], seen
    assert seen["same"] == [True] * 7, seen["same"]
    assert seen["missing"] == "module 'weakflow' has no attribute 'no_such_thing'"
    assert {"config", "run", "load_model", "ConfigError", "DataError", "RegistryError",
            "PrefectStartupError"} <= set(seen["all"])
