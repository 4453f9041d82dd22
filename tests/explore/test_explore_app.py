"""The explorer's endpoints through Flask's test client, over a real run folder (tiny dataset,
tiny ONNX model, the real engine): what they return is checked against the run's own files
(samples.parquet, instances.parquet, samples.csv counts), images against their known sizes,
and hostile requests (unknown samples, traversal in every spelling, bad names, cross-site
writes, foreign Host headers) are refused without touching anything outside selections/."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from armbench_segmentation.explore.app import create_app
from armbench_segmentation.explore.run import MAX_SIDE, MIN_SIDE, ExploreRun
from armbench_segmentation.metrics.sample_evaluation import COUNT_COLUMNS, COUNTED_SIDE, ERROR_KINDS

# per error kind, the instance-row flag that marks the instances its count counts
FLAG = {"over_segmented": "over_segmented", "under_segmenting": "under_segmenting", "duplicate": "duplicate",
        "false_positive": "false_positive", "missed": "missed"}


@pytest.fixture(scope="module")
def run(tiny_run):
    r = ExploreRun(tiny_run)
    yield r
    r.close()


@pytest.fixture(scope="module")
def client(run):
    return create_app(run).test_client()


def _decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None, "not an image"
    return img


def test_points_and_columns_follow_samples_parquet(client, tiny_run):
    table = pd.read_parquet(tiny_run / "samples.parquet")
    p = client.get("/api/points").get_json()
    assert p["ids"] == table["sample_id"].tolist()
    assert [p["splits"][c] for c in p["split"]] == table["split"].tolist()
    np.testing.assert_allclose(p["x"], table["map_x"], rtol=1e-5)
    assert p["cluster"] == table["cluster"].tolist()
    loss = client.get("/api/column?name=loss").get_json()
    assert loss["kind"] == "numeric" and "training loss" in loss["definition"]
    expected = [None if pd.isna(v) else v for v in table["loss"]]
    assert [a is None for a in loss["values"]] == [b is None for b in expected]
    np.testing.assert_allclose([v for v in loss["values"] if v is not None], [v for v in expected if v is not None],
                               rtol=1e-4)
    tote = client.get("/api/column?name=meta_tote_color").get_json()
    assert tote["kind"] == "categorical"
    shown = [tote["categories"][c] if c >= 0 else None for c in tote["codes"]]
    assert shown == [None if pd.isna(v) else str(v) for v in table["meta_tote_color"]]
    cluster = client.get("/api/column?name=cluster").get_json()
    assert [int(cluster["categories"][c]) for c in cluster["codes"]] == table["cluster"].tolist()
    assert client.get("/api/column?name=nope").status_code == 404
    assert client.get("/api/column?name=sample_id").status_code == 404  # identity, not a colour


def test_meta_names_columns_with_definitions_and_no_absolute_path(client, tiny_run, run):
    meta = client.get("/api/meta").get_json()
    assert meta["n_samples"] == len(run.frame) and meta["run_key"] == run.run_key
    by_name = {c["name"]: c for c in meta["columns"]}
    assert by_name["cluster"]["kind"] == "categorical" and by_name["unc_mask_entropy"]["kind"] == "numeric"
    assert by_name["fp"]["definition"].startswith("predictions left unmatched")
    assert meta["error_kinds"] == list(ERROR_KINDS)
    texts = [client.get(u).get_data(as_text=True) for u in ("/api/meta", "/api/points", "/",
                                                            "/api/sample?split=val&id=val_a")]
    info = json.loads((tiny_run / "run.json").read_text())
    for text in texts:
        for path in (str(tiny_run), info["dataset_root"], info["model_path"], str(Path.home())):
            assert path not in text


def test_one_truth_instance_list_and_highlights_equal_the_stored_counts(client, tiny_run):
    counts = pd.read_csv(tiny_run / "samples.csv", keep_default_na=False)
    instances = pd.read_parquet(tiny_run / "instances.parquet")
    checked = 0
    for row in counts.itertuples(index=False):
        s = client.get("/api/sample", query_string={"split": row.split, "id": row.sample_id}).get_json()
        mine = instances[(instances["split"] == row.split) & (instances["sample_id"] == row.sample_id)]
        assert [(i["kind"], i["index"]) for i in s["instances"]] == list(zip(mine["kind"], mine["index"]))
        if row.split == "unlabeled":
            assert all(e["counted"] == 0 for e in s["errors"].values())
            continue
        for kind in ERROR_KINDS:
            e = s["errors"][kind]
            stored = int(getattr(row, COUNT_COLUMNS[kind]))
            flagged = [i["index"] for i in s["instances"] if i["kind"] == COUNTED_SIDE[kind] and i[FLAG[kind]]]
            assert e["counted"] == stored == e["stored_count"] == len(flagged), (row.sample_id, kind)
            assert sorted(e[COUNTED_SIDE[kind]]) == sorted(flagged)
            checked += stored
    assert checked > 0  # the tiny run has errors to check


def test_images_have_the_clamped_size_and_draw_exactly_the_chosen_layers(client, run):
    sample = {"split": "train", "id": "train_a"}  # 200 x 160 original
    get = lambda **q: client.get("/api/image", query_string={**sample, **q})  # noqa: E731
    assert _decode(get(side=100).data).shape[:2] == (80, 100)
    assert _decode(get(side=10**9).data).shape[:2] == (160, 200)  # MAX_SIDE clamp, never upscaled
    assert MAX_SIDE >= 200
    assert _decode(get(side=1).data).shape[:2] == (MIN_SIDE * 160 // 200, MIN_SIDE)
    assert _decode(get(side="abc").data).shape[:2] == (160, 200)
    plain = _decode(get(side=200).data).astype(int)
    both = _decode(get(side=200, layers="gt,pred").data).astype(int)
    heat = _decode(get(side=200, layers="heat").data).astype(int)
    assert np.abs(both - plain).mean() > 2 and np.abs(heat - plain).mean() > 2
    facts = run.store.sample_facts("train", "train_a")
    for kind in ERROR_KINDS:
        drawn = _decode(get(side=200, error=kind).data).astype(int)
        involved = facts["involved"][kind]["gt"] + facts["involved"][kind]["pred"]
        if involved:
            assert np.abs(drawn - plain).max() > 60, kind
        else:  # nothing involved: the plain image, pixel for pixel
            assert np.array_equal(drawn, plain), kind
    assert any(facts["involved"][k]["gt"] + facts["involved"][k]["pred"] for k in ERROR_KINDS)
    assert any(not (facts["involved"][k]["gt"] + facts["involved"][k]["pred"]) for k in ERROR_KINDS)
    assert get(layers="bogus").status_code == 400
    assert get(error="bogus").status_code == 400
    unlabeled = client.get("/api/image", query_string={"split": "unlabeled", "id": "test_a", "layers": "gt,pred,heat"})
    assert unlabeled.status_code == 200 and unlabeled.mimetype == "image/jpeg"


@pytest.mark.parametrize("query", [
    {"split": "train", "id": "nope"}, {"split": "val", "id": "train_a"}, {"split": "../train", "id": "train_a"},
    {"split": "train", "id": "../train_a"}, {"split": "train", "id": "train_a/../train_a"}, {"split": "train"}, {},
    {"split": "train", "id": "%2e%2e%2ftrain_a"}, {"split": "train", "id": "/etc/passwd"},
])
def test_unknown_or_hostile_sample_ids_are_404(client, query):
    for endpoint in ("/api/sample", "/api/image"):
        r = client.get(endpoint, query_string=query)
        assert r.status_code == 404 and r.get_json() == {"error": "no such sample in this run"}


@pytest.mark.parametrize("url", [
    "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/static/%2e%2e%2f%2e%2e%2frun.json",
    "/static/....//app.py", "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/api/selections/..%2frun.json",
    "/api/selections/../run.json", "/api/selections/%2e%2e/download/ids", "/api/selections/x/download/..%2f..%2frun.json",
    "/api/selections/%2e%2e%2f%2e%2e%2frun/download/ids", "/vendor/..%2f..%2frun.json", "/run.json", "/results.sqlite",
])
def test_no_directory_traversal(client, url, tiny_run):
    r = client.get(url, follow_redirects=True)  # werkzeug merges "//" with a redirect first
    assert r.status_code in (400, 404), (url, r.status_code)
    body = r.get_data()
    assert b"run_key" not in body and b"SQLite" not in body and b"root:" not in body and b"import" not in body


def test_selection_save_load_export_round_trip(client, run, tiny_run):
    from pycocotools.coco import COCO

    keys = [["train", "train_a"], ["val", "val_portrait"], ["unlabeled", "test_b"]]
    r = client.post("/api/selections", json={"name": "round-trip", "samples": keys + [keys[0]],
                                             "filter": {"splits": ["train", "val"], "note": "<b>x</b>"}})
    assert r.status_code == 201 and r.get_json() == {"name": "round-trip", "count": 3}
    assert "round-trip" in client.get("/api/selections").get_json()["selections"]
    stored = json.loads((tiny_run / "selections" / "round-trip.json").read_text())
    assert stored["run_key"] == run.run_key and stored["model"] == "m.onnx" and stored["filter"]["note"] == "<b>x</b>"
    assert [[s["split"], s["sample_id"]] for s in stored["samples"]] == keys and stored["created"].endswith("Z")
    again = client.post("/api/selections", json={"name": "round-trip", "samples": keys})
    assert again.status_code == 400 and "exists" in again.get_json()["error"]
    files = client.post("/api/selections/round-trip/export", json={}).get_json()["files"]
    assert files["ids"] == "selections/round-trip.ids.csv"  # relative to the run folder
    ids = pd.read_csv(tiny_run / files["ids"], keep_default_na=False)
    assert list(zip(ids["split"], ids["sample_id"])) == [tuple(k) for k in keys]
    download = client.get("/api/selections/round-trip/download/ids")
    assert download.status_code == 200 and download.get_data() == (tiny_run / files["ids"]).read_bytes()
    if "coco" in files:  # analysis.labeling is installed: COCO subset and Label Studio tasks
        coco = COCO(str(tiny_run / files["coco"]))
        names = {img["file_name"] for img in coco.dataset["images"]}
        assert names == {run.frame.iloc[run.index[tuple(k)]]["file_name"] for k in keys}
        tasks = json.loads((tiny_run / files["label_studio"]).read_text())
        assert len(tasks) == len(keys)


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "a\\b", ".hidden", "x" * 65, "a b", "<script>", "a..b",
                                  "name.json", "-lead", "trail-", "\u00e9t\u00e9", "nul\x00x", 7, None, ["a"]])
def test_bad_selection_names_are_refused_and_nothing_is_written(client, tiny_run, name):
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    r = client.post("/api/selections", json={"name": name, "samples": [["train", "train_a"]]})
    assert r.status_code == 400 and "selection name" in r.get_json()["error"]
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before


@pytest.mark.parametrize("samples, message", [
    ([], "empty"), ([["train", "nope"]], "not in this run"), ([["train"]], "pair"), ("train_a", "pair"),
    ([["train", 3]], "pair"),
])
def test_bad_selection_contents_are_refused(client, samples, message):
    r = client.post("/api/selections", json={"name": "bad-content", "samples": samples})
    assert r.status_code == 400 and message in r.get_json()["error"]


def test_writes_need_json_and_the_same_origin_and_reads_need_a_loopback_host(client):
    body = json.dumps({"name": "csrf", "samples": [["train", "train_a"]]})
    form = client.post("/api/selections", data=body, content_type="text/plain")
    assert form.status_code == 415
    foreign = client.post("/api/selections", data=body, content_type="application/json",
                          headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert client.get("/api/meta", headers={"Host": "evil.example"}).status_code == 403
    assert client.get("/api/meta", headers={"Host": "127.0.0.1:8765"}).status_code == 200
    assert client.get("/api/meta", headers={"Host": "[::1]:8765"}).status_code == 200
    page = client.get("/")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/vendor/plotly.min.js").status_code == 200
    assert b"ArmbenchMap" in client.get("/vendor/map.js").data


def test_a_selection_of_another_run_is_refused(client, tiny_run):
    folder = tiny_run / "selections"
    folder.mkdir(exist_ok=True)
    (folder / "foreign.json").write_text(json.dumps({"run_key": "another", "samples": []}))
    r = client.get("/api/selections/foreign")
    assert r.status_code == 404 and "belongs to run another" in r.get_json()["error"]
    (folder / "broken.json").write_text("{not json")
    r = client.get("/api/selections/broken")
    assert r.status_code == 404 and "unreadable" in r.get_json()["error"]


def test_a_missing_image_is_named_without_the_machines_paths(client, run, tiny_run):
    info = json.loads((tiny_run / "run.json").read_text())
    image = Path(info["dataset_root"]) / "images" / "val_a.jpg"
    moved = image.with_name("val_a.jpg.away")
    image.rename(moved)
    try:
        run._frames.clear()  # the sample view's image cache
        r = client.get("/api/image", query_string={"split": "val", "id": "val_a"})
        assert r.status_code == 409
        message = r.get_json()["error"]
        assert "val_a.jpg not found at images/val_a.jpg" in message, message
        assert info["dataset_root"] not in message and str(tiny_run) not in message
        others = client.get("/api/image", query_string={"split": "val", "id": "val_portrait"})
        assert others.status_code == 200  # one bad image stops nothing else
    finally:
        moved.rename(image)
