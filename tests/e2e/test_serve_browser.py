"""``armbench serve`` in a real headless Chromium, over a run whose file names are hostile:
the page loads without console errors,
clicking a point (a real mouse click) opens its sample view with the image and the stored
instance list, and a box and a lasso selection dragged with the mouse are saved and
exported as ids CSVs holding exactly the samples inside them (computed here from the
points' pixel positions through the plot's own axis transform)."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


def _wait(browser, script: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``armbench serve`` (a subprocess on a free port) over the tiny run with every image
    renamed to a hostile name (the static dashboard test's list: markup, entities, formulas,
    U+2028, a '/' making a sub-folder)."""
    from test_dashboard_browser import HOSTILE_FILES

    from armbench_segmentation.explore.app import spawn

    explore_conftest = Path(__file__).resolve().parents[1] / "explore" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_serve_explore_conftest", explore_conftest)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    run_dir = module.make_tiny_run(tmp_path_factory.mktemp("serve-browser"), rename=HOSTILE_FILES)
    proc, url = spawn(run_dir)
    yield run_dir, url
    proc.terminate()
    proc.wait(timeout=10)


# pixel position (relative to the map element's centre) of every drawn point, from plotly's axes
POSITIONS_JS = """
const gd = document.getElementById('map'); const r = gd.getBoundingClientRect();
const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis; const P = window.armbenchExplorer.P; const out = [];
window.armbenchExplorer.map.visible().forEach(i => out.push([i, P.ids[i], P.splits[P.split[i]],
  xa._offset + xa.l2p(P.x[i]) - r.width / 2, ya._offset + ya.l2p(P.y[i]) - r.height / 2]));
return out;
"""


def test_serve_page_sample_view_box_and_lasso_selection_exports(served, browser, console_errors):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from armbench_segmentation.analysis.store import ResultsStore

    run_dir, url = served
    samples = pd.read_parquet(run_dir / "samples.parquet")
    console_errors(browser)
    browser.get(url)
    _wait(browser, "return window.armbenchExplorer && window.armbenchExplorer.tablesReady")
    drawn = browser.execute_script("return document.getElementById('map').data.reduce((s, t) => s + t.x.length, 0)")
    assert drawn == len(samples)
    assert browser.execute_script("return document.getElementById('map').data.every(t => t.type === 'scattergl')")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sample-table tbody tr")) == len(samples)
    html = browser.page_source
    assert str(run_dir) not in html and "/tmp/" not in html  # no absolute path of this machine

    # a real click on one point -> its sample view, image loaded, the stored instance list
    positions = browser.execute_script(POSITIONS_JS)
    target = next(p for p in positions if p[2] == "train")
    map_el = browser.find_element(By.ID, "map")
    ActionChains(browser).move_to_element_with_offset(map_el, int(target[3]), int(target[4])).pause(0.3).click().perform()
    _wait(browser, "return !document.getElementById('sample-view').hidden")
    _wait(browser, "const i = document.getElementById('sample-img'); return i.complete && i.naturalWidth > 0")
    title = browser.execute_script("return document.getElementById('sample-title').textContent")
    clicked = next(p for p in positions if title == f"{p[1]} ({p[2]})")  # a point at the same place may win
    store = ResultsStore(run_dir / "results.sqlite")
    store.run_key = store.runs()[-1]
    facts = store.sample_facts(clicked[2], clicked[1])
    rows = browser.find_elements(By.CSS_SELECTOR, "#instance-table tbody tr")
    assert len(rows) == len(facts["instances"]) > 0
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [i["kind"] for i in facts["instances"]]
    # an error-kind toggle reloads the image with that kind
    browser.find_element(By.ID, "err-missed").click()
    _wait(browser, "return document.getElementById('sample-img').src.includes('error=missed')")

    # sort the table by loss (a header click), open its first row; next / previous follow that order
    browser.find_element(By.CSS_SELECTOR, '#sample-table th[data-key="loss"]').click()
    order = samples.sort_values("loss", kind="stable", na_position="last")
    titles = [f"{sid} ({split})" for sid, split in zip(order["sample_id"], order["split"])]
    cells = browser.execute_script("return Array.from(document.querySelectorAll('#sample-table tbody tr'))"
                                   ".map(tr => tr.children[0].textContent + ' (' + tr.children[1].textContent + ')')")
    assert cells == titles
    browser.find_elements(By.CSS_SELECTOR, "#sample-table tbody tr")[0].click()
    title_is = "return document.getElementById('sample-title').textContent === {}"
    _wait(browser, title_is.format(json.dumps(titles[0])))
    browser.find_element(By.ID, "sample-next").click()
    _wait(browser, title_is.format(json.dumps(titles[1])))
    browser.find_element(By.ID, "sample-prev").click()
    _wait(browser, title_is.format(json.dumps(titles[0])))

    # a range filter on a column: exactly the samples in the range stay on the map
    losses = sorted(set(samples["loss"].dropna()))
    cut_loss = (losses[len(losses) // 2 - 1] + losses[len(losses) // 2]) / 2
    browser.execute_script("const s = document.getElementById('range-column'); s.value = 'loss';"
                           f"document.getElementById('range-max').value = '{cut_loss}';"
                           "s.dispatchEvent(new Event('change'));")
    n_in = int((samples["loss"] <= cut_loss).sum())
    _wait(browser, f"return window.armbenchExplorer.map.visible().length === {n_in}")
    browser.execute_script("const s = document.getElementById('range-column'); s.value = '';"
                           "s.dispatchEvent(new Event('change'));")
    _wait(browser, f"return window.armbenchExplorer.map.visible().length === {len(samples)}")

    # box selection with a real drag in select mode: the box around the left half of the points
    time.sleep(0.5)
    positions = browser.execute_script(POSITIONS_JS)
    browser.find_element(By.CSS_SELECTOR, '.modebar-btn[data-val="select"]').click()
    xs = sorted(p[3] for p in positions)
    cut = (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2
    ys = [p[4] for p in positions]
    x0, y0, x1, y1 = xs[0] - 15, min(ys) - 15, cut, max(ys) + 15
    expected = {(p[2], p[1]) for p in positions if x0 <= p[3] <= x1 and y0 <= p[4] <= y1}
    assert 0 < len(expected) < len(samples)
    (ActionChains(browser).move_to_element_with_offset(map_el, int(x0), int(y0)).click_and_hold()
     .move_by_offset(int((x1 - x0) / 2), int((y1 - y0) / 2)).move_by_offset(int((x1 - x0) / 2), int((y1 - y0) / 2))
     .release().perform())
    _wait(browser, f"return document.getElementById('sel-count').textContent === '{len(expected)} selected'")
    browser.find_element(By.ID, "sel-name").send_keys("left-half")
    browser.find_element(By.ID, "sel-save").click()
    _wait(browser, "return document.querySelector('#sel-list button[data-name=\"left-half\"]')")
    browser.find_element(By.CSS_SELECTOR, '#sel-list button[data-name="left-half"]').click()
    _wait(browser, "return document.querySelector('#export-status a[data-kind=\"ids\"]')")
    ids = pd.read_csv(run_dir / "selections" / "left-half.ids.csv", keep_default_na=False, dtype=str)
    # write_csv prefixes formula-like cells ("=...", "@...", "-2+3") with a quote; the rest is verbatim
    exported = {(sp, sid[1:] if sid.startswith("'") and sid[1:2] in "=+-@\t\r" else sid)
                for sp, sid in zip(ids["split"], ids["sample_id"])}
    assert exported == expected and len(ids) == len(expected)

    # lasso selection, a real drag around the other half of the points: a second selection
    browser.find_element(By.CSS_SELECTOR, '.modebar-btn[data-val="lasso"]').click()
    # (started away from the box: a drag that starts on a selection's outline edits that selection)
    lx0, lx1 = cut + 2, xs[-1] + 15
    rest = {(p[2], p[1]) for p in positions if lx0 < p[3] <= lx1 and y0 <= p[4] <= y1}
    assert rest and not rest & expected
    corners = [(lx1, y0), (lx1, y1), (lx0, y1), (lx0, y0), (lx1 - 1, y0)]
    chain = ActionChains(browser).move_to_element_with_offset(map_el, int(lx1), int(y0)).click_and_hold()
    here = corners[0]
    for corner in corners[1:]:
        for k in (1, 2, 3, 4):  # several moves per side: plotly's lasso follows the mouse path
            step = (here[0] + (corner[0] - here[0]) * k / 4, here[1] + (corner[1] - here[1]) * k / 4)
            chain.move_to_element_with_offset(map_el, int(step[0]), int(step[1]))
        here = corner
    chain.release().perform()
    selected_js = ("const S = window.armbenchExplorer; return S.selected.map(i => [S.P.splits[S.P.split[i]], S.P.ids[i]])"
                   ".filter(k => !" + json.dumps([list(k) for k in expected]) + ".some(e => e[0] === k[0] && e[1] === k[1]))"
                   ".length ? S.selected.map(i => [S.P.splits[S.P.split[i]], S.P.ids[i]]) : null")
    lasso_keys = {tuple(k) for k in _wait(browser, selected_js)}  # the box selection replaced by the lasso's
    assert lasso_keys == rest
    assert browser.find_element(By.ID, "sel-count").text == f"{len(rest)} selected"
    name_box = browser.find_element(By.ID, "sel-name")
    name_box.clear()
    name_box.send_keys("lasso-right")
    browser.find_element(By.ID, "sel-save").click()
    _wait(browser, "return document.querySelector('#sel-list button[data-name=\"lasso-right\"]')")
    browser.find_element(By.CSS_SELECTOR, '#sel-list button[data-name="lasso-right"]').click()
    _wait(browser, "return document.querySelector('#export-status a[data-kind=\"ids\"]')"
                   " && document.querySelector('#export-status a').textContent.includes('lasso-right')")
    ids = pd.read_csv(run_dir / "selections" / "lasso-right.ids.csv", keep_default_na=False, dtype=str)
    lassoed = {(sp, sid[1:] if sid.startswith("'") and sid[1:2] in "=+-@\t\r" else sid)
               for sp, sid in zip(ids["split"], ids["sample_id"])}
    assert lassoed == rest and len(ids) == len(rest)

    # the saved selection as a filter: exactly its samples stay on the map
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "selection-filter")).select_by_value("left-half")
    _wait(browser, f"return window.armbenchExplorer.map.visible().length === {len(expected)}")
    assert not console_errors(browser)


def test_hostile_names_are_shown_literally_and_their_samples_open(served, browser, console_errors):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    run_dir, url = served
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert any("<" in s for s in samples["sample_id"])  # the names really are hostile
    console_errors(browser)
    browser.get(url)
    _wait(browser, "return window.armbenchExplorer && window.armbenchExplorer.tablesReady")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - no script of the data ran
    cells = browser.execute_script("return Array.from(document.querySelectorAll('#sample-table tbody tr'))"
                                   ".map(tr => tr.children[0].textContent)")
    assert sorted(cells) == sorted(samples["sample_id"])
    assert not browser.find_elements(By.CSS_SELECTOR, "#sample-table b, #sample-table script")
    for k in range(len(samples)):
        row = browser.find_elements(By.CSS_SELECTOR, "#sample-table tbody tr")[k]
        sid = row.find_elements(By.TAG_NAME, "td")[0].text
        split = row.find_elements(By.TAG_NAME, "td")[1].text
        browser.execute_script("arguments[0].click()", row)
        expected = browser.execute_script("return arguments[0].children[0].textContent + ' (' + "
                                          "arguments[0].children[1].textContent + ')'", row)
        _wait(browser, f"return document.getElementById('sample-title').textContent === {json.dumps(expected)}")
        _wait(browser, "const i = document.getElementById('sample-img'); return i.complete && i.naturalWidth > 0")
        assert sid and split
    assert not console_errors(browser)
