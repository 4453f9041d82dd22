"""The static dashboard's files: assets beside the page, overlay layers, no absolute paths,
the note on large runs, categorical colour columns."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from armbench_segmentation.analysis import report
from armbench_segmentation.analysis.report import (
    SampleLayers, layer_from_drawing, scrub_paths, write_report,
)
from armbench_segmentation.structures import Instances
from armbench_segmentation.visualize import draw_comparison


def _frame(n=40, seed=0):
    rng = np.random.default_rng(seed)
    split = np.array(["train", "val", "unlabeled"])[np.arange(n) % 3]
    return pd.DataFrame({
        "sample_id": [f"s{i:03d}" for i in range(n)], "file_name": [f"s{i:03d}.jpg" for i in range(n)],
        "split": split, "loss": rng.uniform(size=n), "cluster": np.arange(n) % 4,
        "meta_tote_color": np.where(np.arange(n) % 2 == 0, "yellow", "blue"),
    })


def _instances(hw=(64, 64), scores=True):
    masks = np.zeros((2, *hw), bool)
    masks[0, 5:30, 5:30] = True
    masks[1, 20:60, 30:60] = True
    return Instances(boxes=np.array([[5, 5, 30, 30], [30, 20, 60, 60]], np.float32), class_ids=np.array([0, 0]),
                     image_size=hw, masks=masks, scores=np.array([0.9, 0.4], np.float32) if scores else None)


def _composite(base, layer):
    a = layer[..., 3:4].astype(np.float64) / 255
    return base * (1 - a) + layer[..., :3] * a


def test_layer_composites_back_to_the_drawing():
    """The RGBA layer over the image equals the drawing made on the image itself
    (translucent masks, dashed boxes, labels and outlines alike), up to uint8 rounding."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    gt, pred = _instances(scores=False), _instances()
    for draw in (lambda im: draw_comparison(im, None, pred, class_names=["Object"]),
                 lambda im: draw_comparison(im, gt, None)):
        layer = layer_from_drawing(draw, image.shape[:2])
        assert layer.shape == (64, 64, 4) and layer.dtype == np.uint8
        expected = draw(image).astype(np.float64)
        assert np.abs(_composite(image, layer) - expected).max() <= 3
        assert (layer[..., 3] == 0).mean() > 0.2  # untouched pixels stay transparent
    assert (layer_from_drawing(lambda im: im.copy(), (8, 8))[..., 3] == 0).all()


def test_scrub_paths(tmp_path):
    home = str(Path.home())
    run = tmp_path / "run"
    value = {"model": "/opt/models/m.onnx", "out": str(run / "x.csv"), "cache": f"{home}/.cache/a",
             "note": f"synthetic dataset cached at {home}/.cache/armbench/synthetic-v1, fine", "ratio": "1/2",
             "rel": "images/a.jpg", "list": [str(run)], "n": 3}
    out = scrub_paths(value, run)
    assert out["model"] == "…/m.onnx" and out["out"] == "RUN_DIR/x.csv" and out["cache"] == "~/.cache/a"
    assert out["note"] == "synthetic dataset cached at ~/.cache/armbench/synthetic-v1, fine"
    assert out["ratio"] == "1/2" and out["rel"] == "images/a.jpg" and out["list"] == ["RUN_DIR"] and out["n"] == 3
    assert str(tmp_path) not in json.dumps(out) and home not in json.dumps(out)


def _layers(sample_id):
    image = np.full((64, 64, 3), 90, np.uint8)
    return SampleLayers(image, layer_from_drawing(lambda im: draw_comparison(im, _instances(scores=False), None),
                                                  (64, 64)),
                        layer_from_drawing(lambda im: draw_comparison(im, None, _instances()), (64, 64)))


def _thumb(sample_id):
    return np.full((48, 64, 3), 200, np.uint8)


def _payload(html_text):
    data = html_text.split('<script type="application/json" id="map-data">', 1)[1].split("</script>", 1)[0]
    return json.loads(data)


def test_page_links_plotly_and_images_beside_it(tmp_path):
    frame = _frame()
    path = write_report(tmp_path, frame, np.zeros((len(frame), 2)), thumbnails=_thumb, layers=_layers,
                        provenance={"model": str(tmp_path / "m.onnx"), "home": str(Path.home() / "x")})
    text = path.read_text()
    plotly = tmp_path / "assets" / "plotly.min.js"
    assert plotly.read_bytes() == report.plotly_js_path().read_bytes()
    assert '<script src="assets/plotly.min.js"></script>' in text and "data:image" not in text
    assert len(text) < 200_000  # no plotly.js, no images inline
    # every link is relative and resolves to a file beside the page
    d = _payload(text)
    assert d["assets"] == "assets/dashboard/" and sum(d["thumb"]) == len(frame) and sum(d["view"]) == len(frame)
    for i in (0, len(frame) - 1):
        assert (tmp_path / d["assets"] / "thumbs" / f"{i}.jpg").is_file()
        for suffix in (".jpg", "_gt.png", "_pred.png"):
            assert (tmp_path / d["assets"] / "views" / f"{i}{suffix}").is_file()
    for src in re.findall(r'src="([^"]+)"', text):
        assert "://" not in src and not src.startswith("/") and (tmp_path / src).is_file(), src
    assert str(tmp_path) not in text and str(Path.home()) not in text
    assert "scale-note" not in text  # everything embedded: no note


def test_large_run_note_and_priority(tmp_path):
    frame = _frame(n=60)
    picks = type("Picks", (), {"picks": pd.DataFrame({"rank": [1, 2], "sample_id": ["s059", "s058"],
                                                      "score": [1.0, 0.5], "reason": ["a", "b"]}),
                               "provenance": {"strategy": "x"}})()
    path = write_report(tmp_path, frame, np.zeros((60, 2)), label_picks=picks, thumbnails=_thumb, layers=_layers,
                        max_thumbnails=10, max_views=3)
    text = path.read_text()
    d = _payload(text)
    assert sum(d["thumb"]) == 10 and sum(d["view"]) == 3
    assert d["thumb"][59] == d["thumb"][58] == d["view"][59] == d["view"][58] == 1  # picks first
    assert len(list((tmp_path / "assets" / "dashboard" / "thumbs").iterdir())) == 10
    note = text.split('<div id="scale-note"', 1)[1].split("</div>", 1)[0]
    assert "60 samples" in note and "thumbnails for 10 of 60" in note and "armbench serve" in note
    # a second write replaces the folder: no stale files from the first
    write_report(tmp_path, frame, np.zeros((60, 2)), thumbnails=_thumb, max_thumbnails=5)
    assert len(list((tmp_path / "assets" / "dashboard" / "thumbs").iterdir())) == 5
    assert not list((tmp_path / "assets").glob(".*"))  # no temporary folders left


def test_categorical_columns_offered_for_colour(tmp_path):
    frame = _frame()
    frame["many"] = [f"v{i}" for i in range(len(frame))]  # too many levels
    frame.loc[3, "meta_tote_color"] = None
    d = _payload(write_report(tmp_path, frame, np.zeros((len(frame), 2))).read_text())
    cat = d["categories"]
    assert set(cat) == {"meta_tote_color"}
    levels, codes = cat["meta_tote_color"]["levels"], cat["meta_tote_color"]["codes"]
    assert levels == ["blue", "yellow"]
    expected = [-1 if v is None else levels.index(v) for v in frame["meta_tote_color"]]
    assert codes == expected and codes[3] == -1
    assert d["cluster"] == frame["cluster"].tolist() and d["clusters"] == [0, 1, 2, 3]
