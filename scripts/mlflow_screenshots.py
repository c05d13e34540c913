"""Screenshots of the MLflow UI over an ltray sweep: the runs table and a comparison of trials.

What README.md shows under "Tracking in MLflow" was made with:

    export LTRAY_HOME=/tmp/ltray-demo
    ltray tune --space search_spaces/kt.yaml --num-samples 4 --max-concurrent 2 train.epochs=4
    mlflow ui --backend-store-uri sqlite:///$LTRAY_HOME/mlflow.db --host 127.0.0.1 --port 5000 \\
        --workers 1 &
    python scripts/mlflow_screenshots.py --store sqlite:///$LTRAY_HOME/mlflow.db --out docs/img

Needs Playwright (``pip install playwright``) and a Chromium: the system one (Debian's
``chromium`` package, ``--browser /usr/bin/chromium``) or ``playwright install chromium``.
The pages are rendered headless (the runs table at 1920 px wide, the comparison at 1600) and
saved as 256-colour PNGs, resized to ``--width`` to stay small.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from urllib.parse import quote

ML = "workflowType=machine_learning"  # MLflow 3.17's UI opens on the GenAI pages without it


def _runs(store: str, experiment: str) -> tuple[str, list[str]]:
    """(experiment id, the sweep's trial run ids, oldest first)."""
    from ltray.tracking.models import using_tracking_uri

    with using_tracking_uri(store):
        import mlflow

        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            sys.exit(f"no experiment {experiment!r} in {store}")
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    trials = [r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags]
    return exp.experiment_id, trials


def _settle(page, text: str, timeout_s: float = 120) -> None:
    """Wait until ``text`` is on the page, then let the single-page app finish rendering (its
    polling never lets the network go idle)."""
    page.get_by_text(text, exact=False).first.wait_for(timeout=timeout_s * 1000)
    time.sleep(4)


def _close_assistant(page) -> None:
    """The MLflow Assistant side panel takes a quarter of the window: close it when open."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
        time.sleep(1)


def _show_columns(page, names: list[str]) -> None:
    """Tick ``names`` in the runs table's Columns menu (attributes, metrics, tags)."""
    page.get_by_test_id("column-selection-dropdown").first.click()
    search = page.get_by_placeholder("Search columns")
    for name in names:
        search.fill(name)
        time.sleep(0.5)
        page.get_by_text(name, exact=True).last.click()
    search.fill("")
    page.keyboard.press("Escape")
    time.sleep(1)


def _pick(page, combobox: int, names: list[str]) -> None:
    """Choose ``names`` in one of the compare page's multi-selects."""
    page.get_by_role("combobox").nth(combobox).click()
    for name in names:
        page.keyboard.type(name)
        time.sleep(0.5)
        page.keyboard.press("Enter")
        time.sleep(0.3)
    page.keyboard.press("Escape")
    time.sleep(0.5)


def _save(page, path: Path, width: int, bottom: float | None = None) -> None:
    """Screenshot (down to ``bottom`` px when given), resized to ``width``, 256 colours."""
    from PIL import Image

    size = page.viewport_size
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(bottom or 1e9, size["height"])}
    page.screenshot(path=str(path), clip=clip)
    img = Image.open(path)
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.convert("P", palette=Image.ADAPTIVE, colors=256).save(path, optimize=True)
    print(f"{path}: {img.width}x{img.height}, {path.stat().st_size // 1024} KB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ui", default="http://127.0.0.1:5000", help="the running `mlflow ui`")
    p.add_argument("--store", required=True, help="the tracking URI the UI serves")
    p.add_argument("--experiment", default="ltray")
    p.add_argument("--out", type=Path, default=Path("docs/img"))
    p.add_argument("--browser", default="/usr/bin/chromium", help="Chromium executable")
    p.add_argument("--width", type=int, default=1400, help="width of the saved PNGs")
    p.add_argument(
        "--columns",
        nargs="*",
        default=["Version", "val_kt_overall", "test_kt_overall", "test_kt_few"],
        help="columns to show in the runs table besides the default ones",
    )
    p.add_argument(
        "--params",
        nargs="*",
        default=["kt.phi", "kt.temperature", "memory.init_epoch", "memory.momentum", "train.lr"],
        help="parameters of the comparison's parallel-coordinates plot",
    )
    p.add_argument("--metric", default="val_kt_overall", help="the plot's metric")
    args = p.parse_args()

    from playwright.sync_api import sync_playwright

    exp_id, trials = _runs(args.store, args.experiment)
    args.out.mkdir(parents=True, exist_ok=True)
    ui = args.ui.rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=args.browser or None, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1920, "height": 900})
        page.goto(f"{ui}/#/experiments/{exp_id}/runs?{ML}")
        _settle(page, "sweep-")
        _close_assistant(page)
        _show_columns(page, args.columns)
        parent = page.get_by_text("sweep-", exact=False).first.bounding_box()
        page.mouse.click(parent["x"] - 28, parent["y"] + parent["height"] / 2)  # its trials
        time.sleep(3)
        last = page.get_by_text("trial-", exact=False).last.bounding_box()
        _save(page, args.out / "mlflow-runs.png", args.width, last["y"] + last["height"] + 60)

        # The trials side by side: what was searched against the sweep metric, then every
        # parameter and metric that differs between them.
        page.set_viewport_size({"width": 1600, "height": 2600})
        runs = quote(json.dumps(trials))
        page.goto(f"{ui}/#/compare-runs?runs={runs}&experiments={quote(json.dumps([exp_id]))}&{ML}")
        _settle(page, "Parameters")
        _close_assistant(page)
        page.get_by_role("button", name="Clear All").click()
        _pick(page, 0, args.params)
        _pick(page, 1, [args.metric])
        for switch in page.get_by_text("Show diff only").all()[:2]:  # parameters, metrics
            switch.click()
            time.sleep(0.5)
        time.sleep(2)
        end = page.get_by_text("Artifacts", exact=True).first.bounding_box()
        _save(page, args.out / "mlflow-compare.png", args.width, end["y"] - 10 if end else None)
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
