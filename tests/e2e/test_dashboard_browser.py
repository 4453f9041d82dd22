"""The dashboard in a real headless Chromium: no console errors, right point counts, filters work."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armbench_segmentation.analysis.clustering import cluster
from armbench_segmentation.analysis.projection import project
from armbench_segmentation.analysis.report import build_gallery, write_report
from armbench_segmentation.analysis.selection import select_for_labeling, select_for_pruning

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _fake_frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 32)).astype(np.float32)
    emb[: n // 4] += 3
    split = rng.choice(["train", "val", "unlabeled"], n, p=[0.5, 0.2, 0.3])
    frame = pd.DataFrame({
        "sample_id": [f"img{i:04d}" for i in range(n)], "file_name": [f"img{i:04d}.jpg" for i in range(n)],
        "split": split, "loss": rng.uniform(size=n).round(3),
        "over_segmented_count": rng.integers(0, 3, n), "under_segmented_count": rng.integers(0, 3, n),
        "f1": rng.uniform(size=n), "unc_mask_entropy": rng.uniform(size=n), "unc_margin": rng.uniform(size=n),
        "meta_n_objects": rng.integers(3, 30, n), "meta_tote_color": rng.choice(["yellow", "blue"], n),
    })
    frame["over_segmented"] = (frame["over_segmented_count"] > 0).astype(int)
    frame["under_segmented"] = (frame["under_segmented_count"] > 0).astype(int)
    unl = frame["split"] == "unlabeled"
    frame.loc[unl, ["loss", "f1", "over_segmented_count", "under_segmented_count", "over_segmented",
                    "under_segmented"]] = np.nan
    return frame, emb


def _image(sample_id, kind=None):
    rng = np.random.default_rng(int(sample_id[3:]))
    img = np.zeros((120, 160, 3), np.uint8)
    img[:] = rng.integers(40, 220, 3)
    img[30:90, 40:120] = (255, 200, 0) if kind == "over" else (0, 120, 255)
    return img


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    out = tmp_path_factory.mktemp("dash")
    frame, emb = _fake_frame()
    xy = project(frame, emb)
    clusters = cluster(frame, emb, n_clusters=4)
    picks = select_for_labeling(frame, emb, budget=10, model_hash="test-model")
    pruning = select_for_pruning(frame, emb, clusters.labels, keep_fraction=0.7)
    galleries = [build_gallery(frame, k, _image, n=4, out_dir=out) for k in ("over", "under")]
    path = write_report(out, frame, xy, clusters, picks, pruning, galleries, thumbnails=_image,
                        provenance={"model_hash": "test-model"})
    return path, frame


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium/chromedriver not installed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    import tempfile

    profile = tempfile.mkdtemp(prefix="armbench-chrome-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


POINTS_JS = ("const d = document.getElementById('map');"
             "return (d.data || []).reduce((s, t) => s + t.x.length, 0);")


def test_dashboard_renders_filters_and_has_no_console_errors(dashboard, browser, tmp_path):
    path, frame = dashboard
    html = path.read_text()
    assert "<script src=" not in html and "<link rel=\"stylesheet\"" not in html  # offline: all inline
    browser.get(Path(path).resolve().as_uri())
    browser.implicitly_wait(5)
    assert browser.execute_script(POINTS_JS) == len(frame)

    # untick "unlabeled": the visible count drops by exactly the unlabeled rows
    browser.find_element("id", "split-unlabeled").click()
    n_unl = int((frame["split"] == "unlabeled").sum())
    assert browser.execute_script(POINTS_JS) == len(frame) - n_unl
    browser.find_element("id", "split-unlabeled").click()
    assert browser.execute_script(POINTS_JS) == len(frame)

    # colour by another metric keeps every point; the hover panel shows a thumbnail
    browser.execute_script("const s = document.getElementById('color-by'); s.value = 'unc_mask_entropy';"
                           "s.dispatchEvent(new Event('change'));")
    assert browser.execute_script(POINTS_JS) == len(frame)
    browser.execute_script("document.getElementById('map').emit('plotly_hover', "
                           "{points: [{customdata: 0}]});")
    assert browser.execute_script("return document.querySelectorAll('#panel img').length") == 1
    assert "img0000" in browser.find_element("id", "panel").text

    # tables and galleries are there
    assert len(browser.find_elements("css selector", "#picks-table tbody tr")) == 10
    assert len(browser.find_elements("css selector", "#cluster-table tbody tr")) == 4
    assert len(browser.find_elements("css selector", ".gallery img")) == 8

    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"console errors: {severe}"
