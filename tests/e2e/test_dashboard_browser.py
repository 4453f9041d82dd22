"""The dashboard in a real headless Chromium, opened from the file system: no console errors,
right point counts, filters, colour by cluster / category, sortable tables, the larger view
with its overlays, and the side panel following the filters."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armbench_segmentation.analysis.clustering import cluster
from armbench_segmentation.analysis.projection import project
from armbench_segmentation.analysis.report import SampleLayers, build_gallery, layer_from_drawing, write_report
from armbench_segmentation.analysis.selection import select_for_labeling, select_for_pruning
from armbench_segmentation.structures import Instances
from armbench_segmentation.visualize import draw_comparison


def browser_errors(driver):
    """SEVERE console entries since the last read (the browser fixture is tests/e2e/conftest.py's)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]

pytestmark = pytest.mark.e2e


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


SIDE = 128


def _layers(sample_id):
    """The larger view as write_dashboard builds it: draw_comparison of GT and predictions."""
    masks = np.zeros((2, SIDE, SIDE), bool)
    masks[0, 10:60, 10:60] = True
    masks[1, 50:120, 60:120] = True
    boxes = np.array([[10, 10, 60, 60], [60, 50, 120, 120]], np.float32)
    gt = Instances(boxes=boxes, class_ids=[0, 0], image_size=(SIDE, SIDE), masks=masks)
    pred = Instances(boxes=boxes + 4, class_ids=[0, 0], image_size=(SIDE, SIDE), masks=np.roll(masks, 4, axis=(1, 2)),
                     scores=np.array([0.9, 0.6], np.float32))
    image = np.full((SIDE, SIDE, 3), 120, np.uint8)
    return SampleLayers(image, layer_from_drawing(lambda im: draw_comparison(im, gt, None), (SIDE, SIDE)),
                        layer_from_drawing(lambda im: draw_comparison(im, None, pred), (SIDE, SIDE)))


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    out = tmp_path_factory.mktemp("dash")
    frame, emb = _fake_frame()
    xy = project(frame, emb, method="pca")
    clusters = cluster(frame, emb, n_clusters=4)
    picks = select_for_labeling(frame, emb, budget=10, model_hash="test-model")
    pruning = select_for_pruning(frame, emb, clusters.labels, keep_fraction=0.7)
    galleries = [build_gallery(frame, k, _error_view(frame), n=4, out_dir=out) for k in ("over", "under")]
    path = write_report(out, frame, xy, clusters, picks, pruning, galleries, thumbnails=_image, layers=_layers,
                        provenance={"model_hash": "test-model", "model": str(out / "m.onnx")}, max_views=40)
    return path, frame, picks, clusters


POINTS_JS = ("const d = document.getElementById('map');"
             "return (d.data || []).reduce((s, t) => s + t.x.length, 0);")
TRACES_JS = ("return document.getElementById('map').data.map(t => [t.name, t.customdata.slice()]);")


def _open_page(browser, path):
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(Path(path).resolve().as_uri())
    browser.implicitly_wait(5)
    assert browser.execute_script("return typeof window.armbenchDashboard") == "object"


def _select(browser, element_id, value):
    browser.execute_script(f"const s = document.getElementById('{element_id}'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('change'));", value)


def test_dashboard_renders_filters_and_has_no_console_errors(dashboard, browser, tmp_path):
    path, frame, _, _ = dashboard
    html = path.read_text()
    # plotly.js once beside the page (relative src: opens from file://), nothing else external
    assert '<script src="assets/plotly.min.js"></script>' in html and "://" not in "".join(
        l for l in html.splitlines() if "src=" in l and "data-" not in l)
    assert (path.parent / "assets" / "plotly.min.js").stat().st_size > 1_000_000 and len(html) < 300_000
    assert str(path.parent) not in html and str(Path.home()) not in html
    _open_page(browser, path)
    assert browser.execute_script(POINTS_JS) == len(frame)

    # untick "unlabeled": the visible count drops by exactly the unlabeled rows
    browser.find_element("id", "split-unlabeled").click()
    n_unl = int((frame["split"] == "unlabeled").sum())
    assert browser.execute_script(POINTS_JS) == len(frame) - n_unl
    browser.find_element("id", "split-unlabeled").click()
    assert browser.execute_script(POINTS_JS) == len(frame)

    # colour by another metric keeps every point; the hover panel shows the thumbnail file
    _select(browser, "color-by", "unc_mask_entropy")
    assert browser.execute_script(POINTS_JS) == len(frame)
    browser.execute_script("document.getElementById('map').emit('plotly_hover', {points: [{customdata: 0}]});")
    assert browser.execute_script("const i = document.querySelector('#panel img');"
                                  "return i && i.complete ? i.naturalWidth : -1") == 96
    assert "img0000" in browser.find_element("id", "panel").text

    # tables and galleries are there; gallery images load from the run folder
    assert len(browser.find_elements("css selector", "#picks-table tbody tr")) == 10
    assert len(browser.find_elements("css selector", "#cluster-table tbody tr")) == 4
    widths = browser.execute_script("return Array.from(document.querySelectorAll('.gallery img'))"
                                    ".map(i => { i.loading = 'eager'; return i.src; })")
    assert len(widths) == 8 and all(w.startswith("file://") and "/assets/dashboard/gallery/" in w for w in widths)

    shot = tmp_path / "dashboard.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    assert not browser_errors(browser), "console errors"


def test_recolour_by_cluster_and_by_category(dashboard, browser):
    path, frame, _, clusters = dashboard
    _open_page(browser, path)
    _select(browser, "color-by", "cluster")
    traces = browser.execute_script(TRACES_JS)
    labels = np.asarray(clusters.labels)
    assert sorted(name for name, _ in traces) == sorted(f"cluster {c}" for c in set(labels))
    for name, rows in traces:  # each legend entry holds exactly that cluster's samples
        c = int(name.split()[1])
        assert sorted(rows) == np.flatnonzero(labels == c).tolist()
    _select(browser, "color-by", "meta_tote_color")
    traces = dict(browser.execute_script(TRACES_JS))
    for colour in ("yellow", "blue"):
        assert sorted(traces[colour]) == np.flatnonzero(frame["meta_tote_color"] == colour).tolist()
    colours = browser.execute_script("return document.getElementById('map').data.map(t => t.marker.color)")
    assert len(set(colours)) == 2  # one colour per level
    assert not browser_errors(browser), "console errors"


def test_tables_sort_by_header_click(dashboard, browser):
    path, _, picks, _ = dashboard
    _open_page(browser, path)
    header = browser.find_elements("css selector", "#picks-table thead th")[3]  # score
    assert header.text.startswith("score")
    cells = "return Array.from(document.querySelectorAll('#picks-table tbody tr')).map(tr => tr.children[2].textContent)"
    header.click()
    by_score = picks.picks.sort_values(["score"], kind="stable")["sample_id"].tolist()
    assert browser.execute_script(cells) == by_score
    header.click()  # again: descending
    assert browser.execute_script(cells) == picks.picks.sort_values(["score"], ascending=False,
                                                                    kind="stable")["sample_id"].tolist()
    sample_header = browser.find_elements("css selector", "#picks-table thead th")[2]
    sample_header.click()  # text column: alphabetical
    assert browser.execute_script(cells) == sorted(picks.picks["sample_id"].tolist())
    # the cluster table sorts by size, numerically
    size_header = browser.find_elements("css selector", "#cluster-table thead th")[1]
    size_header.click()
    sizes = browser.execute_script("return Array.from(document.querySelectorAll('#cluster-table tbody tr'))"
                                   ".map(tr => Number(tr.children[1].textContent))")
    assert sizes == sorted(sizes) and len(sizes) == 4
    assert not browser_errors(browser), "console errors"


LAYERS_JS = """
const ids = ['view-image', 'view-gt', 'view-pred'];
return ids.map(id => { const i = document.getElementById(id);
  return [i.complete ? i.naturalWidth : -1, getComputedStyle(i).display, i.getAttribute('src')]; });
"""


def test_larger_view_opens_with_overlays(dashboard, browser):
    path, frame, picks, _ = dashboard
    _open_page(browser, path)
    first = browser.find_element("css selector", "#picks-table tbody tr")
    sid = first.find_elements("css selector", "td")[2].text
    row = int(frame.index[frame["sample_id"] == sid][0])
    first.click()
    assert browser.find_element("id", "viewer").is_displayed()
    assert sid in browser.find_element("id", "viewer-title").text
    import time

    for _ in range(50):  # the three files load from the assets folder
        layers = browser.execute_script(LAYERS_JS)
        if all(w > 0 for w, _, _ in layers):
            break
        time.sleep(0.1)
    assert [w for w, _, _ in layers] == [SIDE, SIDE, SIDE] and all(d != "none" for _, d, _ in layers)
    assert layers[1][2].endswith(f"views/{row}_gt.png") and layers[2][2].endswith(f"views/{row}_pred.png")
    # the layers are what the engine drew: the page's PNG overlays decode to the provider's layers
    import cv2

    gt_png = cv2.imread(str(path.parent / layers[1][2]), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(gt_png, cv2.COLOR_BGRA2RGBA), _layers(sid).gt)
    browser.find_element("id", "show-gt").click()  # toggle the ground truth off
    assert browser.execute_script(LAYERS_JS)[1][1] == "none" and browser.execute_script(LAYERS_JS)[2][1] != "none"
    browser.find_element("id", "show-pred").click()
    assert browser.execute_script(LAYERS_JS)[2][1] == "none"
    browser.find_element("id", "show-gt").click()
    browser.find_element("id", "show-pred").click()
    # next / previous walk the samples shown on the map that have a view; Esc closes
    browser.find_element("id", "viewer-next").click()
    assert sid not in browser.find_element("id", "viewer-title").text
    browser.find_element("id", "viewer-close").click()
    assert not browser.find_element("id", "viewer").is_displayed()
    # a map click opens it too; a sample without an embedded view says so and how to see it
    without = browser.execute_script("return window.armbenchDashboard.data.view.indexOf(0)")
    assert without >= 0
    browser.execute_script(f"document.getElementById('map').emit('plotly_click', {{points: [{{customdata: {without}}}]}});")
    assert "armbench serve" in browser.find_element("id", "viewer-info").text
    assert not browser_errors(browser), "console errors"


def test_filtering_hides_the_side_panels_sample(dashboard, browser):
    path, frame, _, clusters = dashboard
    _open_page(browser, path)
    i = int(np.flatnonzero(frame["split"] == "unlabeled")[0])
    browser.execute_script(f"document.getElementById('map').emit('plotly_hover', {{points: [{{customdata: {i}}}]}});")
    assert frame["sample_id"][i] in browser.find_element("id", "panel").text
    browser.find_element("id", "split-unlabeled").click()
    panel = browser.find_element("id", "panel").text
    assert frame["sample_id"][i] not in panel and "hidden by the filters" in panel
    assert browser.execute_script("return window.armbenchDashboard.current()") is None
    browser.find_element("id", "split-unlabeled").click()
    # the cluster filter too, and a sample that stays visible stays in the panel
    labels = np.asarray(clusters.labels)
    j = int(np.flatnonzero(labels == labels[0])[1])
    browser.execute_script(f"document.getElementById('map').emit('plotly_hover', {{points: [{{customdata: {j}}}]}});")
    _select(browser, "cluster-filter", str(labels[0]))
    assert frame["sample_id"][j] in browser.find_element("id", "panel").text
    _select(browser, "cluster-filter", str((labels[0] + 1) % 4))
    assert frame["sample_id"][j] not in browser.find_element("id", "panel").text
    assert browser.execute_script(POINTS_JS) == int((labels == (labels[0] + 1) % 4).sum())
    assert not browser_errors(browser), "console errors"


def test_page_shared_without_its_assets_says_what_is_missing(dashboard, browser, tmp_path):
    """Only the HTML copied elsewhere: the map says plotly.min.js is missing, the tables still sort."""
    import shutil

    path, _, picks, _ = dashboard
    alone = tmp_path / "dashboard.html"
    shutil.copy(path, alone)
    _open_page(browser, alone)
    assert "assets/plotly.min.js" in browser.find_element("id", "map").text
    browser.find_elements("css selector", "#picks-table thead th")[3].click()
    cells = browser.execute_script("return Array.from(document.querySelectorAll('#picks-table tbody tr'))"
                                   ".map(tr => tr.children[2].textContent)")
    assert cells == picks.picks.sort_values(["score"], kind="stable")["sample_id"].tolist()
    errors = browser_errors(browser)  # the missing files' loads, nothing thrown by the page's own scripts
    assert any("assets/plotly.min.js" in e["message"] for e in errors), errors
    odd = [e for e in errors if not (e["source"] == "network" and "/assets/" in e["message"])]
    assert not odd, odd


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
    ds.rename_images(HOSTILE_FILES)
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
    # no absolute path of the machine: not the run folder, the dataset or model beside it, nor $HOME
    page = (hostile_run / "dashboard.html").read_text()
    base = hostile_run.parent
    for path in (base, base.resolve(), Path.home(), base / "home"):
        assert str(path) not in page, path
    assert "RUN_DIR" in page or "…/" in page  # the provenance names them relatively
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
    # the larger view of a hostile sample: its title as text, its three layers load
    browser.execute_script("window.armbenchDashboard.openViewer(0)")
    assert browser.find_element("id", "viewer-title").text.startswith(ids[0].replace("\r", " ").strip()[:3])
    assert browser.execute_script("return window.armbenchDashboard.data.view[0]") == 1
    assert not browser_errors(browser), "console errors"


def test_hostile_sample_ids_in_a_dashboard(browser, tmp_path):
    n = len(HOSTILE_IDS)
    frame, emb = _fake_frame(n=n * 4, seed=3)
    frame["sample_id"] = [HOSTILE_IDS[i % n] + ("" if i < n else f" #{i // n}") for i in range(len(frame))]
    frame["file_name"] = frame["sample_id"] + ".jpg"
    frame["meta_tote_color"] = [HOSTILE_IDS[i % n] for i in range(len(frame))]
    xy = project(frame, emb, method="pca")
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
    assert not browser_errors(browser), "console errors"
