"""The MLflow UI as a user sees it: a real `mlflow ui` on 127.0.0.1 over a store holding a real
sweep, read by a real headless Chromium (Debian's chromium and chromium-driver).

Under `.ci/run` (CI set) a missing browser fails the test; elsewhere it skips, saying why.
Screenshots go to the test's temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from helpers import (
    mlflow_server,
    use_store,
)

pytestmark = pytest.mark.slow  # the MLflow UI in Chromium


@pytest.fixture(scope="module")
def ui(swept_project: Path) -> Iterator[tuple[str, Path]]:
    """`mlflow ui` over a project whose store holds one 2-job sweep; yields its URL and root."""
    project = swept_project
    store = f"sqlite:///{project}/mlflow.db"
    with mlflow_server("ui", "--backend-store-uri", store, log=project / "ui.log") as url:
        yield url, project


def wait_text(driver, text: str, seconds: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, seconds).until(lambda d: text in d.page_source)


def test_the_experiment_shows_the_sweep_and_its_children(
    browser, ui: tuple[str, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    url, project = ui
    use_store(f"sqlite:///{project}/mlflow.db")
    experiment = mlflow.get_experiment_by_name("mnist")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = mlflow.search_runs([experiment.experiment_id], output_format="list")
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = sorted(r.info.run_name for r in runs if r is not parent)
    assert children == ["mlp-h16-e1-n1000-s42", "mlp-h32-e1-n1000-s42"]

    # MLflow 3 opens on its GenAI view in a new browser; "Model training" is the runs table.
    browser.get(f"{url}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning")
    wait_text(browser, parent.info.run_name)
    browser.save_screenshot(str(tmp_path / "runs-collapsed.png"))
    assert not any(name in browser.page_source for name in children)  # nested under the sweep
    link = browser.find_element(By.LINK_TEXT, parent.info.run_name)
    cell = link.find_element(By.XPATH, "./ancestor::div[contains(@class, 'ag-cell')][1]")
    cell.find_element(By.TAG_NAME, "button").click()  # the sweep's expander
    for name in children:
        wait_text(browser, name)
    browser.save_screenshot(str(tmp_path / "runs-expanded.png"))

    child = next(r for r in runs if r.info.run_name == children[0])
    browser.get(f"{url}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}")
    # Datasets: the first by name with its digest, the other two behind "+2".
    digest = child.data.tags["data.processed.train.sha256"][:32]
    for text in (children[0], f"mnist-train ({digest})", "+2"):
        wait_text(browser, text)
    browser.save_screenshot(str(tmp_path / "run.png"))
    assert (tmp_path / "run.png").stat().st_size > 10_000
