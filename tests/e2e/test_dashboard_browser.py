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


def _error_view(frame):
    """A view provider drawing as many instances as the row counts (what SampleViews does
    from the stored facts)."""
    from armbench_segmentation.analysis.report import GALLERY_KINDS, ErrorView

    columns = {kind: column for kind, column, _ in GALLERY_KINDS.values()}
    rows = frame.set_index("sample_id")

    def provider(sample_id, kind):
        ids = tuple(range(int(rows.loc[sample_id, columns[kind]])))
        return ErrorView(_image(sample_id, "over" if kind == "over_segmented" else "under"), kind, ids, ids, ids)
    return provider


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    out = tmp_path_factory.mktemp("dash")
    frame, emb = _fake_frame()
    xy = project(frame, emb)
    clusters = cluster(frame, emb, n_clusters=4)
    picks = select_for_labeling(frame, emb, budget=10, model_hash="test-model")
    pruning = select_for_pruning(frame, emb, clusters.labels, keep_fraction=0.7)
    galleries = [build_gallery(frame, k, _error_view(frame), n=4, out_dir=out) for k in ("over", "under")]
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


# ---------------------------------------------------------------------------- hostile names
# Strings that break a page or a spreadsheet when they are not escaped. A file name cannot
# hold "/", so the ones with a slash become folders under images/ (the file_name column keeps
# the whole string; the sample id is the last component's stem).
HOSTILE_FILES = {
    "test_a.jpg": "<!--<script>.jpg",
    "test_b.jpg": "&amp;.jpg",
    "test_c.jpg": "</script><script>alert(1)</script>.jpg",
    "val_a.jpg": "<b>x</b>.jpg",
    "val_portrait.jpg": "=HYPERLINK(\"http:/x\").jpg",
    "train_a.jpg": "a\u2028b\u2029c.jpg",
    "train_b.png": "@cmd.png",
    "train_c.jpg": "-2+3.jpg",
}
HOSTILE_IDS = ["<!--<script>", "</script><script>alert(1)</script>", "<b>x</b>", "&amp;", "=HYPERLINK(\"http://x\")",
               "a\u2028b", "x\u2029y", "-2+3", "+1", "@cmd", "\tTAB", "\rCR", "plain"]

# Plotly.Fx.hover is throttled (one label per 50 ms): hover each point in turn, 80 ms apart,
# and read the label plotly drew (its text content: what the user sees).
HOVER_JS = """
const done = arguments[arguments.length - 1];
const gd = document.getElementById('map'); const D = window.armbenchDashboard.data; const out = []; const todo = [];
for (let c = 0; c < gd.data.length; c++) for (let p = 0; p < gd.data[c].x.length; p++) todo.push([c, p]);
function step(k) {
  if (k > 0) {
    const [c, p] = todo[k - 1]; const t = gd.querySelector('.hoverlayer .hovertext text');
    out.push([D.ids[gd.data[c].customdata[p]], t ? t.textContent : null]);
    Plotly.Fx.unhover(gd);
  }
  if (k === todo.length) { done(out); return; }
  setTimeout(() => { Plotly.Fx.hover(gd, [{curveNumber: todo[k][0], pointNumber: todo[k][1]}]);
                     setTimeout(() => step(k + 1), 80); }, 80);
}
step(0);
"""


def _load(name, path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """``armbench analyze`` (the real pipeline, tiny ONNX model) over the tiny dataset with
    every image renamed to a hostile name. Returns the output folder."""
    import json
    import os

    from armbench_segmentation import cli
    from armbench_segmentation import config as config_module

    tests = Path(__file__).resolve().parents[1]
    conftest = _load("_hostile_conftest", tests / "conftest.py")
    runner_helpers = _load("_hostile_test_runner", tests / "analysis" / "test_runner.py")
    base = tmp_path_factory.mktemp("hostile")
    ds = conftest.build_tiny_dataset(base / "armbench")
    for split_file in ("train.json", "val.json", "test.json"):
        data = ds.json(split_file)
        for img in data["images"]:
            new = HOSTILE_FILES[img["file_name"]]
            target = ds.root / "images" / new
            target.parent.mkdir(parents=True, exist_ok=True)
            (ds.root / "images" / img["file_name"]).rename(target)
            img["file_name"] = new
        ds.write_json(split_file, data)
    model = runner_helpers.build_model(base / "m.onnx")
    cfg = base / "config.yaml"
    cfg.write_text("data:\n  image_size: 64\n  train_size: all\n  val_size: all\n  unlabeled_size: all\n"
                   "model:\n  device: cpu\n  num_threads: 1\nanalysis:\n  n_clusters: 2\n  label_budget: 3\n")
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith("ARMBENCH_"):
                mp.delenv(k)
        mp.setenv("HOME", str(base / "home"))
        mp.setenv("XDG_CACHE_HOME", str(base / "cache"))
        mp.setattr(config_module, "USER_CONFIG_PATH", base / "home" / "no-config.yaml")
        rc = cli.main(["analyze", "--no-progress", "--dataset", str(ds.root), "--model", str(model),
                       "--config", str(cfg), "--out", str(out)])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert sum(c.get("error", 0) for c in run["counts"].values()) == 0, run["counts"]
    return out


def _open(browser, path):
    from selenium.common.exceptions import NoAlertPresentException

    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(Path(path).resolve().as_uri())
    browser.implicitly_wait(5)
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - no script of the data ran
    assert browser.execute_script("return typeof window.armbenchDashboard") == "object"


def _assert_literal_hover(browser, expected_ids):
    browser.set_script_timeout(120)
    pairs = browser.execute_async_script(HOVER_JS)
    assert sorted(p[0] for p in pairs) == sorted(expected_ids)
    for sample_id, shown in pairs:
        # the label is the id as typed, then "<metric>: <value>" on the next line; SVG text
        # draws a carriage return as a space (no markup involved)
        literal = sample_id.replace("\r", " ")
        assert shown is not None and shown.startswith(literal), (sample_id, shown)
        assert ": " in shown[len(literal):], (sample_id, shown)


def test_hostile_run_dashboard_shows_every_point_literally(hostile_run, browser):
    samples = pd.read_csv(hostile_run / "samples.csv", keep_default_na=False)
    _open(browser, hostile_run / "dashboard.html")
    assert browser.execute_script(POINTS_JS) == len(samples) == len(HOSTILE_FILES)
    ids = browser.execute_script("return window.armbenchDashboard.data.ids")
    assert sorted(ids) == sorted(Path(f).stem.split("/")[-1] if "/" not in f else f.split("/")[-1].rsplit(".", 1)[0]
                                 for f in HOSTILE_FILES.values())
    _assert_literal_hover(browser, ids)
    # the side panel and the picks table show the ids as text
    browser.execute_script("document.getElementById('map').emit('plotly_hover', {points: [{customdata: 0}]});")
    assert f"sample: {ids[0]}" in browser.execute_script("return document.getElementById('panel').textContent")
    picks = pd.read_csv(hostile_run / "label_picks.csv", keep_default_na=False)
    cells = browser.execute_script("return Array.from(document.querySelectorAll('#picks-table tbody tr'))"
                                   ".map(tr => tr.children[2].textContent)")
    assert cells == [s[1:] if s.startswith("'") else s for s in picks["sample_id"].astype(str)]
    assert not browser.find_elements("css selector", "#picks-table b, #prune-drop-table b")  # <b>x</b> is text
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"console errors: {severe}"


def test_hostile_sample_ids_in_a_dashboard(browser, tmp_path):
    n = len(HOSTILE_IDS)
    frame, emb = _fake_frame(n=n * 4, seed=3)
    frame["sample_id"] = [HOSTILE_IDS[i % n] + ("" if i < n else f" #{i // n}") for i in range(len(frame))]
    frame["file_name"] = frame["sample_id"] + ".jpg"
    frame["meta_tote_color"] = [HOSTILE_IDS[i % n] for i in range(len(frame))]
    xy = project(frame, emb)
    clusters = cluster(frame, emb, n_clusters=3)
    picks = select_for_labeling(frame, emb, budget=5, model_hash="</script><b>m</b>")
    pruning = select_for_pruning(frame, emb, clusters.labels, keep_fraction=0.7)
    path = write_report(tmp_path, frame, xy, clusters, picks, pruning, [], thumbnails=None,
                        provenance={"model_hash": "</script><script>alert(2)</script>"})
    html_text = path.read_text()
    data = html_text.split('<script type="application/json" id="map-data">', 1)[1].split("</script>", 1)[0]
    assert not any(ch in data for ch in "<>&\u2028\u2029")  # escaped as \\u003c ...
    _open(browser, path)
    assert browser.execute_script(POINTS_JS) == len(frame)
    assert browser.execute_script("return window.armbenchDashboard.data.ids") == frame["sample_id"].tolist()
    _assert_literal_hover(browser, frame["sample_id"].tolist())
    browser.execute_script("document.getElementById('map').emit('plotly_hover', {points: [{customdata: 2}]});")
    panel = browser.execute_script("return document.getElementById('panel').textContent")
    assert f"sample: {frame['sample_id'][2]}" in panel and f"meta_tote_color: {frame['meta_tote_color'][2]}" in panel
    assert "alert(2)" in browser.find_element("id", "provenance").text
    severe = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not severe, f"console errors: {severe}"
