"""Clusters and insights: planted structure must be found and named."""

import numpy as np
import pandas as pd
import pytest

from armbench_segmentation.analysis.clustering import ClusterResult, cluster, summarize_clusters


def _planted(n=240, seed=0):
    """Rows 0..59 form a separate blob: dense blue totes with high loss."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, 24)).astype(np.float32)
    planted = np.arange(n) < 60
    emb[planted] += 4.0
    frame = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)],
        "split": np.array(["train", "val", "unlabeled"])[np.arange(n) % 3],
        "loss": rng.uniform(0.05, 0.3, n),
        "over_segmented": (rng.uniform(size=n) < 0.1).astype(int),
        "under_segmented": (rng.uniform(size=n) < 0.1).astype(int),
        "unc_mask_entropy": rng.uniform(size=n),
        "meta_n_objects": rng.integers(6, 16, n).astype(float),
        "meta_brightness": rng.normal(0.5, 0.05, n),
        "meta_tote_color": rng.choice(["yellow", "blue"], n),
        "meta_has_label": rng.uniform(size=n) < 0.5,
    })
    frame.loc[planted, "meta_n_objects"] += 18
    frame.loc[planted, "meta_tote_color"] = "blue"
    frame.loc[planted, "loss"] += 0.35
    frame.loc[planted, "under_segmented"] = 1
    frame.loc[frame["split"] == "unlabeled", ["loss", "over_segmented", "under_segmented"]] = np.nan
    return frame, emb, planted


@pytest.mark.parametrize("method", ["kmeans", "hdbscan"])
def test_planted_cluster_is_found_and_insight_names_its_fields(method):
    frame, emb, planted = _planted()
    res = cluster(frame, emb, method=method, n_clusters=3, params={"min_cluster_size": 20})
    assert isinstance(res, ClusterResult) and res.labels.shape == (len(frame),)
    ids, counts = np.unique(res.labels[planted], return_counts=True)
    cid = int(ids[np.argmax(counts)])
    assert counts.max() == 60 and not np.isin(cid, res.labels[~planted])
    s = res.summary(cid)
    assert s.size == 60 and sum(s.split_counts.values()) == 60
    assert s.insight.startswith("high loss")
    assert "dense totes" in s.insight and "blue tote" in s.insight and "under-segmented" in s.insight
    assert s.contrasts[0].field in ("meta_n_objects", "meta_tote_color")
    assert s.mean_loss > s.rest_mean_loss and s.under_rate == 1.0
    assert "unc_mask_entropy" in s.mean_uncertainty


def test_missing_optional_columns_and_all_nan_are_tolerated():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"sample_id": list("abcdefghij"), "meta_x": [np.nan] * 10, "meta_s": [None] * 10})
    res = cluster(frame, rng.normal(size=(10, 4)), n_clusters=2)
    assert len(res.summaries) == 2
    for s in res.summaries:
        assert s.mean_loss is None and s.over_rate is None and s.contrasts == ()
        assert s.insight.startswith("cluster ")
    assert set(res.table()["cluster"]) == {0, 1}


def test_summaries_are_largest_first_and_noise_last():
    frame, _, _ = _planted(n=30)
    labels = np.array([0] * 5 + [1] * 15 + [-1] * 10)
    ids = [s.cluster_id for s in summarize_clusters(frame, labels)]
    assert ids == [1, 0, -1]


def test_errors_name_the_fix():
    frame, emb, _ = _planted(n=30)
    with pytest.raises(ValueError, match="valid: .*kmeans"):
        cluster(frame, emb, method="spectral")
    with pytest.raises(ValueError, match="aligned"):
        cluster(frame, emb[:10])
    with pytest.raises(ValueError, match="n_clusters"):
        cluster(frame, emb, n_clusters=0)


def test_empty_frame():
    res = cluster(pd.DataFrame({"split": []}), np.zeros((0, 4)))
    assert res.labels.shape == (0,) and res.summaries == []


def test_bare_core_field_names_are_understood():
    """The pipeline writes uncertainty/metadata fields without prefixes (mask_entropy, n_objects)."""
    from armbench_segmentation.analysis.clustering import with_prefixes

    frame, emb, planted = _planted()
    bare = frame.rename(columns={"unc_mask_entropy": "mask_entropy", "meta_n_objects": "n_objects",
                                 "meta_tote_color": "tote_color"})
    view = with_prefixes(bare)
    assert {"unc_mask_entropy", "meta_n_objects", "meta_tote_color", "n_objects"} <= set(view.columns)
    assert "unc_mask_entropy" not in bare.columns  # caller's frame untouched
    assert "mask_entropy" not in with_prefixes(bare, rename=True).columns
    res = cluster(bare, emb, n_clusters=3)
    s = res.summary(int(np.bincount(res.labels[planted]).argmax()))
    assert "dense totes" in s.insight and "unc_mask_entropy" in s.mean_uncertainty
