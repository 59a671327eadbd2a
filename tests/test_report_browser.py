"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium.

Opens the tiny run's report from disk, checks that nothing is logged at SEVERE level, that
every image resolves, that the selectors swap figures and that tables sort, then saves a
full-page screenshot (its path is printed; run pytest with -s to see it).
"""

from __future__ import annotations

import shutil
import time

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium binary found: apt-get install chromium chromium-driver (CI's .ci/run does)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, "Chromium is installed but chromedriver is not: apt-get install chromium-driver"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _wait(drv, script: str, timeout: float = 20.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = drv.execute_script(script)
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


IMGS = "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.hidden])"
ALL_LOADED = "return Array.from(document.images).every(i => i.hidden || i.complete)"


# every "no figure ..." / "no image samples ..." placeholder and "nothing to show" fragment that is visible
MISSING = ("return Array.from(document.querySelectorAll('.missing, [data-frag] p.muted'))"
           ".filter(e => e.offsetParent !== null).map(e => e.closest('figure, div[data-frag]').outerHTML.slice(0, 160))")


def _open(drv, page) -> None:
    drv.get(page.resolve().as_uri())
    _wait(drv, "return document.readyState === 'complete'")
    _wait(drv, ALL_LOADED)


def _first_load_checks(drv, drawn_layers: set[int]) -> None:
    """The first view has every figure: no placeholder is visible, and the layer menu offers only
    layers whose figures were drawn."""
    assert not drv.execute_script(MISSING), f"placeholders on first load: {drv.execute_script(MISSING)}"
    opts = drv.execute_script("return Array.from(document.querySelectorAll('#sel-layer option')).map(o => o.value)")
    assert {int(v) for v in opts} == drawn_layers
    imgs = drv.execute_script(IMGS)
    assert imgs and not [i for i in imgs if not i[0] or i[2] == 0 or i[3]]


def _screenshot(drv, path) -> None:
    drv.execute_script("window.scrollTo(0, 0)")
    height = min(int(drv.execute_script("return document.body.scrollHeight")), 9000)
    drv.set_window_size(1400, height)
    assert drv.save_screenshot(str(path)) and path.stat().st_size > 20000
    print(f"\nreport screenshot: {path}")


def test_image_report_first_load_has_every_figure(image_run, browser, tmp_path):
    """The image demo draws every third layer: the page must open on a drawn layer (here the one
    that is not the cal peak, so the sweep's best layer alone would show empty panels), offer
    only drawn layers and speak of patches, not tokens."""
    import pandas as pd

    from superactivators.evaluate.methods import MACRO
    from superactivators.report.html import build_report

    m = pd.read_csv(image_run.run_dir / "detection_metrics.csv")
    sa = m[(m["method"] == "superactivator") & (m["concept"] == MACRO)].sort_values(["cal_f1", "layer"],
                                                                                   ascending=[False, True])
    drawn = int(sa["layer"].iloc[-1])  # the worst layer on cal: the sweep's default would miss it
    page = build_report(image_run.run_dir, tmp_path / "r", formats=("png",), n_examples=2, workers=1, layers=[drawn])
    drv = browser
    _open(drv, page)
    _first_load_checks(drv, {drawn})
    legend = drv.execute_script("return document.querySelector('#concept .legend').textContent")
    assert "patch" in legend and "token" not in legend.lower() and "hover" not in legend.lower()
    severe = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"console errors: {severe}"
    _screenshot(drv, tmp_path / "image_report_screenshot.png")


def test_report_in_chromium(tiny_report_run, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    drv = browser
    _open(drv, tiny_report_run.page)
    from superactivators.store.runs import find_stages

    _first_load_checks(drv, {s.layer for s in find_stages(tiny_report_run.run_dir)})
    legend = drv.execute_script("return document.querySelector('#concept .legend').textContent")
    assert "token" in legend.lower()

    imgs = drv.execute_script(IMGS)
    assert len(imgs) >= 6
    bad = [i for i in imgs if not i[0] or i[2] == 0 or i[3]]
    assert not bad, f"images without a source, not decoded, or hidden: {bad}"

    # switching the concept swaps the concept figure and the example samples
    concept_img = drv.find_element(By.CSS_SELECTOR, "img[data-view='concept']")
    examples = drv.find_element(By.CSS_SELECTOR, "[data-frag='examples']")
    before, ex_before = concept_img.get_attribute("src"), examples.get_attribute("innerHTML")
    sel = Select(drv.find_element(By.ID, "sel-concept"))
    sel.select_by_index((sel.options.index(sel.first_selected_option) + 1) % len(sel.options))
    after = concept_img.get_attribute("src")
    assert after != before
    assert examples.get_attribute("innerHTML") != ex_before
    _wait(drv, "const i = document.querySelector(\"img[data-view='concept']\"); return i.complete && i.naturalWidth > 0")

    # switching the layer swaps the per-layer method comparison; the concept type swaps the summary bars
    layer_img = drv.find_element(By.CSS_SELECTOR, "img[data-view='methods_layer']")
    before = layer_img.get_attribute("src")
    lsel = Select(drv.find_element(By.ID, "sel-layer"))
    lsel.select_by_index((lsel.options.index(lsel.first_selected_option) + 1) % len(lsel.options))
    assert layer_img.get_attribute("src") != before
    best_img = drv.find_element(By.CSS_SELECTOR, "img[data-view='methods_best']")
    before = best_img.get_attribute("src")
    csel = Select(drv.find_element(By.ID, "sel-ct"))
    csel.select_by_index((csel.options.index(csel.first_selected_option) + 1) % len(csel.options))
    assert best_img.get_attribute("src") != before
    _wait(drv, ALL_LOADED)
    assert all(i[2] > 0 for i in drv.execute_script(IMGS))

    # sorting: clicking the f1 header of the best-layer table twice gives descending values
    table = drv.find_element(By.ID, "t-best")
    heads = [th.text.strip(" ▲▼") for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    col = heads.index("f1")
    th = table.find_elements(By.CSS_SELECTOR, "thead th")[col]
    th.click()
    th.click()
    vals = drv.execute_script(
        f"return Array.from(document.querySelectorAll('#t-best tbody tr')).map(r => parseFloat(r.cells[{col}].dataset.v))")
    assert vals == sorted(vals, reverse=True) and len(vals) > 10

    # filtering hides rows that do not match
    box = drv.find_element(By.CSS_SELECTOR, "input.filter[data-for='t-best']")
    box.send_keys("superactivator")
    rows = ("return Array.from(document.querySelectorAll('#t-best tbody tr')).filter(r => %s r.hidden)"
            ".map(r => r.textContent)")
    shown, hidden = drv.execute_script(rows % "!"), drv.execute_script(rows % "")
    assert shown and all("superactivator" in r for r in shown)
    assert hidden and not any("superactivator" in r for r in hidden)

    severe = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"console errors: {severe}"

    _screenshot(drv, tmp_path / "report_screenshot.png")
