"""A real browser on the real MLflow UI: run the pipeline, start `mlflow ui` on its store, and check in
Chromium (through Playwright) that a reviewer sees the stage runs, the key metrics and the evaluation
report. Saves screenshots of the run page and of the report; `WEAKFLOW_UPDATE_SCREENSHOT=1` also copies
them to docs/img/ (the README shows them).

Needs Debian's Chromium (`/usr/bin/chromium`, or `WEAKFLOW_CHROMIUM=/path`) and the `playwright` package
(in `.[dev]`); Playwright's own browser downloads are never used. Without them the test skips with the
reason, except when `WEAKFLOW_REQUIRE_BROWSER=1` (set by .ci/run, which installs chromium through
deploy/ci_packages.sh): then it fails, so CI cannot pass without having looked at the UI.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import fast_config, free_port

CHROMIUM = Path(os.environ.get("WEAKFLOW_CHROMIUM", "/usr/bin/chromium"))
# --headless/--no-sandbox: no display, running as root in CI; the rest keep Chromium off the network
# (without them it keeps calling Google services, which floods a closed network) and quiet.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The UI's local settings: MLflow Assistant panel closed, "Model training" (not GenAI) navigation.
UI_SETTINGS = """
window.localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');
window.localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');
window.localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'));
"""
STAGES = ["validate", "governance", "weak_labels", "gold_only", "weak_train", "pseudo_label", "pseudo_governance",
          "full_train", "select", "evaluate", "register", "publish"]
# The evaluate stage's review report (tasks/report/build.py). A .png path works too (the check then looks for
# the image): "evaluation/confusion_matrix.png" was used before the report existed.
REPORT_ARTIFACT = "evaluation/report.html"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
SCREENSHOTS = ["mlflow-run.png", "mlflow-report.png"]  # the parent run page; the report in the evaluate run
UI_TIMEOUT_MS = 60_000  # per UI step; the SPA takes 3-5 s to render a run page on 2 cores


def require_browser() -> None:
    """Skip (locally) or fail (WEAKFLOW_REQUIRE_BROWSER=1, i.e. CI) when no browser can be driven."""
    problem = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problem = "the playwright package is missing (pip install -e '.[dev]')"
    if problem is None and not CHROMIUM.is_file():
        problem = f"{CHROMIUM} is missing (bash deploy/ci_packages.sh chromium, or set WEAKFLOW_CHROMIUM)"
    if problem is None:
        return
    if os.environ.get("WEAKFLOW_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser check required (WEAKFLOW_REQUIRE_BROWSER=1) but {problem}")
    pytest.skip(f"no browser: {problem}; WEAKFLOW_REQUIRE_BROWSER=1 turns this into a failure")


class MlflowUI:
    """`mlflow ui` on a SQLite store, on a free loopback port; stop() always ends its process group."""

    def __init__(self, db: Path, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with log.open("wb") as out:  # a file, not a pipe: a full pipe would block the server
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=db.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                # no job runner: it forks a dozen huey workers that only GenAI features use
                env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                     "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})

    def wait(self, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow ui exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow ui not healthy after {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)


def shown(value: float) -> str:
    """A metric value as the UI prints it (JavaScript's shortest round-trip form, like Python's repr)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def check_run_pages(ui_url: str, experiment_id: str, parent, evaluate, shots: Path) -> None:
    """What a reviewer sees, in Chromium: the parent run, the runs table, the evaluate run and its report."""
    from playwright.sync_api import expect, sync_playwright

    runs = f"{ui_url}/#/experiments/{experiment_id}/runs"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(UI_SETTINGS)
            context.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            page = context.new_page()

            # 1. the parent run: its name, the headline metrics with their values, a link per stage run
            page.goto(f"{runs}/{parent.info.run_id}")
            expect(page.get_by_text("About this run")).to_be_visible()
            expect(page.get_by_text(parent.info.run_name, exact=True).first).to_be_visible()
            for key in ("test_accuracy", "gold_only_test_accuracy"):
                expect(page.get_by_role("link", name=key, exact=True)).to_be_visible()
                expect(page.get_by_text(shown(parent.data.metrics[key]), exact=True).first).to_be_visible()
            # "Child runs" in "About this run": MLflow lists ten, then a "Load more" button
            expect(page.get_by_role("link", name=STAGES[-1], exact=True)).to_be_visible()
            page.get_by_role("button", name="Load more").click()
            for stage in STAGES:
                expect(page.get_by_role("link", name=stage, exact=True)).to_be_visible()
            expect(page.get_by_text("model_alias", exact=True)).to_be_visible()  # tag: champion/challenger
            page.screenshot(path=str(shots / "mlflow-run.png"))

            # 2. the experiment's runs table: expanding the parent row lists the stage runs under it
            page.goto(runs)
            name_cell = page.locator("[role=row]", has=page.get_by_role("link", name=parent.info.run_name)) \
                .locator("[col-id='attributes.`Run Name`']")
            name_cell.locator("button").first.click()  # the +/- expander left of the run name
            grid = page.get_by_role("treegrid").or_(page.get_by_role("grid")).first
            for stage in STAGES:
                expect(grid.get_by_role("link", name=stage, exact=True)).to_be_visible()

            # 3. the evaluate run: its metrics, then the report in the Artifacts tab
            page.goto(f"{runs}/{evaluate.info.run_id}")
            expect(page.get_by_text("About this run")).to_be_visible()
            for key in ("test_accuracy", "test_macro_f1", "test_ece", "gold_only_test_accuracy",
                        "lift_over_gold_only"):
                expect(page.get_by_role("link", name=key, exact=True)).to_be_visible()
                expect(page.get_by_text(shown(evaluate.data.metrics[key]), exact=True).first).to_be_visible()
            page.get_by_role("tab", name="Artifacts").click()
            folder, name = REPORT_ARTIFACT.rsplit("/", 1)
            page.get_by_text(folder, exact=True).click()
            page.get_by_text(name, exact=True).click()
            expect(page.get_by_text(REPORT_ARTIFACT, exact=True)).to_be_visible()  # the preview's title
            if name.endswith(".png"):
                image = page.get_by_role("img", name=REPORT_ARTIFACT, exact=True)
                expect(image).to_be_visible()
                assert image.evaluate("img => img.complete && img.naturalWidth > 0"), "the image did not load"
            else:  # HTML previews render in an iframe
                frame = page.frame_locator("iframe").first
                expect(frame.get_by_role("heading", name="Evaluation report", exact=False).first).to_be_visible()
                expect(frame.locator("body")).to_contain_text("accuracy")
            page.screenshot(path=str(shots / "mlflow-report.png"))
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mlflow_ui_shows_stages_metrics_and_report(request, tmp_path):
    require_browser()  # before the Prefect harness (~15 s or more), so a skip or failure is immediate
    request.getfixturevalue("prefect_harness")
    from weakflow.flows.pipeline import training_pipeline

    cfg = fast_config(tmp_path / "ws")
    result = training_pipeline(cfg)
    client = MlflowClient(cfg.tracking.resolved_uri)
    parent = client.get_run(result.run_id)
    stage_runs = {r.info.run_name: r for r in
                  client.search_runs([result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'")}
    assert sorted(stage_runs) == sorted(STAGES)

    shots = tmp_path / "shots"
    shots.mkdir()
    ui = MlflowUI(cfg.tracking.workspace / "mlflow.db", tmp_path / "mlflow-ui.log")
    try:
        ui.wait()
        check_run_pages(ui.url, result.experiment_id, parent, stage_runs["evaluate"], shots)
    finally:
        ui.stop()
    assert all((shots / name).stat().st_size > 10_000 for name in SCREENSHOTS)
    if os.environ.get("WEAKFLOW_UPDATE_SCREENSHOT") == "1":  # refresh the README's images
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        for name in SCREENSHOTS:
            shutil.copyfile(shots / name, DOCS_IMG / name)
