"""Regenerate the README's pictures from this project's own real runs.

Inputs: reports/figures/ (from `uv run dvc repro`), the newest sweep folder under multirun/ (from
`uv run python -m pipeline.sweep ...`), and the MLflow store, which a real `mlflow ui` on 127.0.0.1
serves to a headless Chromium (Debian's chromium and chromium-driver) for a screenshot of the
runs table with the newest sweep expanded; and the web app (`pipeline.app`) on the champion, for
its draw page with a 7 drawn and its compare page for the sweep's best and worst models.
Outputs: docs/images/*.png, scaled down to at most 900 pixels wide.
Command: `uv run python docs/make_images.py [--sweep multirun/DATE/TIME] [--only app|ui]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from helpers import app_server, chromium, draw, line, mlflow_server, read_answer  # noqa: E402

OUT = ROOT / "docs" / "images"
FIGURES = {
    "predictions.png": "predictions.png",
    "confusion_matrix.png": "confusion-matrix.png",
    "learning_curves.png": "learning-curves.png",
}
WIDTH = 900


def save_small(source: Path, name: str) -> None:
    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > WIDTH:
            image = image.resize((WIDTH, round(image.height * WIDTH / image.width)))
        image.save(OUT / name, optimize=True)
    print(f"wrote docs/images/{name}")


def ui_screenshot(target: Path) -> None:
    """The MLflow UI's runs table with the newest sweep expanded under its parent, its name in
    full, the validation and test accuracy columns shown and the assistant panel closed."""
    import mlflow
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    store = f"sqlite:///{ROOT / 'mlflow.db'}"
    client = mlflow.MlflowClient(store)
    experiment = client.get_experiment_by_name("mnist")
    (parent,) = client.search_runs(
        [experiment.experiment_id], "tags.sweep = 'parent'", max_results=1
    )
    log = OUT / ".ui.log"
    driver = chromium(1500, 900)
    try:
        with mlflow_server("ui", "--backend-store-uri", store, log=log) as url:
            page = f"{url}/#/experiments/{experiment.experiment_id}"
            driver.get(f"{page}?workflowType=machine_learning")
            name = parent.info.run_name
            WebDriverWait(driver, 60).until(lambda d: name in d.page_source)
            time.sleep(1)
            for button in driver.find_elements(By.XPATH, "//button[@aria-label='Close']"):
                button.click()  # the assistant panel
            driver.find_element(By.XPATH, "//button[normalize-space()='Columns']").click()
            time.sleep(1)
            for label in ("Dataset", "val_accuracy", "test_accuracy"):  # Dataset off, two on
                path = f"//span[contains(@class, 'tree-title')][normalize-space(text())='{label}']"
                driver.find_element(By.XPATH, path).click()
                time.sleep(0.3)
            driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
            time.sleep(1)
            header = driver.find_element(
                By.XPATH, "//div[contains(@class, 'ag-header-cell')][.//*[text()='Run Name']]"
            )
            handle = header.find_element(By.CLASS_NAME, "ag-header-cell-resize")
            ActionChains(driver).drag_and_drop_by_offset(handle, 160, 0).perform()  # full names
            link = driver.find_element(By.LINK_TEXT, name)
            cell = link.find_element(By.XPATH, "./ancestor::div[contains(@class, 'ag-cell')][1]")
            cell.find_element(By.TAG_NAME, "button").click()  # expand the sweep
            time.sleep(3)  # the children's rows render
            driver.save_screenshot(str(target))
    finally:
        driver.quit()
        log.unlink(missing_ok=True)


def app_screenshots(sweep: Path) -> None:
    """The web app on the champion: a 7 drawn on its draw page, and its compare page for the
    best and the worst model of `sweep`."""
    import json

    import mlflow

    store = f"sqlite:///{ROOT / 'mlflow.db'}"
    parent = json.loads((sweep / "parent_run.json").read_text())["run_id"]
    children = mlflow.MlflowClient(store).search_runs(
        [json.loads((sweep / "parent_run.json").read_text())["experiment_id"]],
        f"tags.mlflow.parentRunId = '{parent}'",
        order_by=["metrics.val_accuracy DESC"],
        max_results=1000,
    )
    ends = f"{children[0].info.run_id},{children[-1].info.run_id}"
    log = OUT / ".app.log"
    driver = chromium(1200, 760)
    try:
        with app_server(cwd=ROOT, log=log) as url:
            driver.get(url)
            draw(driver, [line((60, 55), (215, 55)) + line((215, 55), (115, 240))[1:]])
            read_answer(driver)
            driver.save_screenshot(str(OUT / ".app-draw.png"))
            driver.set_window_size(1400, 1600)
            driver.get(f"{url}/compare?runs={ends}")
            time.sleep(3)  # the figures load
            driver.save_screenshot(str(OUT / ".app-compare.png"))
    finally:
        driver.quit()
        log.unlink(missing_ok=True)
    for name in ("app-draw.png", "app-compare.png"):
        save_small(OUT / f".{name}", name)
        (OUT / f".{name}").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, help="a sweep folder (default: the newest)")
    parser.add_argument(
        "--only", choices=["app", "ui"], help="only the web app's or the MLflow UI's screenshots"
    )
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    sweeps = sorted((ROOT / "multirun").glob("*/*/accuracy_by_hidden_units.png"))
    sweep = args.sweep or sweeps[-1].parent
    if args.only == "app":
        app_screenshots(sweep)
        return
    shot = OUT / ".mlflow-ui.png"
    if args.only == "ui":
        ui_screenshot(shot)
        save_small(shot, "mlflow-ui-sweep.png")
        shot.unlink()
        return
    for source, name in FIGURES.items():
        save_small(ROOT / "reports" / "figures" / source, name)
    save_small(sweep / "accuracy_by_hidden_units.png", "sweep-accuracy-by-hidden-units.png")
    ui_screenshot(shot)
    save_small(shot, "mlflow-ui-sweep.png")
    shot.unlink()
    app_screenshots(sweep)


if __name__ == "__main__":
    main()
